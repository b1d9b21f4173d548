r"""Grey-scale reversal and the first layer's anchors (003 sec. 2, Fig. 5): exact and naive negation, doubled anchors.

The paper trains LeNet-5 on MNIST (98.94%), tests it on grey-scale-reversed digits (37.36%) and reports that
negating C1's weights swaps the two numbers. Here is the exact statement and its proof.

Reversal as the network sees it. Let x be the network's input after the pipeline's padding and normalisation.
The reversed pipeline feeds c - x for a fixed image c:

- pad 28x28 -> 32x32 with zeros, then reverse v -> 1 - v: c = 1 everywhere (the zero border becomes 1);
- reverse, then pad: c = M, the mask that is 1 on the 28x28 interior and 0 on the border (the border stays 0);
- with a normalisation u = (v - m) / s after either: the network sees ((c - v) - m) / s = (c - 2m) / s - u,
  so c becomes (c - 2m) / s;
- with each image's own mean removed, x = v - mean(v) 1 (the global mean of 003 sec. 2, "removed before the
  processing"): mean(1 - v) = 1 - mean(v), so the reversed image is centred to -x: c = 0, reversal is negation.

Exact transform. Let the first layer be f(x) = W * x + b (a convolution with its own zero padding, or a linear
map). Convolution is linear and zero padding pads c - x with the zeros of both terms, so W * (c - x) = W * c - W * x.
Hence

.. math::  f'(u) = (-W) * u + \beta, \quad \beta = b + W * c \quad\Longrightarrow\quad f'(c - x) = W * x + b = f(x),

and every later layer sees the same values: the transformed network on reversed inputs gives the logits of the
original network on original inputs. The bias beta is a map over output positions (K x H_out x W_out). It is one
number per channel, beta_k = b_k + c sum(W_k), exactly when W_k * c is the same at every output position: c a
constant and no zero padding in the first layer (every window full). With padding, the border windows sum W_k
over their in-image taps only; with c = M the windows that overlap the border see fewer ones; then the transform
keeps the position-dependent map (``ReversedInputConv2d``).

The paper's negation (weights only) is f_naive(u) = -W * u + b, so f_naive(c - x) = f(x) - W * c: for constant c
and full windows every channel is off by -c sum(W_k). For c = 0 (centred inputs) the two coincide: the paper's
negation is exact, and the negated network on -x gives the original's logits on x, so the accuracies swap
exactly. In the notation of eq. 7 sum(W_k) is the local-mean coordinate a_{k,0} of the mean-augmented anchor:
negation swaps the roles of x and c - x exactly for the zero-sum part of each anchor, and the mean part has to be
compensated in the bias.

Doubled anchors. The paper proposes doubling C1's anchors so that both polarities are represented:
``double_anchors`` ties the weights to [W; -W] (12 channels from 6 free filters, with 12 free biases) and widens
the next convolution to read them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._layers import check_layer

__all__ = ["ReversedInputConv2d", "double_anchors", "negate_first_layer", "polarity_transform"]


def _get_layer(model: nn.Module, name: str, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} expects an nn.Module model, received {type(model).__name__}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        raise ValueError(
            f"{where}: the model has no submodule {name!r}; its conv/linear layers are {names}; pass one as layer="
        ) from None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class ReversedInputConv2d(nn.Module):
    """A convolution with negated weights and a position-dependent bias map: f'(u) = (-W) * u + (b + W * c).

    Built by ``polarity_transform`` when the bias cannot be one number per channel (zero padding in the layer,
    or a non-constant reversal image ``c``). ``conv`` holds -W and b; the offset image c is a buffer.

    Parameters
    ----------
    conv : nn.Conv2d
        The original layer (W, b); it is copied, not modified.
    offset : Tensor
        The reversal image c: a scalar tensor or ``(C_in, H, W)``.
    """

    def __init__(self, conv: nn.Conv2d, offset: Tensor) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        with torch.no_grad():
            self.conv.weight.neg_()
        self.register_buffer("offset", offset.detach().to(conv.weight.dtype).clone())

    def forward(self, u: Tensor) -> Tensor:
        if self.offset.ndim == 3 and u.shape[1:] != self.offset.shape:
            raise ValueError(
                f"this layer was built for inputs of shape (B, {', '.join(map(str, self.offset.shape))}) "
                f"(the shape of the reversal image), received {tuple(u.shape)}"
            )
        c = self.offset.expand(u.shape[1:]).unsqueeze(0).to(u.dtype)
        conv = self.conv
        # W * c with W = -conv.weight, so beta - b = -(conv.weight * c).
        shift = F.conv2d(c, conv.weight, None, conv.stride, conv.padding, conv.dilation)
        return conv(u) - shift


def _as_offset(offset: float | Tensor) -> Tensor:
    if isinstance(offset, Tensor):
        return offset
    if isinstance(offset, int | float) and not isinstance(offset, bool):
        return torch.tensor(float(offset), dtype=torch.float64)
    raise TypeError(f"offset must be a number or a tensor (the reversal image c), received {type(offset).__name__}")


def polarity_transform(model: nn.Module, *, layer: str = "c1", offset: float | Tensor = 1.0) -> nn.Module:
    """The exact first-layer negation: a copy ``m'`` of ``model`` with ``m'(offset - x) == model(x)`` for every x.

    The derivation is in the module docstring: the layer's weights become -W and its bias becomes
    beta = b + W * c, one number per channel (b_k + c sum(W_k)) when that is possible, else a bias map.

    Parameters
    ----------
    model : nn.Module
        The network; not modified.
    layer : str
        Name of the first conv or linear layer (``"c1"`` for LeNet-5), as in ``model.named_modules()``.
    offset : float or Tensor
        The reversal image c such that reversed inputs are ``c - x``: 1.0 for x -> 1 - x on the padded image;
        the 28x28 interior mask (padded to 32x32) when digits are reversed before padding; (c - 2m) / s after a
        normalisation (v - m) / s. A tensor has shape ``(C_in, H, W)`` (conv) or ``(in_features,)`` (linear).

    Returns
    -------
    nn.Module
        The transformed copy. The layer is a plain ``nn.Conv2d`` / ``nn.Linear`` when the bias is one number per
        channel, otherwise a ``ReversedInputConv2d``.
    """
    target = check_layer(_get_layer(model, layer, "polarity_transform"), "polarity_transform")
    c = _as_offset(offset).to(target.weight.dtype)
    weight = target.weight.detach()
    bias = target.bias.detach() if target.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    out = copy.deepcopy(model)
    if isinstance(target, nn.Linear):
        if c.ndim not in (0, 1) or (c.ndim == 1 and c.shape[0] != target.in_features):
            raise ValueError(
                f"offset for a Linear layer with in_features={target.in_features} must be a number or a tensor "
                f"of shape ({target.in_features},), received shape {tuple(c.shape)}"
            )
        new_bias = bias + weight @ c.expand(target.in_features)
    else:
        if c.ndim not in (0, 3) or (c.ndim == 3 and c.shape[0] != target.in_channels):
            raise ValueError(
                f"offset for a Conv2d layer with in_channels={target.in_channels} must be a number or a tensor "
                f"of shape ({target.in_channels}, H, W), received shape {tuple(c.shape)}"
            )
        if c.ndim == 3 or any(p != 0 for p in target.padding):
            _replace(out, layer, ReversedInputConv2d(target, c))
            return out
        new_bias = bias + c * weight.sum(dim=(1, 2, 3))
    new = copy.deepcopy(target)
    with torch.no_grad():
        new.weight.neg_()
        if new.bias is None:
            new.bias = nn.Parameter(new_bias.clone())
        else:
            new.bias.copy_(new_bias)
    _replace(out, layer, new)
    return out


def negate_first_layer(model: nn.Module, *, layer: str = "c1") -> nn.Module:
    """The paper's negation (003 sec. 2): a copy of ``model`` with the layer's weights W -> -W, bias unchanged.

    Not exact: on reversed inputs c - x each channel is off by -W_k * c (module docstring);
    ``polarity_transform`` is the exact version.
    """
    target = check_layer(_get_layer(model, layer, "negate_first_layer"), "negate_first_layer")
    out = copy.deepcopy(model)
    new = copy.deepcopy(target)
    with torch.no_grad():
        new.weight.neg_()
    _replace(out, layer, new)
    return out


class _Antipodal(nn.Module):
    """Weight parametrisation W -> [W; -W] along the output channels (the doubled anchors)."""

    def forward(self, w: Tensor) -> Tensor:
        return torch.cat([w, -w], dim=0)

    def right_inverse(self, w2: Tensor) -> Tensor:
        return w2[: w2.shape[0] // 2]


def double_anchors(model: nn.Module, *, layer: str = "c1", next_layer: str = "c3") -> nn.Module:
    """A copy of ``model`` whose ``layer`` has the anchors [W; -W] (both polarities) and 2K output channels.

    The weights are tied by a parametrisation (``layer.weight`` is computed from K free filters, so the layer is
    still an ``nn.Conv2d`` that every cnnlens tool reads); the 2K biases are free. ``next_layer`` (the next
    convolution) reads 2K channels: its weights on the first K channels are copied and those on the new K are
    zero, so the returned network computes exactly what ``model`` computes until it is trained.

    Parameters
    ----------
    model : nn.Module
    layer, next_layer : str
        Names of the first convolution and of the convolution that reads its (activated, pooled) output.
    """
    first = check_layer(_get_layer(model, layer, "double_anchors"), "double_anchors")
    second = check_layer(_get_layer(model, next_layer, "double_anchors"), "double_anchors")
    if not isinstance(first, nn.Conv2d) or not isinstance(second, nn.Conv2d):
        raise TypeError(
            f"double_anchors doubles a convolution read by a convolution, received {type(first).__name__} "
            f"and {type(second).__name__}"
        )
    if second.in_channels != first.out_channels:
        raise ValueError(
            f"{next_layer!r} reads {second.in_channels} channels but {layer!r} produces {first.out_channels}; "
            "next_layer must be the convolution that reads layer's output"
        )
    k = first.out_channels
    opts = {"device": first.weight.device, "dtype": first.weight.dtype}
    doubled = nn.Conv2d(first.in_channels, 2 * k, first.kernel_size, first.stride, first.padding,
                        first.dilation, bias=True, **opts)
    bias = first.bias.detach() if first.bias is not None else torch.zeros(k, **opts)
    with torch.no_grad():
        doubled.weight.copy_(torch.cat([first.weight, -first.weight], dim=0))
        doubled.bias.copy_(torch.cat([bias, bias]))
    parametrize.register_parametrization(doubled, "weight", _Antipodal(), unsafe=True)
    wider = nn.Conv2d(2 * k, second.out_channels, second.kernel_size, second.stride, second.padding,
                      second.dilation, bias=second.bias is not None, **opts)
    with torch.no_grad():
        wider.weight.zero_()
        wider.weight[:, :k].copy_(second.weight)
        if second.bias is not None:
            wider.bias.copy_(second.bias)
    out = copy.deepcopy(model)
    _replace(out, layer, doubled)
    _replace(out, next_layer, wider)
    return out
