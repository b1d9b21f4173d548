"""Max-affine spline operators (MASOs) of single layers (Props. 1-4 of 000) and global convexity (Thm. 2 of 000).

A MASO ``S[A, B] : R^D -> R^K`` has slopes ``A in R^{K x R x D}`` and offsets ``B in R^{K x R}`` and computes

.. math::

    S[A, B](z)_k = \\max_{r = 1..R} \\langle [A]_{k,r,\\cdot}, z \\rangle + [B]_{k,r}      (eq. 5 of 000).

:func:`maso` returns these parameters for one operator or one layer (affine operators followed by one nonlinearity,
Prop. 4); :func:`is_globally_convex` checks the conditions of Thm. 2 on a whole model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import _capture as C
from ._affine import affine_map
from ._capture import Capture, capture, check_model_input, run_captured
from ._codes import pool_windows

__all__ = ["MASO", "ConvexityResult", "is_globally_convex", "maso"]


@dataclass(frozen=True)
class MASO:
    """Slopes and offsets of a max-affine spline operator (eq. 5 of 000).

    Attributes
    ----------
    slopes : Tensor (K, R, D)
        ``[A]_{k,r,.}``: R affine pieces per output unit k over the D (flattened) inputs.
    offsets : Tensor (K, R)
        ``[B]_{k,r}`` (``-inf`` marks a padded max-pool position that can never be selected).
    in_shape, out_shape : tuple of int
        Per-sample shapes of the operator's input and output.
    """

    slopes: Tensor
    offsets: Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def num_pieces(self) -> int:
        """R, the number of affine pieces per unit (1 for an affine, degenerate MASO)."""
        return int(self.slopes.shape[1])

    def __call__(self, z: Tensor) -> Tensor:
        """Evaluate ``max_r <A_kr, z> + B_kr`` on a batch ``z`` (N, *in_shape) -> (N, *out_shape)."""
        pieces = torch.einsum("krd,nd->nkr", self.slopes, z.reshape(z.shape[0], -1)) + self.offsets
        return pieces.amax(dim=-1).reshape(z.shape[0], *self.out_shape)


_AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm, nn.AvgPool1d,
                   nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                   nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten)
_NONLINEAR = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _affine_part(mods: Sequence[nn.Module], in_shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor,
                                                                                                     tuple[int, ...]]:
    """(W, b, out_shape) of a chain of affine modules (Prop. 1), read exactly with the affine map at 0."""
    net = nn.Sequential(*mods).eval()
    zero = torch.zeros(1, *in_shape, dtype=dtype)
    a, b = affine_map(net, zero)
    with torch.no_grad():
        out_shape = tuple(net(zero).shape[1:])
    return a[0], b[0], out_shape


def _elementwise(mod: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Slopes (K, 2, K) and offsets (K, 2) of ReLU / leaky ReLU / PReLU over K = prod(shape) units (Prop. 2)."""
    k = int(torch.tensor(shape).prod())
    eye = torch.eye(k, dtype=dtype)
    if isinstance(mod, nn.ReLU):
        low = torch.zeros(k, dtype=dtype)
    elif isinstance(mod, nn.LeakyReLU):
        if not 0 <= mod.negative_slope <= 1:
            raise ValueError(f"LeakyReLU with negative_slope {mod.negative_slope} is not convex, hence not a "
                             "max-affine spline (Prop. 2 of 000 needs 0 <= slope <= 1).")
        low = torch.full((k,), float(mod.negative_slope), dtype=dtype)
    else:
        w = mod.weight.detach().to(dtype)
        if bool(((w < 0) | (w > 1)).any()):
            raise ValueError("PReLU with slopes outside [0, 1] is not convex, hence not a max-affine spline "
                             "(Prop. 2 of 000); its slopes are " + str(w.tolist()))
        channels = shape[0] if len(shape) > 0 else 1
        per_channel = w.expand(channels) if w.numel() == 1 else w
        low = per_channel.view(-1, *[1] * (len(shape) - 1)).expand(shape).reshape(-1) if shape else per_channel
    slopes = torch.stack([eye * low[:, None], eye], dim=1)
    return slopes, torch.zeros(k, 2, dtype=dtype)


def _max_pool(mod: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Selection slopes ``{e_i, i in R_k}`` and zero offsets of max-pooling (Prop. 3); padding gets -inf."""
    d = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(mod)]
    k = C._ntuple(mod.kernel_size, d)
    s = C._ntuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
    params = (k, s, C._ntuple(mod.padding, d), C._ntuple(mod.dilation, d), bool(mod.ceil_mode))
    num_in = int(torch.tensor(shape).prod())
    index = torch.arange(num_in, dtype=torch.float64).view(1, *shape)
    win = pool_windows(index, *params, fill=-1.0).long()[0]  # (C, *out, R)
    out_shape = tuple(win.shape[:-1])
    win = win.reshape(-1, win.shape[-1])
    valid = win >= 0
    slopes = torch.zeros(win.shape[0], win.shape[1], num_in, dtype=dtype)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    slopes[rows, cols, win[rows, cols]] = 1
    offsets = torch.where(valid, 0.0, float("-inf")).to(dtype)
    return slopes, offsets, out_shape


def maso(module: nn.Module, in_shape: Sequence[int] | None = None, *, dtype: torch.dtype = torch.float64) -> MASO:
    """Slopes and offsets of one operator or one layer as a max-affine spline operator (Props. 1-4 of 000).

    * Linear / convolution / batch-norm (eval) / average pooling / flatten: a degenerate MASO, ``R = 1``, slopes the
      operator's matrix and offsets its bias (Prop. 1, Prop. 3 for average pooling).
    * ReLU: ``R = 2``, slopes ``[0, e_k]``, offsets ``[0, 0]``; leaky ReLU / PReLU slopes ``[eta e_k, e_k]``
      (Prop. 2).
    * Max-pooling: ``R = #window``, slopes the selection vectors ``{e_i, i in R_k}``, offsets 0 (Prop. 3).
    * A layer ``nn.Sequential(affine..., nonlinearity)``: the composition of Prop. 4, e.g. Linear + ReLU gives
      ``R = 2`` slopes ``[0, W_k]`` and offsets ``[0, b_k]``.

    Parameters
    ----------
    module : nn.Module
        One of the operators above, or an ``nn.Sequential`` of affine operators ending in at most one nonlinearity.
    in_shape : sequence of int, optional
        Per-sample input shape; required except for ``nn.Linear`` (and layers starting with one).
    dtype : torch.dtype
        Dtype of the returned parameters (float64 by default).

    Returns
    -------
    MASO
        ``slopes`` (K, R, D), ``offsets`` (K, R); ``maso(m, s)(z) == m(z)`` for every z.
    """
    mods = list(module) if isinstance(module, nn.Sequential) else [module]
    if not mods:
        raise ValueError("maso received an empty nn.Sequential; pass at least one operator.")
    for m in mods:
        if not isinstance(m, _AFFINE_MODULES + _NONLINEAR):
            hint = (" Hardtanh/ReLU6 are piecewise affine but not convex, so they are not max-affine splines "
                    "(Prop. 2 of 000 requires convex activations)." if isinstance(m, (nn.Hardtanh,)) else "")
            raise TypeError(f"maso does not know {type(m).__name__}; supported operators are "
                            f"{sorted({t.__name__ for t in _AFFINE_MODULES + _NONLINEAR})}.{hint}")
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) and m.training:
            raise ValueError(f"{type(m).__name__} is in training mode; call .eval() first.")
    nonlinear = [i for i, m in enumerate(mods) if isinstance(m, _NONLINEAR)]
    if len(nonlinear) > 1 or (nonlinear and nonlinear[0] != len(mods) - 1):
        raise ValueError("a MASO layer is affine operators followed by ONE nonlinearity (Definition 1 and Prop. 4 of "
                         f"000); received {[type(m).__name__ for m in mods]}. Call maso on each layer separately.")
    if in_shape is None:
        if isinstance(mods[0], nn.Linear):
            in_shape = (mods[0].in_features,)
        else:
            raise ValueError(f"maso needs in_shape for {type(mods[0]).__name__} (the per-sample input shape, e.g. "
                             "(1, 28, 28)); only nn.Linear infers it.")
    in_shape = tuple(int(v) for v in in_shape)
    affine = mods[:-1] if nonlinear else mods
    d = int(torch.tensor(in_shape).prod())
    if affine:
        w, b, mid_shape = _affine_part(affine, in_shape, dtype)
    else:
        w, b, mid_shape = torch.eye(d, dtype=dtype), torch.zeros(d, dtype=dtype), in_shape
    if not nonlinear:
        return MASO(w[:, None, :], b[:, None], in_shape, mid_shape)
    last = mods[-1]
    if isinstance(last, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        slopes, offsets, out_shape = _max_pool(last, mid_shape, dtype)
    else:
        slopes, offsets = _elementwise(last, mid_shape, dtype)
        out_shape = mid_shape
    # Prop. 4: max_r <S_kr, W z + b> + B_kr = max_r <W^T S_kr, z> + (<S_kr, b> + B_kr)
    return MASO(torch.einsum("krm,md->krd", slopes, w), offsets + torch.einsum("krm,m->kr", slopes, b), in_shape,
                out_shape)


@dataclass(frozen=True)
class ConvexityResult:
    """Outcome of :func:`is_globally_convex`: ``convex`` and the ``reason`` (the first violation, or why it holds)."""

    convex: bool
    reason: str

    def __bool__(self) -> bool:
        return self.convex


class _NotConvex(Exception):  # noqa: N818 - internal signal carrying the reason
    pass


#: Affine operations that may subtract entries (differences, interpolation with weights outside [0, 1], matrix
#: products with arbitrary constants): on a convex tensor they are refused, as subtraction is.
_SIGN_CHANGING = C._torch("diff", "lerp", "index_add", "index_add_", "addmm", "addmv", "addbmm", "baddbmm", "addr",
                          "addcmul", "addcdiv", "cross") | C._existing(C.F.grid_sample, C.F.affine_grid)


class _ConvexityCapture(Capture):
    """Capture that labels every tensor "affine" or "convex" in x and stops at the first violation of Thm. 2."""

    def __init__(self) -> None:
        super().__init__(graph=False)
        self._convex: dict[int, weakref.ref] = {}

    def _is_convex(self, t: object) -> bool:
        return isinstance(t, Tensor) and self._is(t, self._convex)

    def _fail(self, what: str) -> _NotConvex:
        return _NotConvex(f"{what}{self._where()}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in C.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        convex_in = [t for t in leaves if self._is_convex(t)]
        nonlinear = func in C._NONLINEAR_HANDLERS or isinstance(C.rule_of(func), C.ElementwisePiecewise)
        if convex_in or nonlinear:
            self._check(func, args, kwargs, convex_in)
        out = self.dispatch(func, args, kwargs)
        if (convex_in or nonlinear) and any(self.is_tracked(t) for t in leaves):
            for leaf in C.tree_leaves(out):
                if isinstance(leaf, Tensor) and leaf.is_floating_point():
                    self._convex[id(leaf)] = weakref.ref(leaf)
        return out

    def _check(self, func: Callable, args: tuple, kwargs: dict, convex_in: list[Tensor]) -> None:  # noqa: C901
        name = C._canonical(func)
        first = args[0] if args else None
        on_convex = bool(convex_in)
        if func in C._RELU or func in C._MAX_POOL or func in C._MAXIMUM or func in C._ADAPTIVE_MAX_POOL or \
                func in C._REDUCE_MAX or getattr(func, "__name__", "") == "cummax":
            return  # maxima of affine pieces: convex and non-decreasing
        if func in C._REDUCE_MIN or getattr(func, "__name__", "") == "cummin":
            raise self._fail(f"{name} (a minimum, concave) is not convex")
        if func in C._ORDER:
            raise self._fail(f"{name} (an order statistic other than the maximum) is not convex")
        rule = C.rule_of(func)
        if isinstance(rule, C.ElementwisePiecewise):
            pieces = rule.pieces(*args, **kwargs)
            slopes = [torch.as_tensor(v, dtype=torch.float64) for v in pieces.slopes]
            increasing = all(bool((b >= a).all()) for a, b in zip(slopes[:-1], slopes[1:], strict=True))
            if not (pieces.continuous() and increasing):
                raise self._fail(f"{name} is not convex (its pieces are discontinuous or their slopes decrease)")
            if on_convex and bool((slopes[0] < 0).any()):
                raise self._fail(f"{name} is decreasing on its first piece; Thm. 2 of 000 needs non-decreasing "
                                 "activations after the first layer")
            return
        if on_convex and func in _SIGN_CHANGING:
            raise self._fail(f"{name} of a convex (non-affine) tensor may take differences, so cnnlens cannot tell "
                             "whether the result stays convex")
        if func in C._MINMAX_BINARY:
            if func in (torch.max, C.T.max):
                return
            raise self._fail("minimum (concave) is not convex")
        if func in C._LEAKY or func in C._PRELU or func in C._RRELU:
            if func in C._RRELU:
                slope = (C._arg(args, kwargs, 1, "lower", 1.0 / 8) + C._arg(args, kwargs, 2, "upper", 1.0 / 3)) / 2
            else:
                slope = C._arg(args, kwargs, 1, "negative_slope" if func in C._LEAKY else "weight", 0.01)
            slope_t = torch.as_tensor(slope.detach() if isinstance(slope, Tensor) else slope)
            if bool((slope_t > 1).any()):
                raise self._fail(f"{name} with a slope > 1 is concave, not convex")
            if on_convex and bool((slope_t < 0).any()):
                raise self._fail(f"{name} with a negative slope is decreasing; Thm. 2 of 000 needs non-decreasing "
                                 "activations after the first layer")
            return
        if func in C._ABS:
            if on_convex:
                raise self._fail("abs is convex but not non-decreasing; Thm. 2 of 000 needs non-decreasing "
                                 "activations after the first layer")
            return
        if func in C._HARDTANH or func in C._MINIMUM:
            raise self._fail(f"{name} is not convex")
        if func in C._CLAMP:
            hi = C._arg(args, kwargs, 2, "max") if func not in (torch.clamp_max, C.T.clamp_max) else args[1]
            if hi is not None or func in (torch.clamp_max, C.T.clamp_max):
                raise self._fail("clamp with a maximum is not convex")
            return
        if not on_convex:
            return
        if func in C._INPUT_ONLY:
            weight = C._arg(args, kwargs, 1, "weight")
            if func is C.F.batch_norm:
                gamma = C._arg(args, kwargs, 3, "weight")
                weight = torch.ones(()) if gamma is None else gamma.detach()
            if isinstance(weight, Tensor) and bool((weight.detach() < 0).any()):
                raise self._fail(f"{name} has negative weights applied to a convex (non-affine) input; Thm. 2 of "
                                 "000 needs nonnegative weights in layers 2..L")
            return
        if func in C._PRODUCT or func in C._QUOTIENT:
            for t in C.tree_leaves((args, kwargs)):
                if isinstance(t, (Tensor, int, float)) and not (isinstance(t, Tensor) and self.is_tracked(t)):
                    value = torch.as_tensor(t.detach() if isinstance(t, Tensor) else t)
                    if bool((value < 0).any()):
                        raise self._fail(f"{name} by a negative constant of a convex (non-affine) tensor")
            return
        if func in (torch.sub, torch.subtract, C.T.sub, C.T.sub_, C.T.__sub__, C.T.__isub__):
            other = C._arg(args, kwargs, 1, "other")
            if self._is_convex(other):
                raise self._fail("subtracting a convex (non-affine) tensor")
            return
        if func in (C.T.__rsub__, torch.neg, torch.negative, C.T.neg, C.T.neg_, C.T.__neg__) and \
                self._is_convex(first):
            raise self._fail("negating a convex (non-affine) tensor")


def _flat_sequential(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{n}", m) for n, m in _flat_sequential(child)]
        else:
            out.append((name, child))
    return out


def _example_input(model: nn.Module) -> Tensor:
    """An input for a plain chain of modules, read off its first layer (Linear: features; conv: 32 per side)."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"is_globally_convex needs an example input x for a {type(model).__name__} (only an "
                         "nn.Sequential lets cnnlens infer one); call is_globally_convex(model, x).")
    chain = _flat_sequential(model)
    params = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = params.dtype if params is not None else torch.float32
    for _, m in chain:
        if isinstance(m, nn.Linear):
            return torch.zeros(1, m.in_features, dtype=dtype)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            d = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
            return torch.zeros(1, m.in_channels, *[32] * d, dtype=dtype)
    raise ValueError("cannot infer the input shape of this nn.Sequential (no Linear or convolution); pass x.")


def is_globally_convex(model: Callable[[Tensor], Tensor], x: Tensor | None = None) -> ConvexityResult:
    """Check the conditions of Thm. 2 of 000 on the computation the model performs on ``x``.

    Every tensor is labelled affine or convex in the input. Affine operations may do anything to affine tensors
    (the first layer is arbitrary), but on convex tensors they must have nonnegative weights (convolution, linear,
    batch-norm scale, constant factors; no subtraction or negation). Nonlinearities must be convex (ReLU, leaky
    ReLU / PReLU with slopes <= 1, abs, max-pool, maximum, clamp(min=...)), and non-decreasing once applied to a
    convex tensor (abs and negative slopes are then excluded). When all hold, every output is a max-affine spline
    of x, i.e. globally convex (Thm. 2, Cor. 1 of 000). The conditions are sufficient, not necessary.

    Parameters
    ----------
    model : callable
        Piecewise-affine model in eval mode.
    x : Tensor (N, *in_shape), optional
        An example batch: it fixes the path through Python control flow (the weights decide convexity). May be
        omitted for an ``nn.Sequential`` starting with a Linear layer (or a convolution: 32 samples per side).

    Returns
    -------
    ConvexityResult
        ``convex`` and ``reason``.
    """
    if x is None:
        x = _example_input(model)
    check_model_input(model, x)
    try:
        with torch.no_grad(), capture(model, cap=_ConvexityCapture()) as cap:
            run_captured(cap, model, x)
    except _NotConvex as err:
        return ConvexityResult(False, f"{err}.")
    return ConvexityResult(True, "every layer after the first has nonnegative weights and convex non-decreasing "
                                 "activations/pooling, so each output is a max-affine spline of x and globally "
                                 "convex (Thm. 2 of 000).")
