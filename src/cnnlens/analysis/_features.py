"""Features per depth: the representations Phi_j x of a network's layers, streamed batch by batch (001 sec. 6.5).

Layers are named by their module paths (``model.named_modules()``); their outputs are read through the one capture
engine of cnnlens (:func:`cnnlens.spline._capture.module_outputs`). A module may return a tensor or a tuple of
tensors (an i-RevNet block returns the pair (x_j, x~_j) of eq. 39 of 001): the feature is then the concatenation of
its parts along the channel dimension, which is Phi_j x = (x_j, x~_j).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.data import Dataset

from ..data import stratified_indices
from ..spline._capture import module_outputs
from ..train import _tensors

__all__ = ["Data", "Features", "batch_features", "check_finite", "flatten_output", "images_and_labels",
           "layer_batches", "model_dtype", "representation", "spatial_features"]

#: What the analysis functions accept as data: a map-style data set of (image, label) items (``ArrayDataset``,
#: ``TensorDataset``) or a pair of tensors (images (N, C, H, W), labels (N,)).
Data = Dataset | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Features:
    """Spatially averaged features of one layer on a training and a test set (rows: samples), with their labels."""

    layer: str
    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    @property
    def dim(self) -> int:
        """Feature dimension (the layer's channels)."""
        return int(self.train.shape[1])


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters, else of its buffers (float32 for a model with neither)."""
    param = next((p for p in (*model.parameters(), *model.buffers()) if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.float32


def check_finite(x: Tensor, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} NaN or infinite values; the analysis is only defined for finite "
                         "inputs. Clean the data first (e.g. torch.nan_to_num, or drop those samples).")


def images_and_labels(data: Data, what: str = "data") -> tuple[Tensor, Tensor]:
    """(images, labels) of ``data`` (no copy for an ArrayDataset / TensorDataset), checked for size and finiteness."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
    elif isinstance(data, Dataset):
        images, labels = _tensors(data)
    else:
        raise TypeError(f"{what} must be a data set of (image, label) items (cnnlens.data.ArrayDataset, "
                        f"TensorDataset) or a tuple (images, labels); received {type(data).__name__}.")
    if images.dim() < 2 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what} must hold images (N, *in_shape) and labels (N,); received shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}.")
    if images.shape[0] == 0:
        raise ValueError(f"{what} holds no samples; pass at least one.")
    if not images.is_floating_point():
        raise TypeError(f"{what}'s images must be floating point; received dtype {images.dtype}.")
    check_finite(images, f"{what}'s images")
    return images, labels.long()


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def flatten_output(output: object, name: str, batch: int, spatial_average: bool) -> Tensor:
    """One row per sample from a module output: the tensor parts concatenated along the channel dimension, each
    averaged over its spatial dimensions (``spatial_average``) or flattened."""
    parts = [t for t in tree_leaves(output) if isinstance(t, Tensor)]
    if not parts or any(t.dim() < 1 or t.shape[0] != batch for t in parts):
        shapes = [tuple(t.shape) for t in parts]
        raise ValueError(f"layer {name!r} returned {type(output).__name__} with tensor shapes {shapes}; the analysis "
                         f"needs per-sample outputs with the {batch} samples of the batch first.")
    if spatial_average:
        parts = [t.reshape(batch, t.shape[1], -1).mean(2) if t.dim() > 2 else t.reshape(batch, -1) for t in parts]
    return torch.cat([t.reshape(batch, -1) for t in parts], 1)


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")


def layer_list(layers: Sequence[str]) -> list[str]:
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers is empty; name at least one module (model.named_modules() lists them).")
    return layers


def batch_features(model: nn.Module, x: Tensor, layers: Sequence[str], *,
                   spatial_average: bool = True) -> dict[str, Tensor]:
    """{layer: features (N, F)} of one batch (model in eval mode, no gradients; rows by :func:`flatten_output`)."""
    layers = layer_list(layers)
    with evaluating(model), module_outputs(model, layers) as outputs:
        model(x.to(model_dtype(model)))
    missing = [n for n in layers if n not in outputs]
    if missing:
        raise ValueError(f"the layers {missing} did not run in the forward pass of {type(model).__name__}; name "
                         "modules that forward() calls.")
    return {n: flatten_output(outputs[n], n, x.shape[0], spatial_average) for n in layers}


def layer_batches(model: nn.Module, data: Data, layers: Sequence[str], *, spatial_average: bool = True,
                  batch_size: int = 256, what: str = "data") -> Iterator[tuple[Tensor, Tensor, dict[str, Tensor]]]:
    """Stream ``(x, labels, {layer: features})`` batch by batch (:func:`batch_features`); nothing is kept between
    batches."""
    check_batch_size(batch_size)
    layers = layer_list(layers)
    images, labels = images_and_labels(data, what)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        yield x, labels[start:start + batch_size], batch_features(model, x, layers, spatial_average=spatial_average)


def _stack(model: nn.Module, data: Data, layers: Sequence[str], batch_size: int,
           what: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rows: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    labels: list[np.ndarray] = []
    for _, y, feats in layer_batches(model, data, layers, batch_size=batch_size, what=what):
        labels.append(y.numpy())
        for n, f in feats.items():
            rows[n].append(f.double().numpy())
    return {n: np.concatenate(r) for n, r in rows.items()}, np.concatenate(labels)


def _held_out(data: Data, fraction: float, seed: int) -> tuple[Data, Data]:
    images, labels = images_and_labels(data)
    size = int(round(fraction * len(labels)))
    if not 0 < size < len(labels):
        raise ValueError(f"cannot hold out {fraction:.0%} of {len(labels)} samples; pass test_data.")
    test = stratified_indices(labels, size, seed=seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[test] = False
    return (images[keep], labels[keep]), (images[test], labels[test])


def spatial_features(model: nn.Module, data: Data, layers: Sequence[str], *, test_data: Data | None = None,
                     held_out: float = 0.25, seed: int = 0, batch_size: int = 256) -> dict[str, Features]:
    """The spatially averaged features {Phi_j x_n}_n of every layer on a training and a test set (001 sec. 6.5.1:
    "we average them along the spatial variable"); standardisation is left to the classifiers, which fit it on the
    training set. Only the averaged rows (channels per sample) are kept, batch by batch.

    ``test_data`` defaults to a class-stratified ``held_out`` share of ``data``
    (:func:`cnnlens.data.stratified_indices`, seeded), the rest being the training set.
    """
    if test_data is None:
        data, test_data = _held_out(data, held_out, seed)
    layers = [layers] if isinstance(layers, str) else list(layers)
    train, y_train = _stack(model, data, layers, batch_size, "data")
    test, y_test = _stack(model, test_data, layers, batch_size, "test_data")
    return {n: Features(n, train[n], y_train, test[n], y_test) for n in layers}


def representation(model: nn.Module, x: Tensor) -> Tensor:
    """Phi(x): the second output of a model whose forward returns ``(logits, Phi)`` (as :class:`cnnlens.nn.IRevNet`),
    else the model's output itself (a network read as the map Phi, e.g. an invertible layer)."""
    out = model(x)
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Tensor):
            raise TypeError(f"{type(model).__name__}.forward returned a tuple of {len(out)} items; the analysis reads "
                            "Phi(x) from a forward that returns Phi or (logits, Phi).")
        return out[1]
    if not isinstance(out, Tensor):
        raise TypeError(f"{type(model).__name__}.forward returned {type(out).__name__}; it must return Phi(x) or "
                        "(logits, Phi(x)).")
    return out
