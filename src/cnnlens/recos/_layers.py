"""Reading a conv or linear layer as a RECOS unit (003 sec. 2): its anchor matrix and its input patches.

A RECOS unit correlates every input patch x in R^N with K anchor vectors a_k (eq. 4). For ``nn.Linear`` the patch
is the whole input vector (N = in_features); for ``nn.Conv2d`` it is one receptive-field window of the input,
N = C_in * k_h * k_w, taken at every output position by ``torch.nn.functional.unfold`` (channel-major, then rows,
then columns: the same order as ``weight.reshape(K, -1)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["anchor_matrix", "extract_patches"]

RecosLayer = nn.Linear | nn.Conv2d


def check_layer(layer: object, where: str) -> RecosLayer:
    """Return ``layer`` if it is a RECOS unit cnnlens can read (Linear, or Conv2d with groups=1, zero padding)."""
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        raise TypeError(
            f"{where} expects an nn.Linear or nn.Conv2d layer (a RECOS unit, eq. 4 of 003), received "
            f"{type(layer).__name__}; pass the convolutional or fully connected layer itself (e.g. model.c1), "
            "not its activation, pooling or a whole model"
        )
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(
                f"{where} reads convolutions with groups=1, received groups={layer.groups}; a grouped "
                "convolution is `groups` separate RECOS units: split its weight per group into separate Conv2d"
            )
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"{where} reads convolutions with zero padding, received padding_mode={layer.padding_mode!r}; "
                "pad the input yourself and use padding=0"
            )
        if isinstance(layer.padding, str):
            raise ValueError(
                f"{where} needs numeric padding, received padding={layer.padding!r}; "
                "use the equivalent integer padding (e.g. padding=2 for a 5x5 'same' convolution)"
            )
    return layer


def patch_shape(layer: RecosLayer) -> tuple[int, ...]:
    """Shape of one input patch: ``(in_features,)`` or ``(C_in, k_h, k_w)``."""
    if isinstance(layer, nn.Linear):
        return (layer.in_features,)
    return (layer.in_channels, *layer.kernel_size)


def layer_bias(layer: RecosLayer) -> Tensor:
    """The layer's bias, or zeros of the weight's dtype when it has none."""
    weight = layer.weight
    if layer.bias is None:
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return layer.bias.detach()


def anchor_matrix(layer: nn.Module) -> Tensor:
    """The anchor matrix A = [a_1, ..., a_K] of eq. 11 of 003: one column per filter, shape (N, K).

    Parameters
    ----------
    layer : nn.Linear or nn.Conv2d
        The RECOS unit. For a convolution the columns are the flattened filters (C_in * k_h * k_w entries, in
        the order of ``torch.nn.functional.unfold``).

    Returns
    -------
    Tensor
        ``layer.weight.reshape(K, -1).T``, detached.
    """
    layer = check_layer(layer, "anchor_matrix")
    weight = layer.weight.detach()
    return weight.reshape(weight.shape[0], -1).T


def extract_patches(x: Tensor, layer: nn.Module) -> tuple[Tensor, tuple[int, ...]]:
    """The input patches a layer correlates with its anchors (the P parallel RECOS inputs of eq. 19 of 003).

    Parameters
    ----------
    x : Tensor
        ``(B, in_features)`` (or ``(B, ...)`` with that many entries per sample) for ``nn.Linear``;
        ``(B, C_in, H, W)`` for ``nn.Conv2d``.
    layer : nn.Linear or nn.Conv2d

    Returns
    -------
    patches : Tensor
        ``(B, P, N)``: P patch positions per sample (P = 1 for a linear layer), N = patch size; the layer's
        pre-activation is ``patches @ anchor_matrix(layer) + bias``.
    grid : tuple of int
        The output grid ``(H_out, W_out)`` for a convolution (P = H_out * W_out), ``()`` for a linear layer.
    """
    layer = check_layer(layer, "extract_patches")
    if not isinstance(x, Tensor):
        raise TypeError(f"extract_patches expects a torch.Tensor input, received {type(x).__name__}")
    if isinstance(layer, nn.Linear):
        if x.ndim < 2 or x[0].numel() != layer.in_features:
            raise ValueError(
                f"a Linear layer with in_features={layer.in_features} needs inputs of shape "
                f"(B, {layer.in_features}), received {tuple(x.shape)}; add the batch dimension or flatten first"
            )
        return x.reshape(x.shape[0], 1, layer.in_features), ()
    if x.ndim != 4 or x.shape[1] != layer.in_channels:
        raise ValueError(
            f"a Conv2d layer with in_channels={layer.in_channels} needs inputs of shape "
            f"(B, {layer.in_channels}, H, W), received {tuple(x.shape)}"
        )
    grid = []
    for size, k, s, p, d in zip(
        x.shape[2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation, strict=True
    ):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(
                f"the patch size {tuple(layer.kernel_size)} (span {span} with dilation {d}) does not fit into "
                f"the input of spatial size {tuple(x.shape[2:])} with padding {p}; use a larger input or a "
                "smaller kernel"
            )
        grid.append((size + 2 * p - span) // s + 1)
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return cols.transpose(1, 2), tuple(grid)
