"""The RECOS specification of a CNN (Tables 1-2 of 003): per unit the input dimension N and the anchor count K.

Every convolution and fully connected layer is a RECOS unit S^l. Its input dimension is the patch size
N = (C_in / groups) * prod(kernel) (in_features for a linear layer) and its number of anchors K is its number of
output channels. The mean augmentation of eqs. 5-8 adds one coordinate, the local mean, "where the local mean
could be non-zero": for a convolution whose window is smaller than its (padded) input, so that it sees local
patches (output grid larger than 1 x 1). A layer that sees its whole input at once (a linear layer, or a
convolution like LeNet-5's C5 whose 5x5 window covers its 5x5 input) sees a global mean, which the paper removes
(no augmentation). This rule reproduces Table 2 (AlexNet: every conv "+1", the FC layers not) and Table 1 for
C1, C5, F6 and Output; Table 1 lists C3 without "+1" although C3 reads 5x5 patches of a 14x14 input exactly as
AlexNet's Conv_2 reads 5x5 patches of its 27x27 input, so this rule gives C3 "+1" (pass ``augment_mean=False``
for C3 to match the printed table).

The layers are read off one forward pass by the spline engine's trace (:mod:`cnnlens.spline._trace`): every
convolution, linear and max/average pooling op, whether a module or a functional call, with the path of the module
that ran it. Receptive fields (``receptive_field``) follow the chain recurrence r <- r + (k - 1) d j, j <- j s over
the convolutions and poolings in forward order, counting pooling windows (14 for LeNet-5's C3);
``receptive_field_subsampled`` treats each pooling as pure subsampling (window 1), the paper's reading (13 for C3,
"5 x 5 and 13 x 13", sec. 3). Both assume a chain network; ``compound_anchors`` derives the same numbers from the
weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from ..spline._trace import TracedOp, trace_ops

__all__ = ["AlexNetShaped", "RecosSummary", "RecosUnit", "alexnet_shaped", "summary"]

@dataclass(frozen=True)
class RecosUnit:
    """One RECOS unit S^l of Tables 1-2 of 003.

    Attributes
    ----------
    name : str
        Path of the module that ran the layer's op (its ``named_modules`` name).
    kind : str
        ``"conv"`` or ``"linear"``.
    patch_shape : tuple of int
        ``(C_in / groups, *kernel)`` or ``(in_features,)``: the input of one unit.
    input_dim : int
        N without augmentation, ``prod(patch_shape)``.
    augmented : bool
        Whether the local mean is appended (N + 1 in the tables).
    num_anchors : int
        K, the number of anchor vectors (= output channels / features).
    input_shape, output_shape : tuple of int
        The layer's per-sample input and output shapes in the forward pass.
    receptive_field, receptive_field_subsampled : tuple of int or None
        Receptive field in the network's input (pooling windows counted / pooling as subsampling); None for a
        linear layer (it sees everything).
    """

    name: str
    kind: str
    patch_shape: tuple[int, ...]
    input_dim: int
    augmented: bool
    num_anchors: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    receptive_field: tuple[int, ...] | None
    receptive_field_subsampled: tuple[int, ...] | None

    @property
    def dim(self) -> int:
        """The anchor dimension including the augmentation: N or N + 1."""
        return self.input_dim + int(self.augmented)

    @property
    def n_label(self) -> str:
        """N as printed in Tables 1-2, e.g. ``"(1 x 5 x 5) + 1"`` or ``"120 x 1 x 1"``."""
        if self.kind == "linear":
            text = f"{self.input_dim} x 1 x 1"
        else:
            text = "(" + " x ".join(map(str, self.patch_shape)) + ")"
        return text + (" + 1" if self.augmented else "")


@dataclass(frozen=True)
class RecosSummary:
    """The RECOS specification of a model: one ``RecosUnit`` per conv/linear layer, in forward order."""

    model_name: str
    input_shape: tuple[int, ...]
    units: tuple[RecosUnit, ...]

    def table(self) -> str:
        """A plain-text table with the columns of Tables 1-2 of 003 plus the receptive fields."""
        rows = [("layer", "RECOS", "N", "K", "RF", "RF (pool = subsampling)")]
        for i, unit in enumerate(self.units, start=1):
            rf = "all" if unit.receptive_field is None else " x ".join(map(str, unit.receptive_field))
            rfs = "all" if unit.receptive_field_subsampled is None else " x ".join(
                map(str, unit.receptive_field_subsampled))
            rows.append((unit.name, f"S^{i}", unit.n_label, str(unit.num_anchors), rf, rfs))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        head = f"RECOS specification of {self.model_name} (input {' x '.join(map(str, self.input_shape))})"
        return "\n".join([head, *lines])

    def __str__(self) -> str:
        return self.table()


def summary(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    augment_mean: bool | str | Mapping[str, bool] = "auto",
) -> RecosSummary:
    """The RECOS specification (Tables 1-2 of 003) of any model built from conv/linear layers.

    Runs one forward pass on a zero input of shape ``(1, *input_shape)`` in eval mode, traced by the spline
    engine (every conv / linear / pooling op, module or functional, with its module path and shapes; no hooks;
    the model's train/eval mode is restored, also on errors). A model on the ``"meta"`` device is summarised
    without allocating memory.

    Parameters
    ----------
    model : nn.Module
    input_shape : tuple of int, optional
        Per-sample input shape, e.g. ``(1, 32, 32)`` for LeNet-5; defaults to ``model.input_shape`` if the model
        defines it (``alexnet_shaped`` does).
    augment_mean : "auto", bool or mapping
        ``"auto"``: augment where the unit sees local patches (module docstring); ``True`` / ``False`` for every
        unit; or a mapping from layer name to bool overriding "auto" for those layers.

    Returns
    -------
    RecosSummary
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects an nn.Module, received {type(model).__name__}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(
                "summary needs the per-sample input shape: pass input_shape=(C, H, W), e.g. (1, 32, 32) for LeNet-5"
            )
    input_shape = tuple(int(s) for s in input_shape)
    if not (isinstance(augment_mean, bool | Mapping) or augment_mean == "auto"):
        raise ValueError(f"augment_mean must be 'auto', a bool or a mapping name -> bool, received {augment_mean!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ops = trace_ops(model, torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        model.train(was_training)
    units: list[RecosUnit] = []
    dims = len(input_shape) - 1
    rf, rfs, jump = [1] * dims, [1] * dims, [1] * dims
    for op in ops:
        _advance_fields(op, rf, rfs, jump)
        if op.op in ("max_pool", "avg_pool"):
            continue
        name, out_shape = op.module, op.output_shape
        if op.op == "linear":
            patch: tuple[int, ...] = (op.weight_shape[1],)
            kind, local, field, field_s = "linear", False, None, None
        else:
            patch = tuple(op.weight_shape[1:])  # (C_in / groups, *kernel)
            kind = "conv"
            local = prod(out_shape[1:]) > 1
            field, field_s = tuple(rf), tuple(rfs)
        if isinstance(augment_mean, bool):
            augmented = augment_mean
        elif isinstance(augment_mean, Mapping) and name in augment_mean:
            augmented = bool(augment_mean[name])
        else:
            augmented = local
        units.append(RecosUnit(name, kind, patch, prod(patch), augmented, op.weight_shape[0], op.input_shape,
                               out_shape, field, field_s))
    if isinstance(augment_mean, Mapping):
        unknown = set(augment_mean) - {u.name for u in units}
        if unknown:
            raise ValueError(
                f"augment_mean names layers {sorted(unknown)} that are not conv/linear layers of the model; "
                f"its units are {[u.name for u in units]}"
            )
    return RecosSummary(model_name=type(model).__name__, input_shape=input_shape, units=tuple(units))


def _advance_fields(op: TracedOp, rf: list[int], rfs: list[int], jump: list[int]) -> None:
    """One step of the receptive-field recurrence r <- r + (k - 1) d j, j <- j s (in place; pooling windows count
    in ``rf`` only, ``rfs`` treats pooling as subsampling)."""
    if op.op == "linear" or len(rf) != len(op.kernel_size):
        return
    for i, (k, s, d) in enumerate(zip(op.kernel_size, op.stride, op.dilation, strict=True)):
        rf[i] += (k - 1) * d * jump[i]
        if op.op == "conv":
            rfs[i] += (k - 1) * d * jump[i]
        jump[i] *= s


class AlexNetShaped(nn.Module):
    """An AlexNet-shaped CNN (Krizhevsky et al. 2012) as listed in Table 2 of 003, for RECOS summaries.

    Input (B, 3, 227, 227) -> conv1 11x11/4, 96 -> ReLU -> max-pool 3/2 -> conv2 5x5 pad 2, 256 -> ReLU ->
    max-pool 3/2 -> conv3 3x3 pad 1, 384 -> ReLU -> conv4 3x3, 384 -> ReLU -> conv5 3x3, 256 -> ReLU ->
    max-pool 3/2 (256 x 6 x 6) -> fc6 4096 -> ReLU -> fc7 4096 -> ReLU -> fc8 ``num_classes``.
    Convolutions are ungrouped (the two-GPU split of the original is an implementation detail; Table 2 lists
    96 x 5 x 5 for Conv_2). Table 2 prints FC_6's input as 256 x 1 x 1; the network's actual fc6 input is the
    flattened 256 x 6 x 6 = 9216 map, which ``summary`` reports. No dropout: the summary is of the
    deterministic network.
    """

    input_shape = (3, 227, 227)

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, *, device: str | torch.device | None = None):
        super().__init__()
        opts = {"device": device}
        self.input_shape = (in_channels, 227, 227)
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4, **opts)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, **opts)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1, **opts)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, **opts)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, **opts)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.MaxPool2d(3, 2)
        self.flatten = nn.Flatten()
        self.fc6 = nn.Linear(256 * 6 * 6, 4096, **opts)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(4096, 4096, **opts)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Linear(4096, num_classes, **opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu5(self.conv5(self.relu4(self.conv4(self.relu3(self.conv3(x))))))
        x = self.flatten(self.pool5(x))
        return self.fc8(self.relu7(self.fc7(self.relu6(self.fc6(x)))))


def alexnet_shaped(num_classes: int = 1000, in_channels: int = 3, *,
                   device: str | torch.device | None = None) -> AlexNetShaped:
    """Build ``AlexNetShaped``; ``device="meta"`` gives the shapes without allocating the 62M weights."""
    return AlexNetShaped(num_classes, in_channels, device=device)
