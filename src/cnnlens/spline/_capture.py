"""Runtime capture of a piecewise-affine network: the one place in cnnlens that looks inside a model.

A forward pass runs under a :class:`torch.overrides.TorchFunctionMode` plus module hooks, so the capture sees every
operation whether it is a module (``nn.ReLU``) or a functional call (``F.relu``, ``x.clamp(min=0)``,
``torch.maximum(x, 0 * x)``, residual ``+``, ``torch.cat``, ...) and follows the Python control flow the model really
takes. Every tensor that depends on the input is tracked; each operation applied to a tracked tensor is looked up in
the op-rule registry of :mod:`._ops` (filled from the SUPPORTED tables below and by
:func:`cnnlens.spline.register_op`), which classifies it by what it is:

* affine operations (Prop. 1 of 000: convolution, linear, batch-norm in eval mode, average pooling, additions,
  concatenation, reshapes, selections with constant masks or indices such as ``where``, ``masked_fill``, ``gather``,
  ``index_select``, sums such as ``cumsum``, ``unfold`` / ``fold``, multiplication by constants, ...) run unchanged;
* max-affine operations (Props. 2-3 of 000: ReLU, leaky ReLU, RReLU in eval mode, PReLU, abs, hardtanh/clamp,
  maximum/minimum, max-pool, adaptive max-pool, amax/amin and max/min over dimensions, cummax/cummin) and the other
  piecewise-affine ones (elementwise pieces: Hardsigmoid, Hardshrink, Softshrink, Threshold, registered rules;
  order statistics: sort, top-k, k-th value, median values) record their region code (eq. 14 of 000) and return
  the *same value* computed as a masked linear function of their input (``torch.where`` with the recorded mask,
  a per-unit slope and offset, ``gather`` with the recorded argmax or order), so that the autograd graph of the
  captured forward is exactly the masked linear network ``x -> A[x] x`` of eqs. 7-9, with the tie rule below;
* anything else that touches a tracked tensor raises :class:`cnnlens.NotPiecewiseAffineError` naming the operation and
  the module it was called in, with the reason it is not piecewise affine (smooth, curved, a product, a division by
  a statistic of the input: a product of two input-dependent operands, ``F.linear(z, z)``, is quadratic in x) or
  saying that cnnlens has no rule for it (or is linearised locally when ``approximate=True``).

A is the Jacobian of the function the model computes, whatever its autograd graph says: ``detach()``, ``.data``,
``detach_()``, ``cpu()`` and copies (``torch.tensor(h)``) are identities that keep the link to x, and
``torch.no_grad()`` / ``inference_mode()`` / ``set_grad_enabled(False)`` inside ``forward`` do not apply to the
captured operations (they run in the grad mode the capture was entered with). Models the capture cannot see into
are refused (:func:`check_model_input`: TorchScript, torch.compile), and so are models whose outputs mix the samples
of the batch, by a cheap structural check of the operations that reduce, reorder, move or contract dim 0 of a
tracked tensor whose dim 0 is the sample dimension (:meth:`Capture._check_samples`); values read off tracked tensors
(``bool()``, ``item()``) are recorded, so that a replay can take the recorded control-flow path
(:meth:`Capture._decision`).

Constants (for B[x] summed in the transposed sweep, :mod:`._exactness`). A recording pass with a tape also tells
which tensors are known not to depend on x: the model's parameters, buffers and tensor attributes (also those of
the modules and tensors a plain function closes over or names as globals) and the results of operations on known
tensors and plain arguments (numbers, shapes, dtypes). Every constant operand of an operation on a tracked tensor
must be known, or ``Capture.bias_blocker`` says why the sweep's B cannot be used (then B is replayed at input 0):
a tensor of unknown origin (``torch.from_numpy``, compiled code), a value read off x as a float or an array
(``item()``, ``numpy()``), random numbers, an in-place write into a tensor the model holds or one the tape already
uses, or a tracked tensor whose dim 0 is not the samples.

Tie rule (used identically by the affine map, the partition codes and the region walk). A max-affine unit
``max_r <a_r, x> + b_r`` whose maximum is attained by several pieces takes the *first* piece in the order of Props. 2-3
of 000. Hence: ReLU, leaky ReLU, RReLU, PReLU and abs are "active" (code 1, slope 1) only when the pre-activation is
strictly positive (``ReLU(0)`` is inactive, derivative 0; ``abs`` at 0 takes slope -1); a clamp to ``[lo, hi]`` is in
its linear part only when ``lo < h < hi`` strictly (codes 0 / 1 / 2 for below / linear / above); ``maximum(a, b)``
selects ``a`` only when ``a > b`` (``minimum(a, b)`` only when ``a < b``); max-pooling selects the first index of the
maximum in the window (row-major within the window), which is also what ``torch.nn.functional.max_pool2d`` returns;
the same first-index rule holds for adaptive max-pooling (row-major within the box of the largest window), for
amax/amin and max/min over dimensions (row-major over the reduced dimensions, as :func:`torch.max` returns it) and for
cummax/cummin (PyTorch's own cummax returns the last index on ties; the values, and the indices the op returns to the
model, are PyTorch's). Order statistics use the stable order (equal values keep their index order). An elementwise
piecewise unit exactly at a breakpoint takes the piece its :class:`~cnnlens.spline.Pieces` ``ties`` name: the
constant piece for Hardsigmoid (derivative 0 at -3 and 3, as torch's), the zero piece for Hardshrink and Softshrink
(their value there is 0), the constant piece ``value`` for Threshold.

Module outputs (:func:`module_outputs`). For any network, piecewise affine or not, the outputs of named submodules
(the representation Phi_j of a block, 001 sec. 6.5) are recorded by forward hooks that live only inside the
``with`` block; this is how :mod:`cnnlens.analysis` reads layers.

Paired passes (the region walk of :mod:`._segment`). With ``paired=True`` the batch holds two halves, points x
and the same points moved along a direction, ``[x; x']``; every nonlinearity decides its piece on the first half
and applies the same piece to the second half (a ReLU mask, a clamp state, a max-pool argmax, an order, the piece of
an elementwise unit), so the second half is the replay of x's regions at x' (``forced=``) in the same pass: one pass
of 2N samples instead of a recording pass and a replay of N each, with half the per-operation overhead. The model
must be per-sample (it is checked: the input of every nonlinearity must keep the samples in dim 0); a value read off
an input-dependent tensor other than a shape raises :class:`UnpairableError`, and the caller falls back to two passes.

Errors (:func:`run_captured`). A RuntimeError raised by one of the model's own operations on x (a shape mismatch)
becomes a ValueError that names the op and its module, with the original error chained; every other error reaches
the caller as it is: :class:`ReplayDivergenceError` when a replay with forced regions takes another path, memory
errors, errors the model raises itself, and bugs.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_leaves

from .._errors import NotPiecewiseAffineError
from ._ops import (
    _USER,
    Builtin,
    Composite,
    ElementwisePiecewise,
    Linear,
    NotPiecewiseAffine,
    Pieces,
    register_builtin,
    rule_of,
)
from ._transpose import Node, Tape, _is_channels_last, _mutates_first, record_linear
from ._windows import (
    Windows,
    adaptive_code,
    adaptive_layout,
    adaptive_windows,
    fiber_windows,
    pool_windows,
    prefix_windows,
    reduction_windows,
    selected_positions,
)

__all__ = ["UNFORCEABLE", "Capture", "Entry", "ReplayDivergenceError", "UnpairableError", "capture",
           "check_model_input", "module_on_stack", "module_outputs"]

_APPROX_HINT = (
    "Pass approximate=True to affine_map/templates to get the local linearisation (the Jacobian at x) instead, "
    "or replace it by a piecewise-affine part (ReLU, LeakyReLU, PReLU, abs, hardtanh, max-pool)."
)

T = torch.Tensor


UNFORCEABLE = ("the model's control flow depends on something the replay cannot force (a float read off an "
               "input-dependent tensor: compare tensors, if h.sum() > 0, rather than floats; state kept between "
               "calls; randomness)")


class ReplayDivergenceError(RuntimeError):
    """A forward pass replayed with forced regions took another path than the recorded one.

    Raised when a model's control flow (Python ``if`` on tensor values, data-dependent layer counts or shapes)
    depends on the input values, so the regions recorded at x cannot be replayed at another input (the offset
    propagated at input 0 by :func:`cnnlens.testing.assert_affine_exact`). The affine map at x itself is still exact.
    """


class UnpairableError(Exception):
    """A paired pass (:func:`capture` with ``paired=True``) met an operation it cannot pair: a value read off an
    input-dependent tensor (control flow the second half would have to take as the first half does), or a
    nonlinearity whose input does not keep the samples in dim 0. The caller falls back to a recording pass and a
    replay (two passes). Not a RuntimeError, so that the model's own error handling does not mistake it for a
    failing op, and the capture notes it (``Capture.unpairable``) in case the model swallows it."""


_FAILED_OP = "_cnnlens_failed_op"  # attribute set on a RuntimeError raised by one of the model's own operations


def _is_memory_error(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


class _Unsupported(Exception):  # noqa: N818 - internal carrier, re-raised as NotPiecewiseAffineError
    """Raised inside the capture; not a TypeError, because torch turns a TypeError raised inside a binary
    operator (``x * y``) into ``NotImplemented``. :func:`run_captured` re-raises it as NotPiecewiseAffineError."""

# --- SUPPORTED tables -------------------------------------------------------------------------------------------
# The built-in rules of the op-rule registry (:mod:`._ops`), grouped by what the operation is; ``_register_tables``
# below enters each group into the registry, which is what the dispatch looks up.


def _existing(*funcs: Any) -> set[Callable]:
    """The callables among ``funcs`` (``None`` marks one this torch version does not have)."""
    return {f for f in funcs if f is not None}


def _torch(*names: str) -> set[Callable]:
    """``torch.<name>`` and ``torch.Tensor.<name>`` for each name, where they exist."""
    return _existing(*(getattr(owner, n, None) for n in names for owner in (torch, T)))


#: Operations that are linear (or affine with constant terms) jointly in all their tensor arguments.
_LINEAR_ALL: set[Callable] = {
    torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__,
    torch.sub, torch.subtract, T.sub, T.sub_, T.__sub__, T.__rsub__, T.__isub__,
    torch.neg, torch.negative, T.neg, T.neg_, T.__neg__, torch.positive, T.__pos__,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack,
    T.view, T.view_as, T.reshape, T.reshape_as, torch.reshape, T.flatten, torch.flatten, T.unflatten,
    T.permute, torch.permute, T.transpose, torch.transpose, T.t, torch.t, T.swapaxes, T.movedim, torch.movedim,
    T.squeeze, torch.squeeze, T.unsqueeze, torch.unsqueeze, T.contiguous, T.__getitem__, T.__setitem__,
    T.expand, T.expand_as, T.repeat, T.narrow, torch.narrow, T.select, torch.select, T.chunk, torch.chunk,
    T.split, torch.split, T.unbind, torch.unbind, T.tensor_split, T.roll, torch.roll, T.flip, torch.flip,
    T.sum, torch.sum, T.mean, torch.mean, T.clone, torch.clone, T.copy_, T.to, T.float, T.double, T.type_as,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.adaptive_avg_pool1d,
    F.pad, F.interpolate, F.pixel_shuffle, F.pixel_unshuffle,
} | _torch(
    # selections with constant masks or indices (a mask or index computed from the input raises, see _DISCRETE)
    "where", "masked_fill", "masked_fill_", "masked_scatter", "masked_scatter_", "masked_select", "gather",
    "index_select", "take_along_dim", "take", "index_add", "index_add_", "scatter_add", "scatter_add_", "scatter",
    "scatter_", "scatter_reduce", "scatter_reduce_", "index_reduce", "index_reduce_", "index_copy", "index_copy_",
    "index_fill", "index_fill_", "index_put", "index_put_", "put", "put_",
    # sums and differences
    "cumsum", "cumsum_", "diff", "trapezoid", "trapz", "cumulative_trapezoid", "nansum", "nanmean", "trace",
    "sum_to_size",
    # rearrangements
    "tril", "tril_", "triu", "triu_", "diagonal", "diag", "diag_embed", "diagflat", "rot90", "fliplr", "flipud",
    "tile", "repeat_interleave", "broadcast_to", "broadcast_tensors", "atleast_1d", "atleast_2d", "atleast_3d",
    "column_stack", "row_stack", "dstack", "hsplit", "vsplit", "dsplit", "tensor_split", "split_with_sizes",
    "swapaxes", "swapdims", "moveaxis", "as_strided", "unflatten", "unfold", "squeeze_", "unsqueeze_",
    "constant_pad_nd", "lerp",
) | _existing(F.unfold, F.fold, F.channel_shuffle, getattr(F, "native_channel_shuffle", None), F.upsample,
              F.upsample_nearest, F.upsample_bilinear, F.affine_grid)
_DROPOUT: set[Callable] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
#: Operations affine in exactly one tracked operand (the others must be constants): products, quotients, matmuls.
_PRODUCT: set[Callable] = {torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__,
                           torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm, torch.bmm, T.bmm, torch.einsum} | \
    _torch("kron", "tensordot", "outer", "ger", "inner", "dot", "vdot", "mv", "cross", "chain_matmul",
           "__rmatmul__") | \
    _existing(torch.linalg.vecdot, torch.linalg.matmul, torch.linalg.multi_dot, torch.linalg.cross)
_QUOTIENT: set[Callable] = {torch.div, torch.divide, torch.true_divide, T.div, T.div_, T.__truediv__, T.__itruediv__}
#: ``input + product``: affine in ``input`` and in each factor of the product (at most one input-dependent factor).
_ADD_PRODUCT: dict[Callable, tuple[tuple[int, str], ...]] = {
    f: factors for names, factors in (
        (("addmm", "addmm_"), ((1, "mat1"), (2, "mat2"))), (("addmv", "addmv_"), ((1, "mat"), (2, "vec"))),
        (("addbmm", "addbmm_", "baddbmm", "baddbmm_"), ((1, "batch1"), (2, "batch2"))),
        (("addr", "addr_"), ((1, "vec1"), (2, "vec2"))), (("addcmul", "addcmul_"), ((1, "tensor1"), (2, "tensor2"))),
        (("addcdiv", "addcdiv_"), ((1, "tensor1"),)),  # the divisor tensor2 is checked like a quotient's
    ) for f in _torch(*names)}
_DIVIDES = _QUOTIENT | _torch("addcdiv", "addcdiv_")  # the divisor must not depend on the input
_LERP = _torch("lerp", "lerp_")  # the weight must not depend on the input
_SCATTER_REDUCE = _torch("scatter", "scatter_", "scatter_reduce", "scatter_reduce_", "index_reduce", "index_reduce_")
#: Affine in their first argument (the input) only: weights and statistics must not depend on the input.
_INPUT_ONLY: set[Callable] = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                              F.conv_transpose3d, F.linear, F.bilinear, F.batch_norm} | \
    _existing(F.grid_sample, F.conv_tbc, F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)
#: Input-dependent but piecewise-constant results (masks, indices): allowed only for control flow.
_DISCRETE: set[Callable] = {
    torch.gt, T.gt, T.__gt__, torch.lt, T.lt, T.__lt__, torch.ge, T.ge, T.__ge__, torch.le, T.le, T.__le__,
    torch.eq, T.eq, T.__eq__, torch.ne, T.ne, T.__ne__, torch.isnan, T.isnan, torch.isinf, T.isinf,
    torch.isfinite, T.isfinite, torch.argmax, T.argmax, torch.argmin, T.argmin, torch.sign, T.sign, T.any,
    T.all, torch.any, torch.all,
} | _torch("argsort", "bucketize", "searchsorted", "signbit", "sgn", "isclose", "isposinf", "isneginf", "greater",
           "less", "greater_equal", "less_equal", "not_equal", "isin", "heaviside")
#: Results that never depend on the input values.
_CONSTANT_LIKE: set[Callable] = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                                 T.new_zeros, T.new_ones, T.new_empty, T.new_full, T.new_tensor}

#: Reads of a tensor's metadata (shape, size, dimensions, dtype, layout): the same on both halves of a paired pass.
_METADATA: set[Callable] = {T.shape.__get__, T.ndim.__get__, T.dtype.__get__, T.device.__get__, T.layout.__get__,
                            T.is_cuda.__get__, T.requires_grad.__get__} | \
    _torch("size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "is_floating_point",
           "is_complex", "element_size", "__len__", "get_device", "storage_offset")

_RELU = {F.relu, F.relu_, torch.relu, torch.relu_, T.relu, T.relu_}
_LEAKY = {F.leaky_relu, F.leaky_relu_}
_RRELU = _existing(F.rrelu, F.rrelu_, torch.rrelu, torch.rrelu_)
_PRELU = {F.prelu, torch.prelu}
_ABS = {torch.abs, torch.absolute, T.abs, T.abs_, T.absolute, T.__abs__}
_HARDTANH = {F.hardtanh, F.hardtanh_, F.relu6}
_CLAMP = {torch.clamp, torch.clip, T.clamp, T.clip, T.clamp_, T.clip_, torch.clamp_min, T.clamp_min,
          torch.clamp_max, T.clamp_max}
_MAXIMUM = {torch.maximum, T.maximum, torch.fmax}
_MINIMUM = {torch.minimum, T.minimum, torch.fmin}
_MINMAX_BINARY = {torch.max, T.max, torch.min, T.min}  # max(a, b) elementwise; max(x, dim) is a reduction
_MAX_POOL = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.max_pool1d_with_indices: 1,
             F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3}
_ADAPTIVE_MAX_POOL = {F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
                      F.adaptive_max_pool1d_with_indices: 1, F.adaptive_max_pool2d_with_indices: 2,
                      F.adaptive_max_pool3d_with_indices: 3, torch.adaptive_max_pool1d: 1}
_REDUCE_MAX = _torch("amax")  # also torch.max(x, dim): _MINMAX_BINARY without a tensor second operand
_REDUCE_MIN = _torch("amin")
_RUNNING = _torch("cummax", "cummin")
_ORDER = _torch("sort", "msort", "topk", "kthvalue", "median", "nanmedian")  # order statistics (values)

_IN_PLACE = {F.relu_, torch.relu_, T.relu_, F.leaky_relu_, T.abs_, F.hardtanh_, T.clamp_, T.clip_} | \
    _existing(F.rrelu_, torch.rrelu_)
_INPLACE_KW = {F.relu, F.leaky_relu, F.hardtanh, F.relu6}

_TRAINING_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RReLU)

#: Identities of the map: the input's values without their autograd link (``detach``, ``.data``), in place
#: (``detach_``) or on another device (``cpu``, ``cuda``). A is the Jacobian of what the model computes, so the
#: capture keeps the link (:meth:`Capture._identity`).
_DETACH_LIKE: set[Callable] = {T.detach, torch.detach, T.detach_, T.data.__get__, T.cpu, T.cuda}
#: Copies of their data argument into a new tensor: identities too when the data depends on the input.
_COPY_LIKE: dict[Callable, int] = {torch.tensor: 0, torch.as_tensor: 0, T.new_tensor: 1}  # -> position of the data

#: Operations with dimension arguments that can reach the sample dimension (dim 0): see Capture._check_samples.
_REDUCE_DIM = {T.sum, torch.sum, T.mean, torch.mean, T.cumsum, torch.cumsum, T.amax, torch.amax, T.amin, torch.amin}
_SWAP_DIMS = {T.transpose, torch.transpose, T.swapaxes, torch.swapaxes, T.swapdims, torch.swapdims}
_MOVE_DIMS = {T.movedim, torch.movedim, T.moveaxis, torch.moveaxis}
_REVERSE_DIMS = {T.t, torch.t, T.T.__get__, T.mT.__get__, T.mH.__get__, T.H.__get__, T.adjoint, torch.adjoint}
#: Reductions whose result is batch-wide when called without ``dim`` (``h.sum()``, ``h.mean()``).
_FULL_REDUCE = {T.sum, torch.sum, T.mean, torch.mean, T.amax, torch.amax, T.amin, torch.amin}
_MATMUL_LIKE = {torch.matmul, T.matmul, T.__matmul__, T.__rmatmul__, torch.mm, T.mm, F.linear}
_FLIP, _ROLL, _PERMUTE = {T.flip, torch.flip}, {T.roll, torch.roll}, {T.permute, torch.permute}
_SAMPLE_DIM_OPS = (_REDUCE_DIM | _SWAP_DIMS | _MOVE_DIMS | _REVERSE_DIMS | _MATMUL_LIKE | _FLIP | _ROLL | _PERMUTE
                   | {T.__getitem__, torch.einsum})
#: Argument names of the _INPUT_ONLY operations (they are builtins without a signature to inspect).
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_OPERANDS: dict[Callable, tuple[str, ...]] = {
    F.conv1d: _CONV_ARGS, F.conv2d: _CONV_ARGS, F.conv3d: _CONV_ARGS, F.conv_transpose1d: _CONV_T_ARGS,
    F.conv_transpose2d: _CONV_T_ARGS, F.conv_transpose3d: _CONV_T_ARGS, F.linear: ("input", "weight", "bias"),
    F.bilinear: ("input1", "input2", "weight", "bias"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
}
_PER_SAMPLE_HINT = (
    "cnnlens.spline needs per-sample models: output n must depend on input n only, since the affine map of eq. 9 "
    "of 000 maps one input to its output. Keep dim 0 as the sample dimension (reduce, flip or transpose the other "
    "dimensions) or call the model on one sample at a time."
)


@functools.lru_cache(maxsize=1024)
def _op_name(func: Callable) -> str:
    """The qualified name of a torch function (``torch.nn.functional.conv2d``), cached: resolving it is slow."""
    return resolve_name(func) or getattr(func, "__name__", repr(func))


def _canonical(func: Callable) -> str:
    """A short op name for layer names of functional calls (``relu``, ``max_pool2d``, ...)."""
    if func in _RELU:
        return "relu"
    if func in _LEAKY:
        return "leaky_relu"
    if func in _PRELU:
        return "prelu"
    if func in _ABS:
        return "abs"
    if func in _HARDTANH:
        return "relu6" if func is F.relu6 else "hardtanh"
    if func in _CLAMP:
        return "clamp"
    if func in _MAXIMUM or func in _MINIMUM or func in _MINMAX_BINARY:
        return "maximum" if (func in _MAXIMUM or func in (torch.max, T.max)) else "minimum"
    if func in _MAX_POOL:
        return f"max_pool{_MAX_POOL[func]}d"
    if func in _ADAPTIVE_MAX_POOL:
        return f"adaptive_max_pool{_ADAPTIVE_MAX_POOL[func]}d"
    name = getattr(func, "__name__", None) or _op_name(func)  # amax, cummax, sort, hardsigmoid, a user's op, ...
    return name.split(".")[0].removesuffix("_with_indices").rstrip("_") or name


def module_on_stack(paths: dict[int, str], frame: Any, skip: dict[str, Any]) -> tuple[str, nn.Module] | None:
    """The innermost module of ``paths`` (id(module) -> path) whose code is running, read off the call stack.

    Walks back from ``frame``; frames whose globals are ``skip`` (the capture's own dispatch and handlers) are
    passed without reading their locals. Only layer names, error messages and traces need it, so a plain forward
    pass pays nothing (module hooks would slow every module call).
    """
    if not paths:  # the model is a plain function
        return None
    while frame is not None:
        code = frame.f_code
        if frame.f_globals is not skip and code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            path = paths.get(id(obj))
            if path is not None:
                return path, obj
        frame = frame.f_back
    return None


# --- records ----------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """What the capture records at one max-affine operation (one layer of eq. 14 of 000).

    ``states`` holds the region code per unit: bool for "binary" (True = active piece), uint8 for "ternary"
    (0 below, 1 linear, 2 above), the window-relative argmax for "argmax" (uint8, int64 for windows over 256).
    It may be given as a function of no arguments that computes it, called once on first use: the window-relative
    index of a max-pool is read off its flat index, which the affine map never needs (ResNet-18 at 224x224: 0.35 ms
    of a 60 ms call).
    ``selector`` is what the masked linear network needs to replay the same piece (the mask, the ternary state, or
    the flat max-pool index).
    ``probe`` holds, when requested, the quantities whose sign changes define region boundaries (used by the
    region walk and by :func:`boundary_units`).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_states: int
    _states: Tensor | Callable[[], Tensor]
    selector: Tensor
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def states(self) -> Tensor:
        if not isinstance(self._states, Tensor):
            self._states = self._states()
        return self._states

    def held(self) -> list[Tensor]:
        """The tensors the entry holds now (the states once computed, the selector)."""
        return [t for t in (self._states, self.selector) if isinstance(t, Tensor)]


def _has_tensor(out: Any) -> bool:
    """Whether a result holds a tensor (shape queries, ``item()`` and ``bool()`` return none)."""
    if isinstance(out, Tensor):
        return True
    if out is None or isinstance(out, (bool, int, float, torch.Size)):
        return False
    return any(isinstance(t, Tensor) for t in tree_leaves(out))


def _tensors(args: tuple, kwargs: dict) -> list[Tensor]:
    """The tensors among the arguments (also inside lists/tuples, e.g. torch.cat); faster than a pytree walk."""
    found: list[Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)) and not all(type(v) is int for v in value):  # skip sizes
            found.extend(t for t in tree_leaves(value) if isinstance(t, Tensor))
    return found


class Capture(TorchFunctionMode):
    """Records one forward pass of a model (see the module docstring). Use through :func:`capture`."""

    def __init__(self, *, graph: bool, approximate: bool = False, probe: bool = False,
                 forced: list[Entry] | None = None, tape: Tape | None = None,
                 decisions: list[tuple[Callable, Any]] | None = None, paired: bool = False,
                 shared_probes: bool = False) -> None:
        super().__init__()
        self.shared_probes = shared_probes
        self._shared: list[tuple[Tensor, int]] = []  # probes kept by reference, with their version counters
        if paired and (forced is not None or decisions is not None or tape is not None or graph):
            raise ValueError("a paired pass records its own pieces and forces them on its second half: it takes no "
                             "forced entries or decisions, no tape and no autograd graph.")
        self.paired = paired
        self.half: int | None = None  # paired: the number of samples of the first half, set by run_captured
        self.unpairable = ""  # paired: why the pass could not be paired (UnpairableError), also if the model caught it
        self.tape = tape  # when set, every op on a tracked tensor is recorded for the transposed sweep
        # with a tape: the tensors known not to depend on x (the model's parameters, buffers and tensor attributes,
        # and what ops on them compute); B[x] accumulated in the sweep is an independent check only when every
        # constant on the tape is one of them and every recorded tensor keeps the samples in dim 0, else
        # ``bias_blocker`` says why not (and B is replayed at input 0 instead: _exactness)
        self._known: dict[int, weakref.ref] | None = {} if tape is not None else None
        self._held: dict[int, weakref.ref] = {}  # the tensors the model holds (parameters, buffers, attributes)
        self._used: list[Tensor] = []  # the constants the tape holds (an in-place write into them would change them)
        self._used_storages: set[int] = set()  # their storages, computed when an in-place write asks (_writes_used)
        self.bias_blocker: str | None = None
        self.graph = graph  # True: nonlinear ops return masked-linear expressions (autograd / forward-AD graph)
        self.approximate = approximate
        self.probe = probe
        self.forced = forced
        self.entries: list[Entry] = []
        self.linearised: list[str] = []
        self.paths: dict[int, str] = {}  # id(module) -> path of the model's modules, set by capture()
        # values that left the tensors (bool(), item(), shape queries) in call order; a replay returns
        # ``forced_decisions`` instead, so that it takes the recorded control-flow path (Capture._decision)
        self.decisions: list[tuple[Callable, Any]] = []
        self.forced_decisions = decisions
        self.batch: int | None = None  # the number of samples of the input, set by run_captured
        self._samples: dict[int, weakref.ref] = {}  # tracked tensors whose dim 0 is the sample dimension
        self._pooled: dict[int, weakref.ref] = {}  # tracked tensors computed from a reduction over all samples
        self._modes = (True, False)  # grad mode and inference mode when the capture was entered
        # a recording pass with a tape: the common layers take the lean path (Capture._lean_layer, ...)
        self.lean = tape is not None and not (graph or probe or paired or approximate) and forced is None and \
            decisions is None
        self._escaped: set[float] = set()  # non-integral Python floats read off tracked tensors (Capture._decision)
        self._tracked: dict[int, weakref.ref] = {}
        self._discrete: dict[int, weakref.ref] = {}
        self._counts: dict[str, int] = {}
        self._module_calls: dict[str, int] = {}

    # tracking ---------------------------------------------------------------------------------------------------
    def track(self, t: Any, discrete: bool = False) -> None:
        table = self._discrete if discrete else self._tracked
        if isinstance(t, Tensor):
            table[id(t)] = weakref.ref(t)
            return
        for leaf in tree_leaves(t):
            if isinstance(leaf, Tensor):
                table[id(leaf)] = weakref.ref(leaf)

    def _is(self, t: Any, table: dict[int, weakref.ref]) -> bool:
        ref = table.get(id(t))
        return ref is not None and ref() is t

    def is_tracked(self, t: Any) -> bool:
        return self._is(t, self._tracked)

    # naming ------------------------------------------------------------------------------------------------------
    def _current_module(self) -> tuple[str, nn.Module] | None:
        """The innermost of the model's modules whose code is running (:func:`module_on_stack`)."""
        return module_on_stack(self.paths, sys._getframe(1), globals())

    def _tag(self, err: RuntimeError, func: Callable) -> None:
        """Mark ``err``, raised by the model's own operation ``func``, so that :func:`run_captured` can say which
        op of which module failed on the input (memory errors stay unmarked and propagate as they are)."""
        if not hasattr(err, _FAILED_OP) and not _is_memory_error(err) and not isinstance(err, NotImplementedError):
            setattr(err, _FAILED_OP, f"{_op_name(func)}{self._where()}")

    def _run(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Run one of the model's own operations; a RuntimeError it raises is tagged (:meth:`_tag`)."""
        try:
            return func(*args, **kwargs)
        except RuntimeError as err:
            self._tag(err, func)
            raise

    def _where(self) -> str:
        current = self._current_module()
        if current is None:
            return ""
        path, mod = current
        return f" (called in module '{path or '<root>'}' of type {type(mod).__name__})"

    def _layer_name(self, func: Callable, op: str | None = None) -> str:
        current = self._current_module()
        if current is not None:
            path, mod = current
            if path and not any(True for _ in mod.children()):
                k = self._module_calls.get(path, 0)
                self._module_calls[path] = k + 1
                return path if k == 0 else f"{path}:{k}"
        op = op or _canonical(func)
        k = self._counts.get(op, 0)
        self._counts[op] = k + 1
        return f"{op}_{k}"

    def _error(self, what: str, reason: str | None = None) -> _Unsupported:
        why = f": {reason}" if reason else ""
        return _Unsupported(f"{what}{self._where()} is not piecewise affine{why}. The network therefore has no exact "
                            f"affine map A[x]x + B[x] (eqs. 5-9 of 000). {_APPROX_HINT}")

    def _unknown(self, name: str) -> _Unsupported:
        return _Unsupported(
            f"operation {name}{self._where()} has no rule in cnnlens, so cnnlens cannot tell whether it is piecewise "
            "affine and the network has no exact affine map A[x]x + B[x] (eqs. 5-9 of 000) that it could compute. If "
            "the operation is affine in the input (a rearrangement, a sum, a fixed linear map) or piecewise affine, "
            "declare it with cnnlens.spline.register_op(op, rule) (rules Linear, ElementwisePiecewise, Composite; "
            f"see its docstring). {_APPROX_HINT}")
    def _not_affine(self, what: str, why: str) -> None:
        """An operation that is not affine in its input-dependent operands (a product of two of them, a division by
        one): raise, or with ``approximate=True`` note it as linearised at x (the autograd path takes its Jacobian)."""
        if not self.approximate:
            raise self._error(what, why)
        if self.tape is not None:
            self.tape.switch_off(f"the {what}{self._where()}, linearised (approximate=True)")
        self.linearised.append(what + self._where())

    # dispatch ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        self._modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        lean = _LEAN.get(func) if self.lean else None
        if lean is not None and not self._escaped and not self._pooled and self.bias_blocker is None and \
                self.tape.ok and (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == self._modes and \
                func not in _USER:
            out = lean(self, func, args, kwargs)
            if out is not _GENERIC:
                return out
        if self.batch is not None and func in _SAMPLE_DIM_OPS:
            self._check_samples(func, args, kwargs)
        if (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) != self._modes:
            # torch.no_grad() / inference_mode() / set_grad_enabled(False) inside forward: A is the Jacobian of the
            # function the model computes, whatever its autograd graph says, so its ops run in the capture's mode
            with torch.inference_mode(self._modes[1]), torch.set_grad_enabled(self._modes[0]):
                out = self.dispatch(func, args, kwargs)
        else:
            out = self.dispatch(func, args, kwargs)
        if self.batch is not None:
            self._follow_samples(func, args, kwargs, out)
            if self._known is not None and self.bias_blocker is None:
                self._check_sample_major(func, out)
        return out

    # the lean path of a recording pass ------------------------------------------------------------------------------
    def _sample(self, t: Any) -> bool:
        """Whether ``t`` is an input-dependent floating tensor whose dim 0 is the sample dimension."""
        return self._is(t, self._samples) and self._is(t, self._tracked) and t.is_floating_point()

    def _constant(self, t: Any) -> bool:
        """Whether ``t`` is None or a known constant, not input-dependent, that the tape may use; its storage is
        noted (an in-place write into it after its use blocks the sweep's B: :meth:`_constant_op`)."""
        if t is None:
            return True
        key = id(t)
        known, tracked = self._known.get(key), self._tracked.get(key)
        if known is None or known() is not t or (tracked is not None and tracked() is t):
            return False
        self._used.append(t)
        return True

    def _lean_out(self, func: Callable, args: tuple, kwargs: dict, ins: list[Tensor], out: Tensor) -> Tensor:
        """Track ``out`` of an affine op on the sample-major tensors ``ins`` and record it on the tape."""
        ref = weakref.ref(out)
        self._tracked[id(out)] = ref
        if out.dim() > 0 and out.shape[0] == self.batch:
            self._samples[id(out)] = ref
        else:
            self.bias_blocker = f"{_op_name(func)}{self._where()} makes a tensor whose dim 0 is not the samples"
        record_linear(self.tape, func, args, kwargs, out, ins, self.is_tracked,
                      lambda: f"{_op_name(func)}{self._where()}")
        return out

    def _lean_layer(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``conv{1,2,3}d(h, weight, bias, ...)`` and ``batch_norm(h, mean, var, ...)`` in eval mode on a sample-major
        ``h`` with constant parameters: the result, marks and node :meth:`dispatch` gives them (its checks all pass
        for this form), or :data:`_GENERIC`."""
        h = args[0] if args else None
        if not self._sample(h):
            return _GENERIC
        if func is F.batch_norm:
            params = (*args[1:3], kwargs.get("weight"), kwargs.get("bias"))
            if len(args) != 3 or set(kwargs) != _BN_KEYWORDS or kwargs["training"]:
                return _GENERIC
        else:
            params = args[1:3]
            if kwargs or len(args) < 2 or isinstance(args[4] if len(args) > 4 else 0, str):
                return _GENERIC
        if not all(self._constant(p) for p in params):
            return _GENERIC
        return self._lean_out(func, args, kwargs, [h], self._run(func, args, kwargs))

    def _lean_add(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``a + b`` of two sample-major tensors of one shape (a residual connection), or :data:`_GENERIC`."""
        if kwargs or len(args) != 2 or not (self._sample(args[0]) and self._sample(args[1])) or \
                args[0].shape != args[1].shape or args[0] is args[1]:
            return _GENERIC
        return self._lean_out(func, args, kwargs, list(args), self._run(func, args, kwargs))

    def _lean_relu(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``relu(h)`` (also in place) of a sample-major ``h``: :func:`_relu_like` without the dispatch."""
        if not self._sample(args[0] if args else None) or set(kwargs) - {"inplace"}:
            return _GENERIC
        out = _relu_like(self, func, args, kwargs)
        self._mark(self._samples, [out])
        return out

    def _lean_metadata(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``h.dim()``, ``h.shape``, ``h.size()``: the value, recorded as a decision when ``h`` is tracked."""
        if not args or not self._is(args[0], self._tracked):
            return _GENERIC
        out = self._run(func, args, kwargs)
        self.decisions.append((func, out))
        return out

    # the constants of the tape (B[x] accumulated in the sweep) ---------------------------------------------------
    def know(self, objs: Any) -> None:
        """Mark the tensors among ``objs`` (a tensor, a list of tensors or any pytree) as constants that do not
        depend on x."""
        if self._known is None:
            return
        if isinstance(objs, Tensor):
            self._known[id(objs)] = weakref.ref(objs)
        elif isinstance(objs, list) and all(isinstance(t, Tensor) for t in objs):
            self._mark(self._known, objs)
        else:
            self._mark(self._known, [t for t in tree_leaves(objs) if isinstance(t, Tensor)])

    def _constant_op(self, func: Callable, args: tuple, kwargs: dict, others: list[Tensor], out: Any) -> None:
        """An op on no tracked tensor: its results are known constants when its arguments are (known tensors,
        numbers, shapes, dtypes); an in-place write into a tensor the model holds is state kept between calls."""
        if others and _mutates_first(func) and isinstance(args[0], Tensor) and (
                self._is(args[0], self._held) or self._writes_used(args[0])):
            self.bias_blocker = (f"{_op_name(func)}{self._where()} changes in place a tensor the model holds or "
                                 "the map already used")
        elif all(self._is(t, self._known) for t in others) and all(
                isinstance(v, (Tensor, *_PLAIN)) or v is None or v is Ellipsis
                for v in tree_leaves((args, kwargs))):
            self.know(out)  # computed from constants only (factories, ops on parameters)

    def _writes_used(self, t: Tensor) -> bool:
        """Whether an in-place write into ``t`` changes the memory of a constant the tape already used."""
        self._used_storages.update(u.untyped_storage().data_ptr() for u in self._used)
        self._used.clear()
        return t.untyped_storage().data_ptr() in self._used_storages

    def is_known(self, t: Any) -> bool:
        """Whether ``t`` is a constant known not to depend on x (the model's own, or computed from those)."""
        return self._known is not None and self._is(t, self._known)

    def _check_constants(self, func: Callable, args: tuple, others: list[Tensor]) -> None:
        """An op on tracked tensors whose other tensor operands must all be known constants for the sweep's B, and
        must not be written in place by it (the tape keeps constants by reference, with their values when used)."""
        if others and _mutates_first(func) and isinstance(args[0], Tensor) and not self.is_tracked(args[0]):
            self.bias_blocker = f"{_op_name(func)}{self._where()} writes values of x into a constant in place"
            return
        for t in others:
            if not self._constant(t):
                self.bias_blocker = (f"{_op_name(func)}{self._where()} takes a tensor that is not a parameter, buffer "
                                     "or tensor attribute of the model nor computed from them (it may depend on x "
                                     "where the capture cannot see)")
                return

    def _check_sample_major(self, func: Callable, out: Any) -> None:
        """A tracked result whose dim 0 is not the sample dimension: the sweep cannot split B by sample there."""
        for t in ([out] if isinstance(out, Tensor) else tree_leaves(out) if _has_tensor(out) else []):
            if isinstance(t, Tensor) and self._is(t, self._tracked) and t.dim() > 0 and \
                    not self._is(t, self._samples):
                self.bias_blocker = f"{_op_name(func)}{self._where()} makes a tensor whose dim 0 is not the samples"
                return

    def dispatch(self, func: Callable, args: tuple, kwargs: dict) -> Any:  # noqa: C901 - one dispatch table
        """Run ``func`` on a captured forward pass by its rule in the registry (see the module docstring)."""
        if self._escaped:
            self._check_escaped(func, args, kwargs)
        if self.tape is not None and self.tape.pending_batch_norms:  # an in-place write: pending batch-norm forms
            for target in (args[0] if args and _mutates_first(func) else None, kwargs.get("out")):
                for t in [target] if isinstance(target, Tensor) else tree_leaves(target) if target else []:
                    if isinstance(t, Tensor):
                        self.tape.before_write(t)
        tracked, discrete, others = [], [], []
        for t in _tensors(args, kwargs):
            if self._is(t, self._tracked):
                tracked.append(t)
            elif self._discrete and self._is(t, self._discrete):
                discrete.append(t)
            else:
                others.append(t)
        if self._known is not None and self.bias_blocker is None and _is_random(func, args, kwargs):
            self.bias_blocker = f"{_op_name(func)}{self._where()} draws random numbers"
        if not tracked and not discrete:
            out = self._run(func, args, kwargs)
            if self._known is not None and self.bias_blocker is None:
                self._constant_op(func, args, kwargs, others, out)
            return out
        if self._known is not None and self.bias_blocker is None and others:
            self._check_constants(func, args, others)
        if func in _DETACH_LIKE:
            return self._identity(func, args, kwargs, discrete)
        if func in _COPY_LIKE and self.is_tracked(_arg(args, kwargs, _COPY_LIKE[func], "data")):
            return self._copy(func, args, kwargs)
        rule = rule_of(func)
        builtin = rule.kind if isinstance(rule, Builtin) else None
        if builtin == "discrete":
            out = self._run(func, args, kwargs)
            self.track(out, discrete=True)
            return out
        if builtin == "constant":
            out = self._run(func, args, kwargs)
            self.know(out)  # zeros_like(h), h.new_ones(...): values that do not depend on x
            return out
        if discrete:
            out = self._run(func, args, kwargs)
            if not _has_tensor(out):
                return self._decision(func, out)  # control flow on an input-dependent mask (bool(), item())
            raise _Unsupported(
                f"{_op_name(func)}{self._where()} uses an input-dependent mask or index (from a "
                "comparison, sign or argmax of an input-dependent tensor); cnnlens cannot record its region. Write "
                "the nonlinearity as a supported operation (relu, clamp, maximum, max-pool), or declare your own "
                "op with cnnlens.spline.register_op. " + _APPROX_HINT)
        if builtin == "handler":
            return rule.handler(self, func, args, kwargs)
        if isinstance(rule, Linear):
            self._check_affine(func, args, kwargs, tracked, rule)
            out = self._run_halves(func, args, kwargs) if self.half is not None else self._run(func, args, kwargs)
            self.track(out)
            if self.tape is not None and self.tape.ok:
                describe = lambda: f"{_op_name(func)}{self._where()}"  # noqa: E731 - only called on a switch-off
                if getattr(func, "_cnnlens_function", None) is not None:  # a custom autograd.Function
                    self.tape.switch_off(f"the custom autograd.Function {describe()}, registered as Linear: A is "
                                         "taken through its backward by autograd")
                else:
                    record_linear(self.tape, func, args, kwargs, out, tracked, self.is_tracked, describe)
            if func in (T.__setitem__, T.copy_) or getattr(func, "__name__", "").endswith("_"):
                self.track(args[0])
            return out
        if isinstance(rule, ElementwisePiecewise):
            return _elementwise(self, func, rule, args, kwargs)
        if isinstance(rule, Composite):
            with self:  # the mode is off while it handles an op: run fn with it on, so its ops are captured
                return rule.fn(*args, **kwargs)
        out = self._run(func, args, kwargs)
        if not _has_tensor(out):
            return self._decision(func, out)  # shape queries, item(), bool(): no tensor flows on
        name = _op_name(func)
        if not self.approximate:
            if isinstance(rule, NotPiecewiseAffine):
                raise self._error(f"operation {name}", rule.reason)
            raise self._unknown(name)
        if self.tape is not None:
            self.tape.switch_off(f"the operation {name}{self._where()}, linearised (approximate=True)")
        self.linearised.append(name + self._where())
        self.track(out)
        return out

    def _check_affine(self, func: Callable, args: tuple, kwargs: dict, tracked: list[Tensor],  # noqa: C901
                      rule: Linear) -> None:
        """Raise unless this call of a :class:`Linear` op is affine in x (integer inputs, products of two
        input-dependent tensors, input-dependent weights, training mode, non-linear options)."""
        name = _op_name(func)
        floats = [t for t in tracked if t.is_floating_point() or t.is_complex()]
        if len(floats) < len(tracked):
            raise self._error(f"operation {name} on an input-dependent integer tensor")
        if func in _DROPOUT:
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            if training:
                raise ValueError(f"dropout{self._where()} runs in training mode (random masks), so the network is "
                                 "not a fixed function of x; call model.eval() before using cnnlens.spline.")
        if func is F.batch_norm:
            training = kwargs.get("training", args[5] if len(args) > 5 else False)
            if training:
                raise ValueError(f"batch_norm{self._where()} normalises with batch statistics (training mode or "
                                 "track_running_stats=False), which is not a per-sample affine map; call "
                                 "model.eval() (with running statistics) before using cnnlens.spline.")
        if rule.inputs == "first":
            if func in _OPERANDS:
                self._check_operands(func, name, args, kwargs)
            else:
                first = kwargs.get("input", args[0] if args else None)
                if any(t is not first for t in tracked):
                    self._not_affine(f"operation {name} with input-dependent weights or statistics",
                                     f"cnnlens needs every operand of {name} but its input independent of x")
        elif rule.inputs == "one":
            if len(tracked) > 1 or (len(tracked) == 1 and sum(t is tracked[0] for t in tree_leaves(args)) > 1):
                self._not_affine(f"operation {name} multiplying two input-dependent tensors",
                                 "a product of two input-dependent tensors is quadratic in x")
        if func in _DIVIDES:
            key, pos = ("tensor2", 2) if func not in _QUOTIENT else ("other", 1)
            denom = kwargs.get(key, args[pos] if len(args) > pos else None)
            if isinstance(denom, Tensor) and self._is(denom, self._tracked):
                self._not_affine(f"operation {name} dividing by an input-dependent tensor",
                                 "1 / t is not affine in t")
            if kwargs.get("rounding_mode") is not None:
                raise self._error(f"operation {name} with rounding_mode={kwargs['rounding_mode']!r}")
        if func in _ADD_PRODUCT:
            factors = [_arg(args, kwargs, pos, key) for pos, key in _ADD_PRODUCT[func]]
            if sum(isinstance(f, Tensor) and self.is_tracked(f) for f in factors) > 1:
                raise self._error(f"operation {name} multiplying two input-dependent tensors")
        elif func is F.pad:
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            if mode not in ("constant", "reflect", "replicate", "circular"):
                raise self._error(f"operation torch.nn.functional.pad with mode={mode!r}")
        elif func in _LERP:
            weight = _arg(args, kwargs, 2, "weight")
            if isinstance(weight, Tensor) and self.is_tracked(weight):
                raise self._error(f"operation {name} with an input-dependent weight (a product)")
        elif func in _SCATTER_REDUCE:
            self._check_reduce(func, name, args, kwargs)

    def _check_reduce(self, func: Callable, name: str, args: tuple, kwargs: dict) -> None:
        """scatter / scatter_reduce / index_reduce: sums and means are affine; products are affine in ``self``
        only when the scattered tensor is a constant; max/min reductions select by the input's values."""
        plain = getattr(func, "__name__", "").rstrip("_") == "scatter"
        reduce = kwargs.get("reduce", None if plain else (args[4] if len(args) > 4 else None))
        src = _arg(args, kwargs, 3, "src" if getattr(func, "__name__", "").rstrip("_") != "index_reduce" else "source")
        if reduce in (None, "add", "sum", "mean"):
            return
        if reduce in ("multiply", "prod"):
            if isinstance(src, Tensor) and self.is_tracked(src):
                raise self._error(f"operation {name} with reduce={reduce!r} of an input-dependent tensor (a product)")
            return
        raise self._error(f"operation {name} with reduce={reduce!r}",
                          "a max/min scatter selects entries by the input's values and cnnlens has no region code "
                          "for it; compute the maximum with amax/max-pooling instead")

    def _check_operands(self, func: Callable, name: str, args: tuple, kwargs: dict) -> None:
        """Convolutions, linear and batch-norm are affine in their input only; bilinear in one of its two inputs.

        The check is by argument position, not by object: ``F.linear(z, z)`` passes one tensor as input and weight.
        """
        inputs = ("input1", "input2") if func is F.bilinear else ("input",)
        params = dict(zip(_OPERANDS[func], args, strict=False)) | kwargs
        dependent = [k for k, v in params.items() if isinstance(v, Tensor) and self._is(v, self._tracked)]
        if func is F.bilinear and len(set(dependent) & set(inputs)) == 2:
            self._not_affine(f"operation {name} with both inputs input-dependent",
                             "bilinear in its two inputs, so quadratic in x when both depend on it")
        wrong = [k for k in dependent if k not in inputs]
        if not wrong:
            return
        if "weight" in wrong:
            self._not_affine(f"operation {name} with an input-dependent weight",
                             "its weight depends on x, so weight times input is a product of two input-dependent "
                             "tensors, quadratic in x")
        else:
            self._not_affine(f"operation {name} with input-dependent {' and '.join(wrong)}",
                             f"cnnlens needs the {' and '.join(wrong)} of {name} independent of the input")

    def _identity(self, func: Callable, args: tuple, kwargs: dict, discrete: list[Tensor]) -> Any:
        """``detach``, ``.data``, ``detach_``, ``cpu``, ``cuda`` of an input-dependent tensor: the same values, and the
        capture keeps their link to x (a view in the autograd graph, an identity on the tape). A is the Jacobian of
        the function the model computes (eq. 8 of 000), not of its autograd graph."""
        h = _arg(args, kwargs, 0, "input")
        if func is T.detach_:
            return h  # the values do not change; the link is kept
        if func in (T.cpu, T.cuda):
            out = self._run(func, args, kwargs)
            if out is h:
                return out
            op, op_args, op_kwargs = func, args, kwargs
        else:
            out = h.view_as(h)  # shares h's memory like detach and .data, and keeps the autograd link
            op, op_args, op_kwargs = T.view_as, (h, h), {}
        self.track(out, discrete=bool(discrete))
        if self.tape is not None and self.tape.ok and not discrete:
            record_linear(self.tape, op, op_args, op_kwargs, out, [h], self.is_tracked,
                          lambda: f"{_op_name(func)}{self._where()}")
        return out

    def _copy(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        """``torch.tensor(h)``, ``torch.as_tensor(h)``, ``t.new_tensor(h)`` of an input-dependent ``h``: a copy of its
        values (with the dtype and device asked for), kept linked to x like :meth:`_identity`."""
        data = _arg(args, kwargs, _COPY_LIKE[func], "data")
        res = self._run(func, args, kwargs)
        if res is data:
            return res
        spec = {"dtype": res.dtype, "device": res.device, "copy": True}
        out = data.to(**spec)
        self.track(out)
        if self.tape is not None and self.tape.ok:
            record_linear(self.tape, T.to, (data,), spec, out, [data], self.is_tracked,
                          lambda: f"{_op_name(func)}{self._where()}")
        return out

    def _decision(self, func: Callable, out: Any) -> Any:
        """A value read off an input-dependent tensor that leaves the tensors (``bool()``, ``item()``, shape queries).

        Recorded in call order. A replay (``decisions`` given) returns the recorded value instead of its own when
        it is discrete (bools, ints, shapes: control flow such as ``if h.sum() > 0``), so it takes the control-flow
        path of the recorded pass: on the region of x that path is fixed, and the masked network of eq. 7 of 000 is
        the one that path computes. Floats and arrays (``float(h.sum())``, ``h.numpy()``) may flow into arithmetic
        the capture cannot see, so the replay keeps its own: forcing them would make B agree with a map that
        misses their dependence on x, and hide it from the identity check.
        """
        k = len(self.decisions)
        self.decisions.append((func, out))
        if self.half is not None and func not in _METADATA:
            raise self._unpairable(f"{_op_name(func)}{self._where()} reads a value off an input-dependent tensor")
        forced = self.forced_decisions
        if forced is None:
            self._note_escaped(out)
            if self._known is not None and self.bias_blocker is None and func not in _METADATA and \
                    not _is_discrete(out):
                self.bias_blocker = (f"{_op_name(func)}{self._where()} reads a value off an input-dependent tensor "
                                     "that may flow back in where the capture cannot see (a float or an array)")
            return out
        if k >= len(forced) or forced[k][0] != func:
            recorded = _op_name(forced[k][0]) if k < len(forced) else f"nothing (it read {len(forced)} values)"
            raise ReplayDivergenceError(
                f"the replayed forward pass read a value off an input-dependent tensor with {_op_name(func)}"
                f"{self._where()} as read number {k}, where the recorded pass called {recorded}: {UNFORCEABLE}, so "
                "the recorded path cannot be replayed at another input.")
        if _is_discrete(forced[k][1]):
            return forced[k][1]
        self._note_escaped(out)
        return out  # a float or an array read off x: the replay's own, so that B does not hide its dependence on x

    def _note_escaped(self, value: Any, budget: int = 10_000) -> None:
        """Remember the non-integral floats among ``value`` (``h.item()``, ``float(h)``, ``h.tolist()``)."""
        if len(self._escaped) >= budget:
            return
        if isinstance(value, float):
            if not value.is_integer():
                self._escaped.add(value)
        elif isinstance(value, list):
            for v in value:
                self._note_escaped(v, budget)

    def _check_escaped(self, func: Callable, args: tuple, kwargs: dict) -> None:
        """Refuse an operation given a Python number that was read off an input-dependent tensor.

        Such a number depends on x, but the capture sees a constant: ``x * h.norm().item()`` or ``x + h.sum().item()``
        would get a wrong A with an identity check that still passes. Used for control flow only (``if h.sum().item()
        > 0``) the number is fine. Numbers computed from it in Python (``2 * v``) cannot be recognised.
        """
        for value in (*args, *kwargs.values()):
            if type(value) is float and value in self._escaped:
                raise _Unsupported(
                    f"operation {_op_name(func)}{self._where()} receives the Python number {value!r}, read off an "
                    "input-dependent tensor (item(), float() or tolist()): it depends on x, but cnnlens cannot follow "
                    "how, so the affine map would miss that dependence. Keep the value a tensor, so that cnnlens sees "
                    "it (h - h.mean(1, keepdim=True) rather than h - h.mean().item()); reading it for control flow "
                    "only (if h.sum().item() > 0) is fine.")

    # the samples of the batch ------------------------------------------------------------------------------------
    def _check_samples(self, func: Callable, args: tuple, kwargs: dict) -> None:
        """Refuse an operation that reduces, reorders, moves or contracts the sample dimension (dim 0) of a tracked
        tensor whose dim 0 is the sample dimension: a cheap structural check of per-sample models, before the op."""
        # a weight of F.linear that depends on x is refused as quadratic by _check_operands
        for pos in (0, 1) if func in _MATMUL_LIKE and func is not F.linear else (0,):
            h = args[pos] if len(args) > pos else None
            if isinstance(h, Tensor) and self._is(h, self._samples):
                what = _sample_dim_use(func, args, kwargs, pos, h.dim())
                if what is not None:
                    raise ValueError(f"{_op_name(func)}{self._where()} {what} (dim 0) of an input-dependent tensor, so "
                                     f"the outputs mix the samples of the batch. {_PER_SAMPLE_HINT}")
        if func is torch.einsum:
            what = self._einsum_sample_use(args)
            if what is not None:
                raise ValueError(f"{_op_name(func)}{self._where()} {what}, so the outputs mix the samples of the "
                                 f"batch. {_PER_SAMPLE_HINT}")

    def _einsum_sample_use(self, args: tuple) -> str | None:
        """The einsum operand whose sample subscript does not stay the first output subscript, if any."""
        if not args or not isinstance(args[0], str):
            return None
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        spec = args[0].replace(" ", "")
        ins, _, out = spec.partition("->")
        subs = ins.split(",")
        if "->" not in spec:
            letters = [c for c in ins if c.isalpha()]
            out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
        for sub, op in zip(subs, operands, strict=False):
            if isinstance(op, Tensor) and self._is(op, self._samples) and sub and not sub.startswith("..."):
                if not out or out[0] != sub[0]:
                    return (f"maps the sample dimension (subscript {sub[0]!r}) of an input-dependent operand away "
                            "from dim 0")
        return None

    def _follow_samples(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        """After an op: mark the tracked results whose dim 0 is still the sample dimension, and refuse a reduction
        over all samples (``h.sum()``, ``h.mean()`` without dim) that flows back into per-sample tensors (its use in
        control flow, ``if h.sum() > 0``, is fine)."""
        if isinstance(out, Tensor):
            if not self._is(out, self._tracked):
                return
            outs = [out]
        else:
            outs = [t for t in tree_leaves(out) if isinstance(t, Tensor) and self._is(t, self._tracked)] \
                if _has_tensor(out) else []
            if not outs:
                return
        ins = [t for t in _tensors(args, kwargs) if self._is(t, self._tracked)]
        samples = [t for t in ins if self._is(t, self._samples)]
        if self._pooled and any(self._is(t, self._pooled) for t in ins):
            if samples:
                raise ValueError(f"{_op_name(func)}{self._where()} combines a reduction over all samples of the batch "
                                 "(h.sum(), h.mean(), ... without dim) with per-sample tensors, so the outputs mix the "
                                 f"samples of the batch. {_PER_SAMPLE_HINT}")
            self._mark(self._pooled, outs)
            return
        if not samples:
            return
        if func in _FULL_REDUCE and self.batch > 1 and _full_reduction(args, kwargs):
            self._mark(self._pooled, outs)
        elif len(samples) == sum(t.dim() > 0 for t in ins):
            self._mark(self._samples, [o for o in outs if o.dim() > 0 and o.shape[0] == self.batch
                                       and not _moves_sample_dim(func, args, kwargs, o)])

    @staticmethod
    def _mark(table: dict[int, weakref.ref], tensors: list[Tensor]) -> None:
        for t in tensors:
            table[id(t)] = weakref.ref(t)

    # recording helpers ------------------------------------------------------------------------------------------
    def _next_forced(self, name: str, kind: str, shape: tuple[int, ...]) -> Entry | None:
        if self.forced is None:
            return None
        k = len(self.entries)
        if k >= len(self.forced) or self.forced[k].kind != kind or self.forced[k].shape != shape:
            recorded = (f"{self.forced[k].kind} layer '{self.forced[k].name}' with unit shape {self.forced[k].shape}"
                        if k < len(self.forced) else f"no layer (it met {len(self.forced)})")
            raise ReplayDivergenceError(
                f"the replayed forward pass reached {kind} layer '{name}' with unit shape {shape} as nonlinearity "
                f"number {k}, where the recorded pass met {recorded}: {UNFORCEABLE}, so the regions recorded at x "
                "cannot be replayed at another input. The affine map at x is still exact; only checks that replay "
                "the regions (the propagated offset) cannot run on this model.")
        return self.forced[k]

    def record(self, entry: Entry) -> None:
        self.entries.append(entry)

    def _kept(self, t: Tensor, modified: bool = False) -> Tensor:
        """The probe of a nonlinearity's input ``t``: a copy, since the op itself (``modified``: in place) or a later
        in-place op of the model may overwrite ``t``; with ``shared_probes``, ``t`` itself when the op does not
        modify it, its version counter noted, so that :meth:`probes_intact` tells whether a later op did."""
        if self.shared_probes and not modified:
            self._shared.append((t, t._version))
            return t
        return t.clone()

    def probes_intact(self) -> bool:
        """Whether every probe kept by reference still holds the values it had at its op (``shared_probes``)."""
        return all(t._version == version for t, version in self._shared)

    # paired passes ------------------------------------------------------------------------------------------------
    def _run_halves(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A linear op of a paired pass: a CPU convolution that would unfold a large batch (:data:`_SPLIT_UNFOLD`)
        runs on chunks of samples within each half (the numbers of a recording pass and a replay up to rounding:
        float64 convolutions differ in the last bits with the batch size on some CPUs; checked for conv1d/2d/3d, on
        1 and 2 threads); every other op runs once on the whole batch."""
        h = args[0] if args else None
        if func not in _CONV_ND or not isinstance(h, Tensor) or h.device.type != "cpu" or \
                not self._is(h, self._samples) or h.shape[0] != 2 * self.half:
            return self._run(func, args, kwargs)
        w = _arg(args, kwargs, 1, "weight")
        stride = _ntuple(_arg(args, kwargs, 3, "stride", 1), h.dim() - 2)
        unfolded = h.shape[1] * math.prod(w.shape[2:]) * h.element_size() * h.shape[0] * \
            math.prod(-(-n // s) for n, s in zip(h.shape[2:], stride, strict=True))
        if unfolded <= _SPLIT_UNFOLD:
            return self._run(func, args, kwargs)
        n = self.half
        step = max(1, min(n, h.shape[0] * _SPLIT_UNFOLD // unfolded))  # chunks within each half
        return torch.cat([self._run(func, (part, *args[1:]), kwargs) for half in (h[:n], h[n:])
                          for part in half.split(step)])

    def _unpairable(self, why: str) -> UnpairableError:
        self.unpairable = why
        return UnpairableError(f"the pass cannot be paired: {why}")

    def _first_half(self, t: Tensor, *operands: Any) -> Tensor:
        """The first half of ``t`` (2N, ...) on a paired pass: the points whose pieces both halves take. Raise
        :class:`UnpairableError` unless dim 0 of ``t`` and of every input-dependent operand is the sample dimension
        (an operand that is not per-sample could mix the halves)."""
        n = self.half
        if t.dim() == 0 or t.shape[0] != 2 * n or any(
                isinstance(o, Tensor) and self.is_tracked(o)
                and not (self._is(o, self._samples) and o.shape[0] == 2 * n) for o in operands):
            raise self._unpairable(f"the input of {self._where().strip() or 'a nonlinearity'} does not keep the "
                                   "samples in dim 0")
        return t[:n]

    def _paired_code(self, code_of: Callable[[Tensor], Tensor], t: Tensor, *operands: Any) -> Tensor:
        """``code_of`` of the first half of ``t``, repeated for the second half (:meth:`_first_half`)."""
        return _twice(code_of(self._first_half(t, *operands)))


_GENERIC = object()  # a lean method's answer when the call must take the generic dispatch
_BN_KEYWORDS = frozenset({"weight", "bias", "training", "momentum", "eps"})  # as F.batch_norm hands them on
#: The common layers of CNNs and the lean methods that record them (Capture.__torch_function__).
_LEAN: dict[Callable, Callable[[Capture, Callable, tuple, dict], Any]] = {
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d, F.batch_norm), Capture._lean_layer),
    **dict.fromkeys((T.add, T.__add__, T.__iadd__, T.add_, torch.add), Capture._lean_add),
    **dict.fromkeys((F.relu, torch.relu, torch.relu_, T.relu, T.relu_), Capture._lean_relu),
    **dict.fromkeys((T.dim, T.shape.__get__, T.size), Capture._lean_metadata),
}


def _twice(code: Tensor) -> Tensor:
    """``[code; code]``: the pieces of the first half, taken by the second half too."""
    return torch.cat([code, code])


def _is_discrete(value: Any) -> bool:
    """Whether a value read off a tensor is discrete (bool, int, a shape, or lists/arrays of them): control flow."""
    if value is None or isinstance(value, (bool, int, str, torch.Size)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_discrete(v) for v in value)
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # numpy arrays and scalars
    return kind is not None and kind in "biu"


# --- the sample dimension ---------------------------------------------------------------------------------------


def _dim_list(value: Any, nd: int) -> list[int]:
    """Dimension argument(s) (an int, or a list/tuple of ints) as non-negative dims, in order."""
    values = value if isinstance(value, (list, tuple, torch.Size)) else (value,)
    return [int(d) % nd for d in values] if nd else []


def _dims(value: Any, nd: int) -> set[int]:
    return set(_dim_list(value, nd))


def _dim_args(args: tuple, kwargs: dict, name: str) -> Any:
    """``dims`` given as varargs (``h.flip(0, 1)``, ``h.permute(1, 0)``) or as one list/keyword."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > 2:
        return args[1:]
    return args[1] if len(args) > 1 else None


def _sample_dim_use(func: Callable, args: tuple, kwargs: dict, pos: int, nd: int) -> str | None:
    """What ``func`` does to dim 0 of its argument number ``pos`` when that is not per-sample, else None."""
    if func in _MATMUL_LIKE:
        first = pos == 0 and func is not T.__rmatmul__
        if (first and nd == 1) or (not first and nd <= 2):
            return "contracts the sample dimension"
        return None
    if pos or nd == 0:
        return None
    if func in _REDUCE_DIM:
        dim = _arg(args, kwargs, 1, "dim", kwargs.get("axis"))
        if dim is None or (isinstance(dim, (list, tuple)) and not dim):
            return None  # a reduction over all dimensions: followed by Capture._follow_samples
        return "reduces over the sample dimension" if 0 in _dims(dim, nd) else None
    if func in _FLIP:
        return "reverses the sample dimension" if 0 in _dims(_dim_args(args, kwargs, "dims"), nd) else None
    if func in _ROLL:
        dims = _arg(args, kwargs, 2, "dims", None)
        if dims is None or (isinstance(dims, (list, tuple)) and not dims):
            return "rolls the flattened tensor across the sample dimension"
        return "rolls along the sample dimension" if 0 in _dims(dims, nd) else None
    if func in _SWAP_DIMS:
        a = _arg(args, kwargs, 1, "dim0", kwargs.get("axis0"))
        b = _arg(args, kwargs, 2, "dim1", kwargs.get("axis1"))
        return "moves the sample dimension" if (int(a) % nd == 0) != (int(b) % nd == 0) else None
    if func in _PERMUTE:
        dims = _dim_args(args, kwargs, "dims")
        return "moves the sample dimension" if int(tuple(dims)[0]) % nd != 0 else None
    if func in _MOVE_DIMS:
        src = _dim_list(_arg(args, kwargs, 1, "source"), nd)
        dst = _dim_list(_arg(args, kwargs, 2, "destination"), nd)
        order = [d for d in range(nd) if d not in src]
        for d, s in sorted(zip(dst, src, strict=True)):
            order.insert(d, s)
        return "moves the sample dimension" if order[0] != 0 else None
    if func in _REVERSE_DIMS:  # .T reverses all dims; t, mT, mH, H and adjoint swap the last two
        return "moves the sample dimension" if nd == 2 or (nd > 2 and func == T.T.__get__) else None
    if func is T.__getitem__:
        index = args[1] if len(args) > 1 else None
        first = index[0] if isinstance(index, tuple) and index else index
        if isinstance(first, list) or (isinstance(first, Tensor) and first.dim() > 0):
            return "indexes the sample dimension with a list or tensor of indices (reordering or repeating samples)"
    return None


def _full_reduction(args: tuple, kwargs: dict) -> bool:
    """Whether a sum/mean/amax/amin call reduces over all dimensions (no ``dim``)."""
    dim = _arg(args, kwargs, 1, "dim", kwargs.get("axis"))
    return dim is None or (isinstance(dim, (list, tuple)) and not dim)


_TAKE_SAMPLE = frozenset({T.select, torch.select, T.unbind, torch.unbind})
_STACK_LIKE = frozenset({torch.stack, torch.vstack, torch.unflatten, T.unflatten})
_UNSQUEEZE = frozenset({T.unsqueeze, torch.unsqueeze})
_EXPAND = frozenset({T.expand, T.expand_as, torch.broadcast_to, T.broadcast_to})


def _moves_sample_dim(func: Callable, args: tuple, kwargs: dict, out: Tensor) -> bool:
    """Whether ``func`` takes one sample out of the batch (``h[i]``, ``h.select(0, i)``, ``h.unbind(0)``) or puts
    another dimension in front (``torch.stack``, ``h[None]``, ``h.unsqueeze(0)``, ``h.expand(2, *h.shape)``): its
    results have no sample dimension at dim 0 even when their first size happens to equal the batch size."""
    h = args[0] if args else None
    if func is T.__getitem__:
        index = args[1] if len(args) > 1 else None
        first = index[0] if isinstance(index, tuple) and index else index
        return first is None or isinstance(first, int) or (isinstance(first, Tensor) and first.dim() == 0)
    if func in _TAKE_SAMPLE:
        return int(_arg(args, kwargs, 1, "dim", 0)) == 0
    if func in _STACK_LIKE:
        return func is torch.vstack or int(_arg(args, kwargs, 1, "dim", 0)) == 0
    if func in _UNSQUEEZE:
        return int(_arg(args, kwargs, 1, "dim")) % out.dim() == 0
    return func in _EXPAND and isinstance(h, Tensor) and out.dim() > h.dim()


# --- nonlinear handlers -----------------------------------------------------------------------------------------


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _finish(cap: Capture, h: Tensor, out: Tensor, inplace: bool) -> Tensor:
    """Return ``out`` (tracked); for in-place calls write it into ``h`` (autograd routes through the copy)."""
    if inplace:
        h.copy_(out)
        out = h
    cap.track(out)
    return out


def _indicator(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``mask`` as 1.0 / 0.0 in ``dtype`` (same strides), through its uint8 view: on CPU a bool-to-float cast is
    about 6x slower than a uint8-to-float one (and ``torch.where`` on the mask 10x slower than a product)."""
    return mask.view(torch.uint8).to(dtype)


def _binary(cap: Capture, func: Callable, args: tuple, kwargs: dict, name: str, shape: tuple[int, ...],
            pre: Callable[[], Tensor], make_out: Callable[[Tensor], Tensor] | None, inplace_target: Tensor | None,
            slope: tuple[Tensor | None, Any] = (None, 0.0), zero_floor: bool = False,
            select: tuple[Tensor, Tensor] | None = None, operands: tuple[Any, ...] = (),
            floor: Tensor | None = None) -> Tensor:
    """Record a two-piece unit whose active piece is ``u > 0`` (``u = pre()``) and return its output: the model's
    own op on a pass at the points themselves, ``make_out(mask)`` on a masked pass (None with ``zero_floor``).

    The rule of the transposed sweep: ``slope = (h, s)`` when the output is ``h`` on the active piece and ``s * h``
    (plus a constant) on the other; ``select = (a, b)`` when it is ``a`` on the active piece and ``b`` on the other
    (``maximum(a, b)``, ``minimum``).
    ``zero_floor``: the op is ``max(u, 0)`` itself (ReLU, clamp(min=0)) with ``u`` the values of ``h``, so the mask
    of a pass at the points themselves is read off the model's own output (``out != 0`` exactly when ``u > 0``,
    a third of the cost of the comparison), and a masked pass (a replay, the autograd graph) computes ``h`` times
    the mask as 1.0 / 0.0, equal to ``make_out(mask)`` up to the sign of zero, and faster.
    ``operands``: the op's input tensors (a paired pass checks that they keep the samples in dim 0).
    ``floor``: the constant output on the other piece when there is one (``clamp(h, min=c)``: c), for B[x].
    """
    forced = cap._next_forced(name, "binary", shape)
    own = not cap.graph and forced is None and cap.half is None  # the model's own op gives the value
    u = None if own and zero_floor and not cap.probe else pre()
    # the model's own tensors are copied: an in-place op (this one or a later one) may overwrite them
    probe = {"u": cap._kept(u, inplace_target is not None) if cap.is_tracked(u) else u} if cap.probe else {}
    if own:
        mask = None if zero_floor else u > 0  # before the op: an in-place op (abs_) overwrites u
        out = cap._run(func, args, kwargs)
        mask = out.bool() if mask is None else mask
    else:
        if forced is not None:
            mask = forced.selector
        elif cap.half is not None:
            mask = cap._paired_code(lambda v: v > 0, u, *operands)
        else:
            mask = u > 0
        out = _masked_output(cap, mask, make_out, inplace_target, slope[0] if zero_floor else None)
    cap.record(Entry(name, "binary", shape, 2, mask, mask, probe))
    if cap.tape is not None and cap.tape.ok:
        _tape_binary(cap, func, mask, out, slope, select, inplace_target, floor, own and zero_floor)
    cap.track(out)
    return out


def _masked_output(cap: Capture, mask: Tensor, make_out: Callable[[Tensor], Tensor] | None,
                   inplace_target: Tensor | None, floored: Tensor | None) -> Tensor:
    """The output of a two-piece unit on a masked pass (a replay, the autograd graph): ``make_out(mask)``, or for
    ``max(h, 0)`` (``floored`` = h) ``h`` times the mask as 1.0 / 0.0, written into the mask's copy on a replay
    (no second temporary); into ``inplace_target`` for an in-place op."""
    if floored is None:
        out = make_out(mask)
        if inplace_target is None:
            return out
        return inplace_target.copy_(out)
    coef = _indicator(mask, floored.dtype)
    if inplace_target is not None:
        return inplace_target.mul_(coef)
    return floored * coef if cap.graph else coef.mul_(floored)  # autograd must not see coef overwritten


def _tape_binary(cap: Capture, func: Callable, mask: Tensor, out: Tensor, slope: tuple[Tensor | None, Any],
                 select: tuple[Tensor, Tensor] | None, inplace_target: Tensor | None, floor: Tensor | None,
                 nonzero: bool = False) -> None:
    """The transpose rule of a two-piece unit: a slope per unit (``scale``) or the selected operand (``select``),
    with the unit's constant term where its piece has one (a constant operand, a clamp's bound), for B[x].
    ``nonzero``: the mask is ``out != 0`` (a ReLU's, read off its output), so that a max-pool of ``out`` can tell
    the mask at its argmax from its own values (:func:`_selected`)."""
    tape = cap.tape
    describe = lambda: f"{_op_name(func)}{cap._where()}"  # noqa: E731 - only called on a switch-off
    if select is not None:
        ins = [(t, take) for t, take in zip(select, (True, False), strict=True) if cap.is_tracked(t)]
        if any(t.dim() != out.dim() for t, _ in ins):
            tape.switch_off(f"the operation {describe()} with operands of different numbers of dimensions "
                            "(broadcast over the sample dimension)")
            return
        data: dict[str, Any] = {"mask": mask, "take": tuple(t for _, t in ins)}
        for t, take in zip(select, (True, False), strict=True):
            if not cap.is_tracked(t):  # maximum(h, c): c where the constant is selected
                data["offset"] = torch.where(mask if take else ~mask, t.detach().to(out.dtype),
                                             torch.zeros((), dtype=out.dtype))
        tape.add(Node("select", tuple(t for t, _ in ins), out, data), describe)
        return
    h, s = slope
    if h.shape != out.shape:
        tape.switch_off(f"the operation {describe()} with a bound that broadcasts its input to a larger shape")
        return
    if isinstance(s, float) and s == 0.0:  # the 0 / 1 factor is made from the mask when the sweep needs it
        data: dict[str, Any] = {"mask": mask, "nonzero": True} if nonzero and floor is None else {"mask": mask}
    else:
        data = {"coef": torch.where(mask, torch.ones((), dtype=h.dtype), torch.as_tensor(s, dtype=h.dtype))}
    if floor is not None:
        data["offset"] = torch.where(mask, torch.zeros((), dtype=h.dtype), floor.to(h.dtype))
    tape.add(Node("scale", (h,), out, data), describe)
    if inplace_target is not None:
        tape.mutated(inplace_target, describe)


def _leaky_slope(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> float:
    """The negative slope of a leaky ReLU; RReLU in eval mode is the leaky ReLU of slope (lower + upper) / 2."""
    if func in _LEAKY:
        return float(_arg(args, kwargs, 1, "negative_slope", 0.01))
    if bool(_arg(args, kwargs, 3, "training", False)):
        raise ValueError(f"rrelu{cap._where()} runs in training mode (a random slope per unit and call), so the "
                         "network is not a fixed function of x; call model.eval() before using cnnlens.spline.")
    return (float(_arg(args, kwargs, 1, "lower", 1.0 / 8)) + float(_arg(args, kwargs, 2, "upper", 1.0 / 3))) / 2


def _relu_like(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    h = _arg(args, kwargs, 0, "input")
    inplace = func in _IN_PLACE or (func in _INPLACE_KW and bool(kwargs.get("inplace", False)))
    if func is F.relu and len(args) > 1:
        inplace = bool(args[1])
    name = cap._layer_name(func)
    make: Callable[[Tensor], Tensor] | None = None  # ReLU: h times the mask (_binary's zero_floor)
    if func in _LEAKY or func in _RRELU:
        slope = _leaky_slope(cap, func, args, kwargs)
        inplace = inplace or (func in _LEAKY and len(args) > 2 and bool(args[2])) or \
            (func in _RRELU and bool(_arg(args, kwargs, 4, "inplace", False)))

        def make(m: Tensor) -> Tensor:
            return torch.where(m, h, h * slope)
    elif func in _PRELU:
        w = _arg(args, kwargs, 1, "weight")
        if cap.is_tracked(w):
            raise cap._error("prelu with an input-dependent weight")
        w = w.detach()  # a constant slope of the map; detached so that no autograd node saves h
        wb = w.reshape(1, -1, *([1] * (h.dim() - 2))) if (w.numel() > 1 and h.dim() >= 2) else w.reshape(())

        def make(m: Tensor) -> Tensor:
            return torch.where(m, h, h * wb)
    elif func in _ABS:

        def make(m: Tensor) -> Tensor:
            return torch.where(m, h, -h)
    if func in _RELU:
        slope: Any = 0.0
    elif func in _LEAKY or func in _RRELU:
        slope = _leaky_slope(cap, func, args, kwargs)
    elif func in _PRELU:
        slope = wb
    else:
        slope = -1.0
    return _binary(cap, func, args, kwargs, name, tuple(h.shape[1:]), lambda: h, make, h if inplace else None,
                   (h, slope), zero_floor=func in _RELU, operands=(h,))


def _clamp_like(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    h = _arg(args, kwargs, 0, "input")
    if func in _HARDTANH:
        if func is F.relu6:
            lo, hi = 0.0, 6.0
            inplace = bool(_arg(args, kwargs, 1, "inplace", False))
        else:
            lo = _arg(args, kwargs, 1, "min_val", -1.0)
            hi = _arg(args, kwargs, 2, "max_val", 1.0)
            inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
    elif func in (torch.clamp_min, T.clamp_min):
        lo, hi, inplace = _arg(args, kwargs, 1, "min"), None, False
    elif func in (torch.clamp_max, T.clamp_max):
        lo, hi, inplace = None, _arg(args, kwargs, 1, "max"), False
    else:
        lo = _arg(args, kwargs, 1, "min")
        hi = _arg(args, kwargs, 2, "max")
        inplace = func in _IN_PLACE
    for bound in (lo, hi):
        if isinstance(bound, Tensor) and cap.is_tracked(bound):
            raise cap._error("clamp with an input-dependent bound")
    if lo is None and hi is None:
        raise ValueError("clamp needs at least one of min and max; received neither.")
    name = cap._layer_name(func)
    target = h if inplace else None
    lo_t = torch.as_tensor(lo, dtype=h.dtype) if lo is not None else None
    hi_t = torch.as_tensor(hi, dtype=h.dtype) if hi is not None else None
    if hi is None or lo is None:
        bound = lo_t if hi is None else hi_t
        try:
            shape = tuple(torch.broadcast_shapes(h.shape, bound.shape)[1:])
        except RuntimeError as err:
            cap._tag(err, func)
            raise
        zero_floor = hi is None and bound.numel() == 1 and bool(bound == 0)
        return _binary(cap, func, args, kwargs, name, shape, (lambda: h - lo_t) if hi is None else (lambda: hi_t - h),
                       None if zero_floor else lambda m: torch.where(m, h, bound), target, (h, 0.0),
                       zero_floor=zero_floor, operands=(h,), floor=None if zero_floor else bound)
    if bool(torch.any(lo_t > hi_t)):
        raise ValueError(f"clamp/hardtanh with min {lo} > max {hi} is constant; cnnlens expects min <= max.")
    shape = tuple(h.shape[1:])
    forced = cap._next_forced(name, "ternary", shape)

    def state_of(v: Tensor) -> Tensor:
        return torch.ones(v.shape, dtype=torch.uint8).masked_fill(v <= lo_t, 0).masked_fill(v >= hi_t, 2)

    if forced is not None:
        state = forced.selector
    elif cap.half is not None:
        if any(b.dim() >= h.dim() and b.shape[0] != 1 for b in (lo_t, hi_t)):  # a bound per sample of the batch
            raise cap._unpairable(f"clamp{cap._where()} has a bound with a sample dimension")
        state = cap._paired_code(state_of, h, h)
    else:
        state = state_of(h)
    probe = {"h": cap._kept(h, inplace), "lo": lo_t, "hi": hi_t} if cap.probe else {}
    cap.record(Entry(name, "ternary", shape, 3, state, state, probe))
    if not cap.graph and forced is None and not cap.probe and cap.half is None:
        out = _finish(cap, h, cap._run(func, args, kwargs), False)
    else:
        out = _finish(cap, h, torch.where(state == 1, h, torch.where(state == 0, lo_t, hi_t).to(h.dtype)), inplace)
    if cap.tape is not None and cap.tape.ok:
        describe = lambda: f"{_op_name(func)}{cap._where()}"  # noqa: E731 - only called on a switch-off
        bounds = torch.where(state == 0, lo_t, torch.where(state == 2, hi_t, 0).to(h.dtype))  # B's share
        cap.tape.add(Node("scale", (h,), out, {"coef": (state == 1).to(h.dtype), "offset": bounds}), describe)
        if inplace:
            cap.tape.mutated(h, describe)
    return out


def _maximum_like(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    a = _arg(args, kwargs, 0, "input")
    b = _arg(args, kwargs, 1, "other")
    if func in _MINMAX_BINARY and not isinstance(b, Tensor):
        return _max_reduction(cap, func, args, kwargs)
    if not isinstance(b, Tensor):
        b = torch.as_tensor(b, dtype=a.dtype)
    is_max = func in _MAXIMUM or func in (torch.max, T.max)
    name = cap._layer_name(func)
    try:
        u = (a - b) if is_max else (b - a)
    except RuntimeError as err:  # operands that do not broadcast: the model's own op fails
        cap._tag(err, func)
        raise
    ab = torch.broadcast_tensors(a, b)
    return _binary(cap, func, args, kwargs, name, tuple(u.shape[1:]), lambda: u,
                   lambda m: torch.where(m, ab[0], ab[1]), None, select=(a, b), operands=(a, b))


def _max_pool(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    d = _MAX_POOL[func]
    h = _arg(args, kwargs, 0, "input")
    k = _ntuple(_arg(args, kwargs, 1, "kernel_size"), d)
    s = _arg(args, kwargs, 2, "stride", None)
    s = k if (s is None or (isinstance(s, (list, tuple)) and len(s) == 0)) else _ntuple(s, d)
    p = _ntuple(_arg(args, kwargs, 3, "padding", 0), d)
    dil = _ntuple(_arg(args, kwargs, 4, "dilation", 1), d)
    ceil_mode = bool(_arg(args, kwargs, 5, "ceil_mode", False))
    return_indices = bool(_arg(args, kwargs, 6, "return_indices", False)) or func in (
        F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices)
    if h.dim() != d + 2:
        raise ValueError(f"max_pool{d}d received an input of shape {tuple(h.shape)}; cnnlens expects a batched "
                         f"input (N, C, {', '.join('L' * d)}) with the sample dimension first.")
    pool = (F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices)[d - 1]
    name = cap._layer_name(func)
    paired = cap.half is not None
    values, idx, native = _pool_with_indices(cap, pool, cap._first_half(h, h) if paired else h,
                                             (k, s, p, dil, ceil_mode))
    shape = tuple(values.shape[1:])
    forced = cap._next_forced(name, "argmax", shape)
    if forced is not None:
        idx, rel = forced.selector, forced.states
    else:
        rel = functools.partial(_window_index, idx, h.shape[2:], values.shape[2:], k, s, p, dil)
        if paired:
            idx, rel = _twice(idx), _twice(rel())
    probe = {"h": cap._kept(h), "windows": functools.partial(pool_windows, k=k, s=s, p=p, dil=dil,
                                                          ceil_mode=ceil_mode)} if cap.probe else {}
    cap.record(Entry(name, "argmax", shape, math.prod(k), rel, idx, probe))
    return _selected(cap, func, h, values, idx, return_indices, forced is not None or paired, native)


#: A paired pass runs a CPU convolution on chunks of samples whose unfolding (the im2col buffer, samples x C_in x
#: prod(kernel) x output positions, which float64 convolutions allocate anew on every call) takes at most this many
#: bytes: a larger buffer leaves the CPU caches and outgrows the allocator's reuse, faulting its pages in on every
#: call. Measured on the small ResNet (16-channel 3x3 convolutions at 32x32, 1.2 MB per sample), float64, 1 thread:
#: a 16-channel convolution costs 0.27-0.32 ms per sample in chunks of 1-8 samples against 0.8-1.0 ms per sample
#: unsplit at 16-64 samples; the whole paired pass at 16 points 6.0 ms per point unsplit, 3.6 in two halves, 3.5 in
#: chunks of 2 MB.
_SPLIT_UNFOLD = 2**21
_CONV_ND = {F.conv1d, F.conv2d, F.conv3d}

#: 2-d max-pooling on CPU runs on a channels-last copy of inputs with at least this many elements: PyTorch's
#: channels-last kernel gives the same values and indices (also on ties) 1.4-4.5x faster than its NCHW kernel, the
#: copies included (measured in float32 and float64, 1 thread: ResNet-18's stem at 224x224 13-14 ms -> 3 ms,
#: LeNet-5 at batch 16 0.46 -> 0.25 ms), and slower below (0.02 -> 0.03 ms at 6x28x28).
_CHANNELS_LAST_POOL = 2**14


def _pool_with_indices(cap: Capture, pool: Callable, h: Tensor, params: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """``pool(h, *params, return_indices=True)``: the values in the layout the model's own call returns, the flat
    per-channel argmax and the values in the layout the kernel computed them in (channels-last kernel:
    :data:`_CHANNELS_LAST_POOL`). The argmax stays in that layout: the sweep scatters in it (the "gather" rule of
    :func:`._transpose._apply`), and a copy to NCHW order costs 0.13 ms at ResNet-18's stem. On a replay only the
    output shape is computed (on the meta device): the recorded argmax selects the values (:func:`_selected`)."""
    if cap.forced is not None:
        values, idx = cap._run(pool, (torch.empty_like(h, device="meta"), *params, True), {})
        return values, idx, values
    if pool is F.max_pool2d_with_indices and h.device.type == "cpu" and h.numel() >= _CHANNELS_LAST_POOL and \
            h.is_contiguous() and not h.is_contiguous(memory_format=torch.channels_last):
        values, idx = cap._run(pool, (h.contiguous(memory_format=torch.channels_last), *params, True), {})
        return values.contiguous(), idx, values
    values, idx = cap._run(pool, (h, *params, True), {})
    return values, idx, values


def _selected(cap: Capture, func: Callable, h: Tensor, values: Tensor, idx: Tensor, return_indices: bool,
              forced: bool, native: Tensor | None = None) -> Any:
    """The values a pooling selects from ``h`` at the flat per-channel indices ``idx`` (max-pool, adaptive
    max-pool), as a gather on the masked graph or on a replay (``forced``, also a paired pass), recorded on the tape;
    with the indices if asked, in the layout the model's own call returns (a copy of the tape's: the model may
    write into it). ``native``: the values in ``idx``'s layout (:func:`_pool_with_indices`)."""
    if cap.graph or forced:
        values = h.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        native = None
    if cap.tape is not None and cap.tape.ok:
        data: dict[str, Any] = {"idx": idx}
        last = cap.tape.nodes[-1] if cap.tape.nodes else None
        if last is not None and "nonzero" in last.data and last.out is cap.tape.shadow(h):
            # a max-pool of a ReLU's output: the ReLU's mask at the argmax is where the maximum is not 0, one
            # comparison on the pooled size instead of a gather (for the sweep's fusion of the two: _fuse), in the
            # argmax's layout
            data["picked"] = (values if native is None else native) != 0
        cap.tape.add(Node("gather", (h,), values, data), lambda: f"{_op_name(func)}{cap._where()}")
    cap.track(values)
    if not return_indices:
        return values
    return values, idx.contiguous() if _is_channels_last(idx) else idx.clone()


def _ntuple(v: Any, d: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(e) for e in v) if len(v) == d else tuple(int(v[0]) for _ in range(d))
    return tuple(int(v) for _ in range(d))


@functools.lru_cache(maxsize=64)
def _window_lut(in_sizes: tuple[int, ...], out_sizes: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...],
                p: tuple[int, ...], dil: tuple[int, ...]) -> tuple[Tensor | None, Tensor] | None:
    """(start, lut): flat index of each window's first element and offset -> window-relative index (cached).

    For non-overlapping windows (stride = kernel, no padding or dilation) every input position lies in one window
    only: ``start`` is None and ``lut`` maps the input position itself to its index within the window.
    """
    d = len(k)
    small = torch.uint8 if math.prod(k) <= 256 else torch.int64
    if s == k and all(v == 0 for v in p) and all(v == 1 for v in dil):
        coords = torch.meshgrid(*[torch.arange(n) % k[i] for i, n in enumerate(in_sizes)], indexing="ij")
        rel = torch.zeros(in_sizes, dtype=torch.int64)
        for i in range(d):
            rel = rel * k[i] + coords[i]
        return None, rel.reshape(-1).to(small)
    strides_in = [math.prod(in_sizes[i + 1:]) for i in range(d)]
    start = torch.zeros((), dtype=torch.int64)
    for i in range(d):
        shape = [1] * (d + 2)
        shape[2 + i] = out_sizes[i]
        start = start + ((torch.arange(out_sizes[i]) * s[i] - p[i]) * strides_in[i]).view(shape)
    grids = torch.meshgrid(*[torch.arange(k[i]) * dil[i] for i in range(d)], indexing="ij")
    offsets = sum(g.reshape(-1) * strides_in[i] for i, g in enumerate(grids))
    if not all(dil[i] * (k[i] - 1) < in_sizes[i] for i in range(d)) or offsets.unique().numel() != offsets.numel():
        return None
    lut = torch.zeros(int(offsets.max()) + 1, dtype=small)
    lut[offsets] = torch.arange(offsets.numel()).to(small)
    return start, lut


def _window_index(idx: Tensor, in_sizes: tuple[int, ...], out_sizes: tuple[int, ...], k: tuple[int, ...],
                  s: tuple[int, ...], p: tuple[int, ...], dil: tuple[int, ...]) -> Tensor:
    """Convert PyTorch's flat per-channel max-pool index into the row-major index within the pooling window.

    ``idx - start`` (start = flat index of the window's first element) takes one distinct value per window element
    whenever the window span fits in the input, so a cached lookup table does the conversion in two operations.
    """
    d = len(k)
    table = _window_lut(tuple(in_sizes), tuple(out_sizes), k, s, p, dil)
    if table is not None:
        start, lut = table
        flat = idx.reshape(-1) if start is None else (idx - start).reshape(-1)
        return lut.gather(0, flat).view(idx.shape)
    strides_in = [math.prod(in_sizes[i + 1:]) for i in range(d)]
    rel = torch.zeros_like(idx)  # windows wider than the input (large padding): per-dimension arithmetic
    rem = idx
    for i in range(d):
        coord = torch.div(rem, strides_in[i], rounding_mode="floor")
        rem = rem - coord * strides_in[i]
        shape = [1] * idx.dim()
        shape[2 + i] = out_sizes[i]
        first = (torch.arange(out_sizes[i]) * s[i] - p[i]).view(shape)
        rel = rel * k[i] + torch.div(coord - first, dil[i], rounding_mode="floor")
    return rel


def _small_states(code: Tensor, num_states: int) -> Tensor:
    return code.to(torch.uint8 if num_states <= 256 else torch.int64)


def _select(cap: Capture, func: Callable, h: Tensor, windows: Windows, code_of: Callable[[Tensor], Tensor], *,
            out_shape: tuple[int, ...], num_states: int, kind: str = "argmax", sign: float = 1.0,
            out: Tensor | None = None, indices: Tensor | None = None, op: str | None = None,
            ranks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Record a layer of selection units and return (values, indices): every output is one element of its window.

    ``windows`` gives the windows (:mod:`._windows`) and ``code_of(sign * h)`` the window-relative index of the
    selected element of every output, the region code: the argmax (kind "argmax", first index on ties) or the
    element of rank ``ranks`` in the stable descending order (kind "rank"). ``sign = -1`` turns a minimum (an
    ascending order) into a maximum of ``-h``. The values are ``h`` gathered at the selected positions (the masked
    linear network of Prop. 3 of 000), or ``out``, the model's own result, on a plain forward pass (the same
    numbers). ``indices`` are the op's own returned indices: they are returned unchanged (and replayed with the
    region), so that a model reading them computes what it computes without the capture, also where PyTorch's tie
    rule differs from the code's.
    """
    name = cap._layer_name(func, op)
    signed = h if sign > 0 else -h
    forced = cap._next_forced(name, kind, out_shape)
    if forced is not None:
        code, indices = forced.selector
    elif cap.half is not None:
        with torch.no_grad():
            code = cap._paired_code(code_of, signed, h)
        if indices is not None:  # the op's own indices of the first half, as a replay returns the recorded ones
            indices = _twice(cap._first_half(indices))
    else:
        with torch.no_grad():
            code = code_of(signed)
    probe: dict[str, Any] = {}
    if cap.probe:
        probe = {"h": cap._kept(signed), "windows": windows}
        if ranks is not None:
            probe["ranks"] = ranks
    cap.record(Entry(name, kind, out_shape, num_states, _small_states(code, num_states), (code, indices), probe))
    tape = cap.tape is not None and cap.tape.ok
    linear = cap.graph or forced is not None or out is None or cap.half is not None
    if linear or tape:
        src = selected_positions(windows, tuple(h.shape[1:]), code)
    values = h.flatten(1).gather(1, src.flatten(1)).view(h.shape[0], *out_shape) if linear else out
    if tape:
        cap.tape.add(Node("take", (h,), values, {"src": src}), lambda: f"{_op_name(func)}{cap._where()}")
    cap.track(values)
    return values, indices


def _reduced_dims(cap: Capture, func: Callable, h: Tensor, dim: Any) -> tuple[int, ...]:
    """The reduced dimensions, sorted, non-negative; raise when they include the sample dimension."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        dims: tuple[int, ...] = tuple(range(h.dim()))
    else:
        dims = tuple(sorted({int(d) % h.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])}))
    if 0 in dims:
        raise ValueError(f"{_op_name(func)}{cap._where()} reduces over the sample dimension (dim 0), so each "
                         "output depends on several samples of the batch; cnnlens computes one affine map per "
                         "sample: reduce over the dimensions after the first (e.g. dim=(1, 2, 3)).")
    return dims


def _max_reduction(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``amax`` / ``amin`` over dimensions and ``max(x, dim)`` / ``min(x, dim)`` (values and indices).

    A max over dimensions is a max-pooling with one window per output (Prop. 3 of 000): the code is the row-major
    index of the maximum over the reduced dimensions (in increasing order), the first one on ties, as
    :func:`torch.max` returns it.
    """
    h = _arg(args, kwargs, 0, "input")
    is_max = func in _REDUCE_MAX or func in (torch.max, T.max)
    ref = cap._run(func, args, kwargs)  # the model's own op: its errors, and its values on a plain forward pass
    dim = _arg(args, kwargs, 1, "dim", () if func in _REDUCE_MAX or func in _REDUCE_MIN else None)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    dims = _reduced_dims(cap, func, h, dim)
    windows = functools.partial(reduction_windows, dims=dims, keepdim=keepdim)
    pair = not (func in _REDUCE_MAX or func in _REDUCE_MIN)
    values = ref[0] if pair else ref
    op = ("max" if is_max else "min") if pair else None
    out, indices = _select(cap, func, h, windows, lambda v: windows(v).argmax(-1),
                           out_shape=tuple(values.shape[1:]), num_states=math.prod(h.shape[i] for i in dims),
                           sign=1.0 if is_max else -1.0, out=values, indices=ref[1] if pair else None, op=op)
    if not pair:
        return out
    return (torch.return_types.max if is_max else torch.return_types.min)((out, indices))


def _adaptive_max_pool(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Adaptive max-pooling: max-pooling over PyTorch's adaptive windows (Prop. 3 of 000).

    Output cell j of a dimension of size L -> O pools ``[floor(j L / O), ceil((j + 1) L / O))``; windows differ in
    size, so the code is the row-major index within the box of the largest window size per dimension (the first
    maximum on ties, as PyTorch returns it).
    """
    d = _ADAPTIVE_MAX_POOL[func]
    h = _arg(args, kwargs, 0, "input")
    if h.dim() != d + 2:
        raise ValueError(f"adaptive_max_pool{d}d received an input of shape {tuple(h.shape)}; cnnlens expects a "
                         f"batched input (N, C, {', '.join('L' * d)}) with the sample dimension first.")
    size = _arg(args, kwargs, 1, "output_size")
    return_indices = func is torch.adaptive_max_pool1d or "with_indices" in getattr(func, "__name__", "") or \
        bool(_arg(args, kwargs, 2, "return_indices", False))
    pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[d - 1]
    name = cap._layer_name(func)
    paired = cap.half is not None
    values, idx = cap._run(pool, (cap._first_half(h, h) if paired else h, size), {"return_indices": True})
    out_sizes, in_sizes = tuple(values.shape[2:]), tuple(h.shape[2:])
    shape = tuple(values.shape[1:])
    forced = cap._next_forced(name, "argmax", shape)
    if forced is not None:
        idx = forced.selector
    elif paired:
        idx = _twice(idx)
    kmax = adaptive_layout(in_sizes, out_sizes)[3]
    code = adaptive_code(idx, in_sizes, out_sizes)
    probe = {"h": cap._kept(h), "windows": functools.partial(adaptive_windows, out_sizes=out_sizes)} \
        if cap.probe else {}
    cap.record(Entry(name, "argmax", shape, math.prod(kmax), _small_states(code, math.prod(kmax)), idx, probe))
    return _selected(cap, func, h, values, idx, return_indices, forced is not None or paired)


def _running_max(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``cummax`` / ``cummin``: output i is the max (min) of inputs 0..i along ``dim``, a max-pooling over prefix
    windows. The code is the first index of the maximum; the returned indices are PyTorch's (its kernel returns the
    last index on ties; the values are the same)."""
    h = _arg(args, kwargs, 0, "input")
    is_max = getattr(func, "__name__", "") == "cummax"
    ref = cap._run(func, args, kwargs)
    (d,) = _reduced_dims(cap, func, h, _arg(args, kwargs, 1, "dim"))
    windows = functools.partial(prefix_windows, dim=d)
    out, indices = _select(cap, func, h, windows, lambda v: windows(v, fill=-math.inf).argmax(-1),
                           out_shape=tuple(h.shape[1:]), num_states=h.shape[d], sign=1.0 if is_max else -1.0,
                           out=ref[0], indices=ref[1])
    return (torch.return_types.cummax if is_max else torch.return_types.cummin)((out, indices))


def _order_statistic(cap: Capture, func: Callable, args: tuple, kwargs: dict) -> Any:  # noqa: C901 - one per op
    """Values of ``sort``, ``msort``, ``topk``, ``kthvalue``, ``median`` and ``nanmedian`` along one dimension.

    Each output is the element of a given rank in its fiber, so within a region (a fixed order of the fiber) it is a
    selection, affine in x. The code of every output is the index of its element in the fiber for the *stable*
    order: equal values keep their index order, so on ties the lower index comes first (the values and the returned
    indices are PyTorch's; its indices may differ from the code on ties). ``topk(sorted=False)`` returns its
    elements in an order PyTorch does not specify; it is accepted when that order is the sorted one.
    """
    h = _arg(args, kwargs, 0, "input")
    op = getattr(func, "__name__", "")
    ref = cap._run(func, args, kwargs)
    if op == "msort":
        dim, descending, count, keep = 0, False, None, True
    elif op == "sort":
        dim = _arg(args, kwargs, 1, "dim", -1)
        descending = bool(_arg(args, kwargs, 2, "descending", False))
        count, keep = None, True
    elif op == "topk":
        k = int(_arg(args, kwargs, 1, "k"))
        dim = _arg(args, kwargs, 2, "dim", -1)
        descending = bool(_arg(args, kwargs, 3, "largest", True))
        count, keep = k, True
    else:  # kthvalue, median, nanmedian
        if op == "kthvalue":
            k = int(_arg(args, kwargs, 1, "k"))
            dim, keepdim = _arg(args, kwargs, 2, "dim", -1), bool(_arg(args, kwargs, 3, "keepdim", False))
        else:
            dim, keepdim = _arg(args, kwargs, 1, "dim", None), bool(_arg(args, kwargs, 2, "keepdim", False))
        descending, count, keep = False, 1, keepdim
    (d,) = _reduced_dims(cap, func, h, dim)
    size = h.shape[d]
    if op in ("median", "nanmedian"):
        first = (size - 1) // 2  # the lower median
    elif op == "kthvalue":
        first = k - 1
    else:
        first = 0
    count = size if count is None else count
    rank = torch.arange(first, first + count)
    windows = functools.partial(fiber_windows, dim=d, count=count, keep=keep)

    def code_of(v: Tensor) -> Tensor:
        order = torch.sort(v.movedim(d, -1), dim=-1, descending=True, stable=True).indices[..., rank]
        return order.movedim(-1, d) if keep else order.squeeze(-1)

    values = ref[0] if isinstance(ref, tuple) else ref
    shape = tuple(values.shape[1:])
    ranks = rank.view([-1 if i == d else 1 for i in range(h.dim())][1:]) if keep else rank.reshape(())
    out, indices = _select(cap, func, h, windows, code_of, out_shape=shape, num_states=size, kind="rank",
                           sign=1.0 if descending else -1.0, out=values,
                           indices=ref[1] if isinstance(ref, tuple) else None, ranks=ranks.expand(shape))
    first = slice(cap.half)  # a paired pass: the second half takes the first half's order, not its own
    if op == "topk" and not bool(_arg(args, kwargs, 4, "sorted", True)) and not torch.equal(out[first], values[first]):
        raise ValueError(f"topk(sorted=False){cap._where()} returned its elements in an unspecified order; pass "
                         "sorted=True, so that cnnlens records the order the model uses.")
    if op == "msort":
        return out
    return getattr(torch.return_types, op)((out, indices))


def _elementwise(cap: Capture, func: Callable, rule: ElementwisePiecewise, args: tuple, kwargs: dict) -> Any:
    """An :class:`ElementwisePiecewise` op: the piece index of every unit is its region code (eq. 14 of 000).

    On a plain forward pass the op runs itself (checked against the pieces when ``rule.verify``); otherwise its
    value is ``slope[piece] * h + offset[piece]``, the masked linear network of the region.
    """
    h = _arg(args, kwargs, 0, "input")
    name = _op_name(func)
    if not isinstance(h, Tensor) or not cap.is_tracked(h) or \
            any(t is not h and cap.is_tracked(t) for t in _tensors(args, kwargs)):
        raise cap._error(f"operation {name} with an input-dependent argument other than its first",
                         "its rule (ElementwisePiecewise) declares a piecewise-affine function of the first argument "
                         "with fixed parameters")
    pieces = rule.pieces(*args, **kwargs)
    if not isinstance(pieces, Pieces):
        raise TypeError(f"the pieces function of {name} returned {type(pieces).__name__}; it must return a "
                        "cnnlens.spline.Pieces.")
    inplace = getattr(func, "__name__", "").endswith("_") or \
        (rule.inplace is not None and bool(_arg(args, kwargs, rule.inplace, "inplace", False)))
    layer = cap._layer_name(func)
    shape = tuple(h.shape[1:])
    forced = cap._next_forced(layer, "piecewise", shape)
    if forced is not None:
        code = forced.selector
    else:
        code = cap._paired_code(pieces.code, h, h) if cap.half is not None else pieces.code(h)
    slope, offset = pieces.coefficients(code, h.dtype)
    probe = {"h": cap._kept(h, inplace), "pieces": pieces} if cap.probe else {}
    cap.record(Entry(layer, "piecewise", shape, pieces.num_pieces, _small_states(code, pieces.num_pieces), code,
                     probe))
    if not cap.graph and forced is None and cap.half is None:
        expected = h * slope + offset if rule.verify else None
        out = cap._run(func, args, kwargs)
        if expected is not None:
            _verify_pieces(cap, name, out, expected)
        cap.track(out)
    else:
        out = h * slope + offset
        if cap.half is not None and rule.verify:  # the first half is the recording: check the rule there
            _verify_pieces(cap, name, cap._first_half(cap._run(func, args, kwargs)), out[:cap.half])
        out = _finish(cap, h, out, inplace)
    if cap.tape is not None and cap.tape.ok:
        describe = lambda: f"{name}{cap._where()}"  # noqa: E731 - only called on a switch-off
        data = {"coef": slope}
        if isinstance(offset, Tensor) and bool((offset != 0).any()):
            data["offset"] = offset  # the pieces' constant terms: B's share
        elif not isinstance(offset, Tensor) and offset != 0:
            data["offset"] = torch.as_tensor(offset, dtype=h.dtype)
        cap.tape.add(Node("scale", (h,), out, data), describe)
        if inplace:
            cap.tape.mutated(h, describe)
    return out


def _verify_pieces(cap: Capture, name: str, out: Any, expected: Tensor) -> None:
    """Raise when a registered ElementwisePiecewise rule does not reproduce the op's own output."""
    if not isinstance(out, Tensor) or out.shape != expected.shape:
        raise ValueError(f"{name}{cap._where()} returned {type(out).__name__} of shape "
                         f"{tuple(getattr(out, 'shape', ()))}, but its ElementwisePiecewise rule describes an "
                         f"elementwise function of its first argument (shape {tuple(expected.shape)}).")
    eps = torch.finfo(expected.dtype).eps
    diff = (out - expected).abs()
    bound = 1e3 * eps * (1 + expected.abs().amax())
    if bool((diff > bound).any()):
        worst = int(diff.argmax())
        raise ValueError(f"the pieces registered for {name}{cap._where()} do not reproduce its output: "
                         f"{float(out.flatten()[worst])} from the op against {float(expected.flatten()[worst])} from "
                         "the pieces (max difference "
                         f"{float(diff.max()):.3g}); check the breakpoints, slopes, offsets and ties of its "
                         "ElementwisePiecewise rule.")


_NONLINEAR_HANDLERS: dict[Callable, Callable[[Capture, Callable, tuple, dict], Any]] = {}
for _f in _RELU | _LEAKY | _RRELU | _PRELU | _ABS:
    _NONLINEAR_HANDLERS[_f] = _relu_like
for _f in _HARDTANH | _CLAMP:
    _NONLINEAR_HANDLERS[_f] = _clamp_like
for _f in _MAXIMUM | _MINIMUM | _MINMAX_BINARY:
    _NONLINEAR_HANDLERS[_f] = _maximum_like
for _f in _MAX_POOL:
    _NONLINEAR_HANDLERS[_f] = _max_pool
for _f in _ADAPTIVE_MAX_POOL:
    _NONLINEAR_HANDLERS[_f] = _adaptive_max_pool
for _f in _REDUCE_MAX | _REDUCE_MIN:
    _NONLINEAR_HANDLERS[_f] = _max_reduction
for _f in _RUNNING:
    _NONLINEAR_HANDLERS[_f] = _running_max
for _f in _ORDER:
    _NONLINEAR_HANDLERS[_f] = _order_statistic


def _register_tables() -> None:
    """Enter the built-in groups above into the op-rule registry (:mod:`._ops`)."""
    groups: list[tuple[set[Callable], Any]] = [
        (_LINEAR_ALL | _QUOTIENT | set(_ADD_PRODUCT), Linear("all")), (_PRODUCT, Linear("one")),
        (_INPUT_ONLY | _DROPOUT, Linear("first")), (_DISCRETE, Builtin("discrete")),
        (_CONSTANT_LIKE, Builtin("constant")),
    ]
    for funcs, rule in groups:
        for f in funcs:
            register_builtin(f, rule)
    for f, handler in _NONLINEAR_HANDLERS.items():
        register_builtin(f, Builtin("handler", handler))


_register_tables()


# --- entry points -----------------------------------------------------------------------------------------------


def check_model_input(model: Callable[[Tensor], Tensor], x: Any, what: str = "x") -> list[tuple[str, nn.Module]]:
    """Validate a batch for the spline functions: a finite floating tensor (N, *in_shape), model in eval mode.
    Returns the model's named modules (none for a plain function), which :func:`capture` may take (``named``)
    instead of walking them again."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, *in_shape); received {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor; received dtype {x.dtype}. Convert with "
                        f"{what}.float() (or .double() for float64 exactness checks).")
    if x.dim() < 2:
        raise ValueError(f"{what} must be a batch of shape (N, *in_shape) with the sample dimension first; received "
                         f"shape {tuple(x.shape)}. Add a batch dimension with {what}.unsqueeze(0).")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {tuple(x.shape)}); pass at least one sample.")
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):  # a finite sum: all finite
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} NaN or infinite values; the affine map and the regions are only "
                         "defined for finite inputs. Clean the data (e.g. torch.nan_to_num) first.")
    named = list(model.named_modules()) if isinstance(model, nn.Module) else []
    _check_eager(model, named)
    if isinstance(model, nn.Module):
        for _, mod in named:
            if _kind_of(type(mod)).training_sensitive and mod.training:
                raise ValueError(f"{_path_of(model, mod)} ({type(mod).__name__}) is in training mode, where it "
                                 "depends on the batch or on random masks; call model.eval() before using "
                                 "cnnlens.spline.")
        param = next((p for _, mod in named for p in mod._parameters.values()  # model.parameters(), one walk
                      if p is not None and p.is_floating_point()), None)
        if param is not None and param.dtype != x.dtype:
            raise TypeError(f"{what} has dtype {x.dtype} but the model's parameters are {param.dtype}; convert "
                            f"one of them (e.g. model.to({x.dtype}) or {what}.to({param.dtype})).")
    return named


_EAGER_HINT = ("TorchScript code runs in C++, where the capture cannot see its operations (its affine map would "
               "read as 0). Pass the eager nn.Module (the one given to torch.jit.script or torch.jit.trace).")


def _check_eager(model: Callable[[Tensor], Tensor], named: list[tuple[str, nn.Module]] | None = None) -> None:
    """Refuse TorchScript (``torch.jit.script`` / ``torch.jit.trace``: a ScriptFunction, a ScriptModule, or a module
    holding one as a submodule or attribute) and ``torch.compile``'d modules; ``named``: the model's named modules,
    when the caller has walked them."""
    if isinstance(model, torch.jit.ScriptFunction):
        raise TypeError(f"the model is a TorchScript function ({getattr(model, 'name', 'scripted')}). {_EAGER_HINT}")
    if not isinstance(model, nn.Module):
        return
    dynamo = sys.modules.get("torch._dynamo.eval_frame")  # imported once torch.compile has been called
    compiled = getattr(dynamo, "OptimizedModule", ())
    for _, mod in named if named is not None else model.named_modules():
        if compiled and isinstance(mod, compiled):
            raise TypeError(f"{_path_of(model, mod)} was compiled with torch.compile: a compiled graph reruns the "
                            "operations without the Python code that records them, so the capture cannot follow it. "
                            "Pass the eager module (the compiled module's ._orig_mod).")
        kind = _kind_of(type(mod))
        if kind.script:
            raise TypeError(f"{_path_of(model, mod)} is a TorchScript module ({type(mod).__name__}, from "
                            f"torch.jit.script or torch.jit.trace). {_EAGER_HINT}")
        if kind.torch_forward:  # torch's own layers call none of their attributes
            continue
        for name, value in vars(mod).items():
            if isinstance(value, torch.jit.ScriptFunction):
                raise TypeError(f"{_path_of(model, mod)} holds a TorchScript function in its attribute '{name}'. "
                                f"{_EAGER_HINT}")


class _Kind(NamedTuple):
    """What the checks of a capture need to know of a module class (:func:`_kind_of`)."""

    torch_forward: bool  # its forward is one of torch's own (a built-in layer, or a container)
    script: bool  # a TorchScript module
    training_sensitive: bool  # it depends on the batch or on random masks in training mode


@functools.lru_cache(maxsize=4096)
def _kind_of(cls: type) -> _Kind:
    """The :class:`_Kind` of a module class, read once per class (the checks run on every call)."""
    return _Kind(getattr(_forward_of(cls), "__module__", "torch.").startswith("torch."),
                 issubclass(cls, torch.jit.ScriptModule), issubclass(cls, _TRAINING_SENSITIVE))


@functools.lru_cache(maxsize=4096)
def _forward_of(cls: type) -> Any:
    """The ``forward`` function a module class defines or inherits (read off the class dictionaries: on
    TorchScript classes the attribute itself is a descriptor that fails)."""
    return next((k.__dict__["forward"] for k in cls.__mro__ if "forward" in k.__dict__), None)


def _path_of(model: nn.Module, mod: nn.Module) -> str:
    """``module 'path'`` of one of the model's modules, for an error message."""
    path = next((p for p, m in model.named_modules() if m is mod), "")
    return f"module '{path or '<root>'}'"


@contextmanager
def capture(model: Callable[[Tensor], Tensor], *, graph: bool = False, approximate: bool = False,
            probe: bool = False, forced: list[Entry] | None = None, decisions: list[tuple[Callable, Any]] | None = None,
            paired: bool = False, shared_probes: bool = False, cap: Capture | None = None,
            named: list[tuple[str, nn.Module]] | None = None) -> Iterator[Capture]:
    """Context manager that records the forward passes run inside it (the mode is popped on exit, also on errors).

    ``forced`` and ``decisions`` (the ``entries`` and ``decisions`` of a recorded capture) make it a replay: every
    nonlinearity takes the recorded piece and every value read off a tracked tensor is the recorded one.
    ``paired=True`` makes the pass a recording of its first half and a replay of those pieces on its second half
    (module docstring); its entries hold both halves. ``shared_probes=True`` keeps the probes by reference
    instead of copying them (:meth:`Capture.probes_intact` then tells whether the model overwrote one in place).
    ``named``: the model's named modules when the caller has them (:func:`check_model_input` returns them).
    """
    cap = cap if cap is not None else Capture(graph=graph, approximate=approximate, probe=probe, forced=forced,
                                              decisions=decisions, paired=paired, shared_probes=shared_probes)
    mods = None
    if isinstance(model, nn.Module):
        named = named or list(model.named_modules())
        cap.paths = {id(mod): path for path, mod in named}
        mods = [mod for _, mod in named]
    if cap.tape is not None:  # the model's own tensors: known constants (one weak reference each)
        refs = {id(t): weakref.ref(t) for t in _constants_of(model, modules=mods)}
        cap._known.update(refs)
        cap._held.update(refs)
    with cap:
        yield cap


#: Arguments that carry no values of x into a constant (numbers, shapes, dtypes, devices, ...): a numpy array or
#: any other object may (``torch.from_numpy`` is not even seen by the mode).
_PLAIN = (bool, int, float, complex, str, slice, torch.dtype, torch.device, torch.layout, torch.memory_format,
          torch.Size)
_RANDOM = frozenset({"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli",
                     "bernoulli_", "normal", "normal_", "uniform_", "random_", "exponential_", "geometric_", "cauchy_",
                     "log_normal_", "poisson", "multinomial"})
#: Random only in training mode, with the position of their ``training`` argument and its default.
_RANDOM_IN_TRAINING = {"dropout": (2, True), "dropout1d": (2, True), "dropout2d": (2, True), "dropout3d": (2, True),
                       "alpha_dropout": (2, False), "feature_alpha_dropout": (2, False), "rrelu": (3, False),
                       "rrelu_": (3, False)}


def _is_random(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether ``func`` draws random numbers (``torch.rand``, ``F.dropout`` in training mode, ...)."""
    name = getattr(func, "__name__", "")
    if name in _RANDOM:
        return True
    if name in _RANDOM_IN_TRAINING:
        pos, default = _RANDOM_IN_TRAINING[name]
        return bool(_arg(args, kwargs, pos, "training", default))
    return False


def _constants_of(model: Any, depth: int = 0, modules: list[nn.Module] | None = None) -> list[Tensor]:
    """The tensors a model holds: the parameters and buffers of its modules, the tensor attributes of the modules
    whose forward is not torch's own (torch's layers read only their parameters and buffers; a tensor set on one of
    them and read by another module's code is not known here, so B is replayed rather than swept: still exact),
    also of the modules and tensors a plain function closes over (or a bound method's module, a
    ``functools.partial``'s arguments). ``modules``: the model's modules, when the caller has walked them."""
    if isinstance(model, Tensor):
        return [model]
    if isinstance(model, nn.Module):
        mods = modules if modules is not None else list(model.modules())
        found = [t for mod in mods for table in (mod._parameters, mod._buffers) for t in table.values()
                 if isinstance(t, Tensor)]
        own = [mod for mod in mods if not _kind_of(type(mod)).torch_forward]
        found += [t for mod in own for t in vars(mod).values() if isinstance(t, Tensor)]
        if depth <= 2:
            for forward in {_forward_of(type(mod)) for mod in own}:  # torch's forwards close over no tensors
                found += _constants_of(forward, depth + 1)
        return found
    if depth > 2:
        return []
    found = []
    parts: list[Any] = [getattr(model, "__self__", None), getattr(model, "func", None)]
    code, names = getattr(model, "__code__", None), getattr(model, "__globals__", None)
    if code is not None and isinstance(names, dict):  # the modules and tensors a function names as globals
        parts += [names[k] for k in code.co_names if isinstance(names.get(k), (Tensor, nn.Module))]
    parts += list(getattr(model, "args", ()) or ()) if isinstance(model, functools.partial) else []
    parts += list((getattr(model, "keywords", None) or {}).values()) if isinstance(model, functools.partial) else []
    for cell in getattr(model, "__closure__", None) or ():
        try:
            parts.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    for part in parts:
        if isinstance(part, (list, tuple)):
            for item in part:
                found += _constants_of(item, depth + 1)
        elif part is not None:
            found += _constants_of(part, depth + 1)
    return found


def _list_names(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


@contextmanager
def module_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Record the outputs of the submodules ``names`` (paths of ``model.named_modules()``) of the forward passes run
    inside the ``with`` block: the yielded dict maps each name to its module's output of the latest pass (a tensor,
    or the tuple a module such as an i-RevNet block returns). Works for any network (not only piecewise-affine ones)
    and inside ``torch.func`` transforms; the hooks are removed on exit, also on errors.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module`` (or is TorchScript / compiled: the hooks would not see its modules).
    ValueError
        A name that is not a submodule (the message lists the available ones), or a module that runs more than
        once in one forward pass (its output would be ambiguous: name one of the modules it calls).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"layer outputs are read from an nn.Module's submodules; received {type(model).__name__}.")
    _check_eager(model)
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    available = [n for n in modules if n]
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise ValueError(f"no submodule named {', '.join(repr(n) for n in unknown)} in {type(model).__name__}; its "
                         f"submodules are {_list_names(available)} (names as in model.named_modules()).")
    outputs: dict[str, Any] = {}
    calls: dict[str, int] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ValueError(f"module {name!r} ({type(module).__name__}) runs more than once in one forward pass, "
                                 "so its output is ambiguous; name a module that runs once (one of its callers or "
                                 "a copy per call site).")
            outputs[name] = output
        return hook

    def reset(module: nn.Module, inputs: Any) -> None:
        calls.clear()

    handles = [model.register_forward_pre_hook(reset)]
    try:
        handles += [modules[n].register_forward_hook(hook_for(n)) for n in dict.fromkeys(names)]
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def run_captured(cap: Capture, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Run ``model(x)`` inside an active capture; return the output flattened to (N, C)."""
    cap.track(x)
    cap.batch = x.shape[0]
    if cap.paired:
        if x.shape[0] % 2:
            raise ValueError(f"a paired pass takes a batch of two halves [x; x']; received {x.shape[0]} samples.")
        cap.half = x.shape[0] // 2
    cap._mark(cap._samples, [x])
    try:
        out = model(x)
    except _Unsupported as err:
        raise NotPiecewiseAffineError(str(err)) from None
    except UnpairableError:
        raise
    except RuntimeError as err:
        failed = getattr(err, _FAILED_OP, None)
        if failed is None:  # not the model's own op failing on x (replay divergence, memory, a bug): as it is
            raise
        raise ValueError(f"the model could not be evaluated on an input of shape {tuple(x.shape)}: {failed} "
                         f"failed ({str(err).strip().rstrip('.')}). Pass a batch (N, *in_shape) shaped like the "
                         "model's training inputs.") from err
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return one tensor of shape (N, C); it returned {type(out).__name__}. Wrap "
                        "it so that forward returns the class scores (before softmax).")
    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for a batch of {x.shape[0]} samples; cnnlens "
                         "expects outputs (N, C) with the sample dimension first.")
    if cap._pooled and cap._is(out, cap._pooled):
        raise ValueError("the model's output is computed from a reduction over all samples of the batch (x.sum(), "
                         f"x.mean(), ... without dim), so it mixes the samples of the batch. {_PER_SAMPLE_HINT}")
    if cap.unpairable:  # raised inside the model, which caught it
        raise UnpairableError(f"the pass cannot be paired: {cap.unpairable}")
    return out.reshape(out.shape[0], -1)
