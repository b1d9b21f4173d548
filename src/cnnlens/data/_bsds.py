"""BSDS500, the Berkeley segmentation and boundary benchmark (001 sec. 4.4.3), read from its standard layout.

The archive ``BSR_bsds500.tgz`` unpacks to ``BSR/BSDS500/data/images/{train,val,test}/*.jpg`` (481 x 321 images,
some in portrait) and ``BSR/BSDS500/data/groundTruth/{split}/*.mat``. Each ``.mat`` holds a 1 x K cell
``groundTruth`` of human annotations, each a struct with ``Segmentation`` and ``Boundaries``. Nothing is
downloaded: the files go in ``DIR/bsds500/`` (``--data-dir DIR``).

Portrait images are transposed to landscape so that a split stacks into one tensor; ``transposed`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._errors import DataIntegrityError, DataUnavailableError
from ._registry import default_data_dir

__all__ = ["BSDS_SPLITS", "BSDSData", "load_bsds500"]

BSDS_SPLITS = ("train", "val", "test")
_ROOT = Path("bsds500") / "BSR" / "BSDS500" / "data"
_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"


@dataclass(frozen=True)
class BSDSData:
    """One split: images (N, 3, H, W) float32 in [0, 1]; ``annotations`` (N, 1, H, W) the number of annotators who
    mark each pixel as boundary; ``annotators`` (N,) how many there were; ``names`` the image ids."""

    images: torch.Tensor
    annotations: torch.Tensor
    annotators: torch.Tensor
    transposed: torch.Tensor
    names: tuple[str, ...]

    @property
    def boundaries(self) -> torch.Tensor:
        """Pixels that at least one annotator marks as boundary (bool, N x 1 x H x W)."""
        return self.annotations > 0

    @property
    def majority(self) -> torch.Tensor:
        """Pixels that more than half of the annotators mark: the merged label of 001 sec. 4.4.2 (after [7])."""
        return 2 * self.annotations > self.annotators.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.names)


def _read_truth(path: Path) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        cell = loadmat(path, squeeze_me=False)["groundTruth"]
        return np.stack([np.asarray(cell[0, k]["Boundaries"][0, 0], dtype=bool) for k in range(cell.shape[1])])
    except (KeyError, IndexError, ValueError, TypeError, OSError, MatReadError) as err:
        raise DataIntegrityError(f"{path} is not a BSDS500 ground-truth file (a 1 x K cell 'groundTruth' of "
                                 f"structs with a 'Boundaries' field): {err}") from err


def load_bsds500(split: str = "test", data_dir: str | Path | None = None) -> BSDSData:
    """The BSDS500 ``split`` ("train", "val" or "test") from ``data_dir`` (default: the cnnlens data folder)."""
    from PIL import Image

    if split not in BSDS_SPLITS:
        raise ValueError(f"split must be one of {', '.join(BSDS_SPLITS)}, got {split!r}")
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    images_dir, truth_dir = folder / _ROOT / "images" / split, folder / _ROOT / "groundTruth" / split
    files = sorted(images_dir.glob("*.jpg")) if images_dir.is_dir() else []
    if not files or not truth_dir.is_dir():
        raise DataUnavailableError(
            f"BSDS500 ({split}) is not in {folder / 'bsds500'}: expected {images_dir}/*.jpg and {truth_dir}/*.mat. "
            f"Download {_URL} where the internet is reachable and unpack it into {folder / 'bsds500'} (it creates "
            "BSR/BSDS500/data/...), or pass --data-dir DIR for a folder whose bsds500/ subfolder holds it.")
    images, annotations, annotators, transposed = [], [], [], []
    for file in files:
        truth_file = truth_dir / f"{file.stem}.mat"
        if not truth_file.is_file():
            raise DataUnavailableError(f"{file.name} has no ground truth: {truth_file} is missing")
        try:
            image = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0
        except OSError as err:
            raise DataIntegrityError(f"{file} is not a readable JPEG image: {err}") from err
        truth = _read_truth(truth_file)
        if truth.shape[1:] != image.shape[:2]:
            raise DataIntegrityError(f"{truth_file} has boundaries of shape {truth.shape[1:]}, its image "
                                     f"{file.name} is {image.shape[:2]}")
        portrait = image.shape[0] > image.shape[1]
        if portrait:
            image, truth = image.transpose(1, 0, 2), truth.transpose(0, 2, 1)
        images.append(image.transpose(2, 0, 1))
        annotations.append(truth.sum(0, dtype=np.int16)[None])
        annotators.append(len(truth))
        transposed.append(portrait)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataIntegrityError(f"BSDS500 {split} images have several sizes after transposing: {sorted(shapes)}")
    return BSDSData(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(annotations)),
                    torch.tensor(annotators), torch.tensor(transposed), tuple(f.stem for f in files))
