"""The BSDS500 reader, on small files the test writes in the benchmark's own layout (.jpg images, .mat truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cnnlens import DataIntegrityError, DataUnavailableError
from cnnlens.data import load_bsds500

ROOT = Path("bsds500") / "BSR" / "BSDS500" / "data"


def _write(folder: Path, split: str, name: str, shape: tuple[int, int], annotators: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    (folder / ROOT / "images" / split).mkdir(parents=True, exist_ok=True)
    (folder / ROOT / "groundTruth" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / ROOT / "images" / split /
                                                                             f"{name}.jpg", quality=95)
    bounds = rng.random((annotators, *shape)) > 0.9
    cell = np.empty((1, annotators), dtype=object)
    for k in range(annotators):
        cell[0, k] = {"Segmentation": np.ones(shape, np.uint16), "Boundaries": bounds[k].astype(np.uint8)}
    savemat(folder / ROOT / "groundTruth" / split / f"{name}.mat", {"groundTruth": cell})
    return bounds


def test_reads_images_and_annotations_transposing_portraits(tmp_path):
    a = _write(tmp_path, "test", "100007", (6, 9), 3, 0)
    b = _write(tmp_path, "test", "100039", (9, 6), 5, 1)  # portrait
    data = load_bsds500("test", tmp_path)
    assert len(data) == 2 and data.names == ("100007", "100039")
    assert tuple(data.images.shape) == (2, 3, 6, 9) and data.images.dtype.is_floating_point
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert data.annotators.tolist() == [3, 5] and data.transposed.tolist() == [False, True]
    assert np.array_equal(data.annotations[0, 0].numpy(), a.sum(0))
    assert np.array_equal(data.annotations[1, 0].numpy(), b.sum(0).T)
    assert np.array_equal(data.boundaries[0, 0].numpy(), a.any(0))
    assert np.array_equal(data.majority[0, 0].numpy(), a.sum(0) >= 2)  # 2 of 3
    assert np.array_equal(data.majority[1, 0].numpy(), (b.sum(0) >= 3).T)  # 3 of 5


def test_missing_and_corrupt_files_say_what_to_do(tmp_path):
    with pytest.raises(DataUnavailableError, match="BSR_bsds500.tgz"):
        load_bsds500("test", tmp_path)
    _write(tmp_path, "val", "1", (6, 9), 2, 0)
    (tmp_path / ROOT / "groundTruth" / "val" / "1.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataIntegrityError, match="not a BSDS500 ground-truth file"):
        load_bsds500("val", tmp_path)
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        load_bsds500("validation", tmp_path)


def test_bsds_experiment_measures_on_files_in_the_data_folder(tmp_path):
    """The experiment's data path runs end to end on BSDS-format files (here tiny random ones)."""
    import json

    from typer.testing import CliRunner

    from cnnlens.cli import app

    for split, count in (("train", 2), ("val", 1), ("test", 2)):
        for i in range(count):
            _write(tmp_path, split, f"{split}{i}", (40, 48), 3, hash(split) % 100 + i)
    result = CliRunner().invoke(app, ["run", "bsds-boundaries", "--quick", "--out", str(tmp_path / "runs"),
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "bsds-boundaries" / "metrics.json").read_text())
    for key in ("ods_dynamic", "ois_dynamic", "ods_static", "ois_static"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_test"] == 2 and metrics["n_train_images"] == 3
