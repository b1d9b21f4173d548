"""The op-rule registry: what cnnlens knows about every operation a model may apply to an input-dependent tensor.

The capture of :mod:`._capture` looks up each operation applied to an input-dependent ("tracked") tensor here and
treats it by its rule. A rule says what the operation *is*:

* :class:`Linear`: affine in its input-dependent tensor arguments (a reshuffle, a sum, a convolution, a product
  with a constant, ...), so it is a fixed linear map plus a constant (Prop. 1 of 000);
* :class:`ElementwisePiecewise`: an elementwise piecewise-affine function of its first argument, given by
  breakpoints and one (slope, offset) per piece (:class:`Pieces`); its region code (eq. 14 of 000) is the piece
  index of every unit;
* :class:`Composite`: equal to a function written with operations cnnlens knows (its regions are theirs);
* :class:`NotPiecewiseAffine`: not piecewise affine, with the reason (raised as
  :class:`cnnlens.NotPiecewiseAffineError`, or linearised when ``approximate=True``).

The max-affine built-ins (ReLU-like units, clamps, max-pooling, max/min reductions, adaptive max-pooling, running
maxima, sort/top-k/k-th value/median) have dedicated rules inside the capture; the elementwise built-ins Hardsigmoid,
Hardshrink, Softshrink and Threshold, and the smooth ops that are rejected with a reason, are registered at the end of
this module through the same public :func:`register_op` that users call for their own operations.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

__all__ = ["Composite", "ElementwisePiecewise", "Linear", "NotPiecewiseAffine", "OpRule", "Pieces", "op_rule",
           "register_op", "unregister_op"]


class OpRule:
    """Base class of the rules of the registry (see the module docstring)."""


@dataclass(frozen=True)
class Linear(OpRule):
    """The operation is affine in its input-dependent tensor arguments (Prop. 1 of 000).

    ``inputs`` says which arguments may depend on the input:

    * ``"all"``: jointly affine in all of them (``add``, ``cat``, ``gather``, ``cumsum``, ``unfold``, ...);
    * ``"one"``: affine in each argument with the others fixed (``mul``, ``matmul``, ``einsum``, ``kron``): at most
      one argument may depend on the input, otherwise the op is a product of two input-dependent tensors (raises);
    * ``"first"``: only the first argument (``conv2d``, ``linear``: weights and statistics must be constants).

    The engine takes the op's vector-Jacobian product with :func:`torch.func.vjp` at zeros (an affine op has the same
    one everywhere), or, for a custom :class:`torch.autograd.Function`, its ``backward`` through autograd: the
    derivative the op defines must be its true derivative.
    """

    inputs: str = "all"

    def __post_init__(self) -> None:
        if self.inputs not in ("all", "one", "first"):
            raise ValueError(f"Linear(inputs=...) must be 'all', 'one' or 'first'; received {self.inputs!r}.")


_TIES = ("left", "right")


@dataclass(frozen=True)
class Pieces:
    """An elementwise piecewise-affine function ``f(h) = slopes[r] * h + offsets[r]`` on piece r.

    Piece r is the interval between ``breakpoints[r - 1]`` and ``breakpoints[r]`` (``-inf`` / ``+inf`` at the ends),
    so there is one more slope and offset than breakpoints. ``ties`` says, per breakpoint (or one value for all),
    which piece a unit exactly at the breakpoint belongs to: ``"left"`` (the lower piece, the default: ReLU(0) is
    inactive) or ``"right"``. The choice matters for discontinuous functions (Hardshrink, Threshold), whose value at
    the breakpoint belongs to one side; for continuous ones it picks the slope used at the breakpoint.

    Breakpoints must be non-decreasing; each entry of ``breakpoints``, ``slopes`` and ``offsets`` is a number or a
    tensor broadcastable to the unit shape (per-channel parameters: shape (C, 1, 1) for a (C, H, W) input).
    """

    breakpoints: Sequence[float | Tensor]
    slopes: Sequence[float | Tensor]
    offsets: Sequence[float | Tensor]
    ties: str | Sequence[str] = "left"

    def __post_init__(self) -> None:
        object.__setattr__(self, "breakpoints", tuple(self.breakpoints))
        object.__setattr__(self, "slopes", tuple(self.slopes))
        object.__setattr__(self, "offsets", tuple(self.offsets))
        ties = (self.ties,) * len(self.breakpoints) if isinstance(self.ties, str) else tuple(self.ties)
        object.__setattr__(self, "ties", ties)
        r = len(self.breakpoints) + 1
        if len(self.slopes) != r or len(self.offsets) != r:
            raise ValueError(f"Pieces with {r - 1} breakpoints need {r} slopes and {r} offsets; received "
                             f"{len(self.slopes)} slopes and {len(self.offsets)} offsets.")
        if len(ties) != r - 1 or any(t not in _TIES for t in ties):
            raise ValueError(f"Pieces ties must be 'left' or 'right' (one value, or one per breakpoint); received "
                             f"{self.ties!r} for {r - 1} breakpoints.")
        for lo, hi in zip(self.breakpoints[:-1], self.breakpoints[1:], strict=True):
            if bool(torch.any(torch.as_tensor(lo) > torch.as_tensor(hi))):
                raise ValueError(f"Pieces breakpoints must be non-decreasing; received {self.breakpoints}.")

    @property
    def num_pieces(self) -> int:
        """R = number of breakpoints + 1."""
        return len(self.breakpoints) + 1

    def code(self, h: Tensor) -> Tensor:
        """The piece index of every unit of ``h`` (int64, shape of ``h``): the region code of eq. 14 of 000."""
        code = torch.zeros(h.shape, dtype=torch.int64)
        for b, tie in zip(self.breakpoints, self.ties, strict=True):
            b = torch.as_tensor(b, dtype=h.dtype)
            code += (h > b) if tie == "left" else (h >= b)
        return code

    @staticmethod
    def _stacked(values: Sequence[float | Tensor], code: Tensor, dtype: torch.dtype) -> Tensor:
        """``values[code]`` per unit (values: numbers, or tensors broadcastable to the unit shape)."""
        if all(not isinstance(v, Tensor) or v.numel() == 1 for v in values):
            return torch.tensor([float(v) for v in values], dtype=dtype)[code]
        table = torch.stack([torch.as_tensor(v, dtype=dtype).detach().expand(code.shape) for v in values])
        return table.gather(0, code.unsqueeze(0)).squeeze(0)

    def coefficients(self, code: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(slope, offset) of every unit's piece ``code``, each shaped like ``code``."""
        return self._stacked(self.slopes, code, dtype), self._stacked(self.offsets, code, dtype)

    def bounds(self, code: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(lower, upper) breakpoint of every unit's piece ``code`` (-inf / +inf beyond the outer ones)."""
        ends = (-math.inf, *self.breakpoints, math.inf)
        return self._stacked(ends[:-1], code, dtype), self._stacked(ends[1:], code, dtype)

    def __call__(self, h: Tensor) -> Tensor:
        """``f(h)``, evaluated piece by piece with the tie rule."""
        slope, offset = self.coefficients(self.code(h), h.dtype)
        return h * slope + offset

    def continuous(self) -> bool:
        """Whether the function is continuous (adjacent pieces agree at every breakpoint)."""
        for r, b in enumerate(self.breakpoints):
            b = torch.as_tensor(b, dtype=torch.float64)
            left = torch.as_tensor(self.slopes[r], dtype=torch.float64) * b + torch.as_tensor(self.offsets[r],
                                                                                                dtype=torch.float64)
            right = torch.as_tensor(self.slopes[r + 1], dtype=torch.float64) * b + \
                torch.as_tensor(self.offsets[r + 1], dtype=torch.float64)
            if not bool(torch.allclose(left, right, rtol=1e-12, atol=1e-12)):
                return False
        return True


@dataclass(frozen=True)
class ElementwisePiecewise(OpRule):
    """The operation applies an elementwise piecewise-affine function to its first argument.

    ``pieces`` is called with the operation's own arguments (``pieces(*args, **kwargs)``, the input first) and
    returns the :class:`Pieces` of the function, so parameters such as a threshold are read off each call. The
    region code of eq. 14 of 000 is the piece index of every unit (kind ``"piecewise"`` in
    :func:`cnnlens.spline.partition_codes`); :func:`cnnlens.spline.activations` returns the input ``h`` and the
    pieces, and :func:`cnnlens.spline.regions_on_segment` stops exactly at the breakpoints.

    The other arguments must not depend on the input. ``inplace``: position of a boolean ``inplace`` argument
    (also read by keyword; names ending in ``_`` are in place anyway). ``verify``: on every plain forward pass,
    check that the pieces reproduce the op's own output (raises ValueError naming the op when they do not).
    """

    pieces: Callable[..., Pieces]
    inplace: int | None = None
    verify: bool = True


@dataclass(frozen=True)
class Composite(OpRule):
    """The operation equals ``fn(*args, **kwargs)``, written with operations cnnlens knows.

    The capture runs ``fn`` instead of the op (its ``backward`` is never used), so the op is exact and its regions
    (eq. 14 of 000) are those of the nonlinearities inside ``fn``, which appear in the partition codes under their
    own names. ``fn`` must not call the op itself (that would recurse).
    """

    fn: Callable[..., Any]


@dataclass(frozen=True)
class NotPiecewiseAffine(OpRule):
    """The operation is not piecewise affine; ``reason`` says why (shown in the error)."""

    reason: str


@dataclass(frozen=True)
class Builtin(OpRule):
    """A rule implemented inside the capture: ``kind`` is "handler" (a max-affine op, with ``handler``),
    "discrete" (a piecewise-constant result: masks, indices) or "constant" (never depends on the input values)."""

    kind: str
    handler: Callable[..., Any] | None = None


_RULES: dict[Any, OpRule] = {}
_BUILTIN: dict[Any, OpRule] = {}  # rules replaced by a user registration, restored by unregister_op
_USER: set[Any] = set()
_FUNCTIONS: dict[type, tuple[Callable[..., Any], bool, Any]] = {}  # Function class -> (apply wrapper, own, old)


def rule_of(func: Any) -> OpRule | None:
    """The rule of ``func`` as the capture sees it (one dict lookup)."""
    try:
        return _RULES.get(func)
    except TypeError:  # an unhashable callable
        return None


def register_builtin(func: Any, rule: OpRule) -> None:
    """Register a rule of cnnlens itself (no checks; a later user registration may replace it)."""
    _RULES[func] = rule


def _overridable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` made visible to a :class:`torch.overrides.TorchFunctionMode` (``handle_torch_function``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        relevant = (*args, *kwargs.values())
        if relevant and has_torch_function(relevant):
            return handle_torch_function(wrapper, relevant, *args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _keys(op: Any) -> list[Any]:
    """The callables the capture sees for ``op`` (a torch.library custom op is seen as its overloads)."""
    opoverload = getattr(op, "_opoverload", None)  # torch.library.custom_op
    if opoverload is not None:
        return [opoverload, opoverload.overloadpacket]
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [op, *(getattr(op, name) for name in op.overloads())]
    return [op]


def _reaches_mode(op: Any) -> bool:
    """Whether calls to ``op`` are seen by a TorchFunctionMode as they are (torch's own functions and ops)."""
    if getattr(op, "_opoverload", None) is not None or isinstance(op, (torch._ops.OpOverload,
                                                                       torch._ops.OpOverloadPacket)):
        return True
    if isinstance(op, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
        return True  # torch.amax, torch.Tensor.add, torch.Tensor.__add__, ...
    return inspect.isfunction(op) and ((getattr(op, "__module__", "") or "").startswith("torch") or
                                       getattr(op, "_cnnlens_overridable", False))


def _is_plain_python(op: Any) -> bool:
    """A Python function outside torch: calls to it do not reach a TorchFunctionMode unless wrapped."""
    return inspect.isfunction(op) and not (getattr(op, "__module__", "") or "").startswith("torch") and \
        getattr(op, "_cnnlens_overridable", False) is False


def register_op(op: Any = None, rule: OpRule | None = None, *, replace: bool = False) -> Any:
    """Tell cnnlens what an operation is: :class:`Linear`, :class:`ElementwisePiecewise`, :class:`Composite` or
    :class:`NotPiecewiseAffine` (module docstring). Returns the operation to call in the model.

    What ``op`` may be:

    * a torch function, Tensor method or ``torch.ops`` operator (including a ``torch.library.custom_op``): calls reach
      the capture as they are; ``op`` is returned;
    * a subclass of :class:`torch.autograd.Function`: ``Function.apply`` does not reach a
      :class:`~torch.overrides.TorchFunctionMode` (the mode only sees the ops inside ``forward``), so
      ``register_op`` replaces the class's ``apply`` by one that dispatches through
      :func:`torch.overrides.handle_torch_function` first (outside a capture it calls the original ``apply``
      unchanged); the class is returned. ``unregister_op`` restores the original ``apply``. Calls made through
      a reference taken before registering (``f = MyFunction.apply`` at import time) still reach the original;
    * any other Python function: calls to it are invisible to the capture, so a wrapper that dispatches through
      :func:`~torch.overrides.handle_torch_function` is returned and registered: the model must call the returned
      function (use ``register_op(rule=...)`` as a decorator).

    With a rule the capture never looks inside the op (for :class:`ElementwisePiecewise` and :class:`Composite`
    it never uses its ``backward`` either). What is supported: the op's first tensor argument (ElementwisePiecewise)
    or its arguments as declared by ``Linear(inputs=...)`` may depend on the input; other input-dependent arguments
    raise :class:`cnnlens.NotPiecewiseAffineError`. The segment walk runs the capture in forward-mode AD, so a
    ``Linear`` custom Function needs a ``jvp`` (or register it as ``Composite`` / ``ElementwisePiecewise``).

    Parameters
    ----------
    op : callable, torch.autograd.Function subclass or custom op
        The operation. Omit it to use ``register_op(rule=...)`` as a decorator.
    rule : OpRule
        What the op is.
    replace : bool
        Allow replacing an existing rule (cnnlens' own or an earlier registration).

    Examples
    --------
    A hinge written with comparisons, which cnnlens cannot read (the mask ``x > 1`` depends on the input), and the
    same op declared by its pieces (slope 0 below 0, 1 up to 1, 2 above):

    >>> import torch
    >>> from torch import nn
    >>> from cnnlens import NotPiecewiseAffineError
    >>> from cnnlens.spline import ElementwisePiecewise, Pieces, affine_map, partition_codes, register_op
    >>> def hinge(x):
    ...     return torch.where(x > 1, 2 * x - 1, torch.where(x > 0, x, torch.zeros_like(x)))
    >>> class Net(nn.Module):
    ...     def __init__(self, act):
    ...         super().__init__()
    ...         self.fc1, self.fc2, self.act = nn.Linear(3, 4), nn.Linear(4, 2), act
    ...     def forward(self, x):
    ...         return self.fc2(self.act(self.fc1(x)))
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> try:
    ...     affine_map(Net(hinge).double(), x)
    ... except NotPiecewiseAffineError as err:
    ...     print("rejected:", "input-dependent mask" in str(err))
    rejected: True
    >>> hinge_op = register_op(hinge, ElementwisePiecewise(
    ...     lambda x: Pieces(breakpoints=[0.0, 1.0], slopes=[0.0, 1.0, 2.0], offsets=[0.0, 0.0, -1.0])))
    >>> net = Net(hinge_op).double()
    >>> A, B = affine_map(net, x)
    >>> bool(torch.allclose(torch.einsum("ncd,nd->nc", A, x) + B, net(x)))
    True
    >>> code = partition_codes(net, x)["hinge_0"]
    >>> code.kind, code.num_states
    ('piecewise', 3)
    """
    if op is None:
        if rule is None:
            raise TypeError("register_op needs a rule: register_op(op, rule) or @register_op(rule=...).")
        return lambda fn: register_op(fn, rule, replace=replace)
    if not isinstance(rule, OpRule) or isinstance(rule, Builtin):
        raise TypeError(f"rule must be a Linear, ElementwisePiecewise, Composite or NotPiecewiseAffine instance; "
                        f"received {rule!r}.")
    if isinstance(op, type) and issubclass(op, torch.autograd.Function):
        return _register_function(op, rule, replace)
    if not _reaches_mode(op) and not _is_plain_python(op):
        raise TypeError(f"cannot register {_name(op)} ({type(op).__name__}): calls to it would not reach the capture. "
                        "Register a torch function or Tensor method, a torch.ops / torch.library custom op, a "
                        "torch.autograd.Function subclass, or a plain Python function (then call the function "
                        "register_op returns).")
    if _is_plain_python(op):
        wrapper = _overridable(op)
        wrapper._cnnlens_overridable = True  # type: ignore[attr-defined]
        _store(wrapper, rule, replace)
        return wrapper
    for key in _keys(op):
        _store(key, rule, replace)
    return op


def _store(key: Any, rule: OpRule, replace: bool) -> None:
    old = _RULES.get(key)
    if old is not None and not replace:
        raise ValueError(f"{_name(key)} already has a rule ({type(old).__name__}); pass replace=True to replace it.")
    if old is not None and key not in _USER:
        _BUILTIN[key] = old
    _RULES[key] = rule
    _USER.add(key)


def _register_function(cls: type, rule: OpRule, replace: bool) -> type:
    if cls in _FUNCTIONS:
        wrapper = _FUNCTIONS[cls][0]
        _store(wrapper, rule, replace)
        return cls
    own = "apply" in cls.__dict__
    old = cls.__dict__.get("apply")
    original = cls.apply
    wrapper = _overridable(original)
    wrapper.__name__ = wrapper.__qualname__ = cls.__name__
    wrapper._cnnlens_function = cls  # type: ignore[attr-defined]
    _store(wrapper, rule, replace)
    cls.apply = staticmethod(wrapper)  # type: ignore[method-assign]
    _FUNCTIONS[cls] = (wrapper, own, old)
    return cls


def unregister_op(op: Any) -> None:
    """Remove a rule registered with :func:`register_op` (cnnlens' own rule, if one was replaced, comes back).

    ``op`` is what was registered or what :func:`register_op` returned; a Function class gets its original
    ``apply`` back.
    """
    if isinstance(op, type) and op in _FUNCTIONS:
        wrapper, own, old = _FUNCTIONS.pop(op)
        if own:
            op.apply = old  # type: ignore[method-assign]
        else:
            del op.apply
        keys = [wrapper]
    else:
        keys = _keys(op)
    if not any(k in _USER for k in keys):
        raise ValueError(f"{_name(op)} has no rule registered with register_op.")
    for key in keys:
        _USER.discard(key)
        if key in _BUILTIN:
            _RULES[key] = _BUILTIN.pop(key)
        else:
            _RULES.pop(key, None)


def op_rule(op: Any) -> OpRule | None:
    """The rule cnnlens applies to ``op`` (a built-in one or a registered one), or None when it has none."""
    if isinstance(op, type) and op in _FUNCTIONS:
        return _RULES.get(_FUNCTIONS[op][0])
    for key in _keys(op):
        rule = rule_of(key)
        if rule is not None:
            return rule
    return None


def _name(op: Any) -> str:
    return getattr(op, "__qualname__", None) or getattr(op, "__name__", None) or repr(op)


# --- built-in elementwise rules, through the public mechanism ---------------------------------------------------

def _hardsigmoid(input: Tensor, inplace: bool = False) -> Pieces:  # noqa: A002 - torch's argument name
    """relu6(h + 3) / 6: 0 below -3, h / 6 + 1/2 up to 3, 1 above (constant pieces win ties, like torch's
    derivative, which is 0 at -3 and 3)."""
    return Pieces((-3.0, 3.0), (0.0, 1.0 / 6.0, 0.0), (0.0, 0.5, 1.0), ties=("left", "right"))


def _hardshrink(input: Tensor, lambd: float = 0.5) -> Pieces:  # noqa: A002
    """h where |h| > lambd, else 0: the zero piece owns both breakpoints (torch's value there is 0)."""
    lambd = float(lambd)
    if lambd < 0:  # h > lambd or h < -lambd holds everywhere: the identity
        return Pieces((), (1.0,), (0.0,))
    return Pieces((-lambd, lambd), (1.0, 0.0, 1.0), (0.0, 0.0, 0.0), ties=("right", "left"))


def _softshrink(input: Tensor, lambd: float = 0.5) -> Pieces:  # noqa: A002
    """h + lambd below -lambd, 0 in between, h - lambd above (torch's derivative is 0 at +-lambd)."""
    lambd = float(lambd)
    if lambd < 0:
        raise ValueError(f"softshrink needs lambd >= 0; received {lambd}.")
    return Pieces((-lambd, lambd), (1.0, 0.0, 1.0), (lambd, 0.0, -lambd), ties=("right", "left"))


def _threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Pieces:  # noqa: A002
    """h where h > threshold, else value (the constant piece owns the breakpoint)."""
    return Pieces((float(threshold),), (0.0, 1.0), (float(value), 0.0), ties="left")


_ELEMENTWISE: dict[Callable[..., Any], tuple[Callable[..., Pieces], int | None]] = {
    F.hardsigmoid: (_hardsigmoid, 1), F.hardshrink: (_hardshrink, None), torch.hardshrink: (_hardshrink, None),
    torch.Tensor.hardshrink: (_hardshrink, None), F.softshrink: (_softshrink, None), F.threshold: (_threshold, 3),
    F.threshold_: (_threshold, None), torch.threshold: (_threshold, None), torch.threshold_: (_threshold, None),
}  # (F.hardshrink is torch.hardshrink: the dict keeps one entry per callable)
for _f, (_pieces, _pos) in _ELEMENTWISE.items():
    register_op(_f, ElementwisePiecewise(_pieces, inplace=_pos, verify=False))
_USER.clear()  # cnnlens' own rules: replaceable (replace=True), not removable


# --- operations that are not piecewise affine, with the reason ---------------------------------------------------

_CURVED = "it is smooth and curved (its second derivative is not zero), so no region of the input has an affine piece"
_REASONS: dict[str, tuple[Callable[..., Any], ...]] = {
    _CURVED: (torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.tanh, torch.Tensor.tanh, F.tanh, torch.exp,
              torch.Tensor.exp, torch.exp2, torch.expm1, torch.log, torch.Tensor.log, torch.log2, torch.log10,
              torch.log1p, torch.sqrt, torch.Tensor.sqrt, torch.rsqrt, torch.reciprocal, torch.sin, torch.cos,
              torch.tan, torch.atan, torch.asin, torch.acos, torch.sinh, torch.cosh, torch.asinh, torch.atanh,
              torch.erf, torch.erfc, torch.special.erf, F.logsigmoid, F.softsign, F.tanhshrink, torch.logit,
              torch.special.expit),
    "it is a smooth curved activation (a sigmoid-weighted or exponential curve with no affine piece)":
        (F.gelu, F.silu, F.mish, F.softplus),
    "it is exponential for negative inputs (affine only for positive ones), so it is curved on half of every unit's "
    "range": (F.elu, F.elu_, F.selu, F.celu, torch.selu, torch.celu),
    "hardswish(h) = h * relu6(h + 3) / 6 is the quadratic h (h + 3) / 6 on [-3, 3] (the input times a piece of "
    "itself), so it is piecewise quadratic, not piecewise affine": (F.hardswish,),
    "softmax divides exponentials of the inputs by their sum: smooth and curved":
        (F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax,
         F.softmin, torch.logsumexp, torch.Tensor.logsumexp, F.gumbel_softmax),
    "it divides by a statistic of the input itself (its standard deviation or norm), which is not affine":
        (F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.normalize, F.rms_norm),
    "GLU multiplies one half of the input by the sigmoid of the other half (a product of input-dependent tensors)":
        (F.glu,),
    "it multiplies entries of the input together (a product, not affine)":
        (torch.prod, torch.Tensor.prod, torch.cumprod, torch.Tensor.cumprod),
    "it is a power or a square of the input (curved)": (torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
                                                        torch.Tensor.__rpow__, torch.square, torch.Tensor.square,
                                                        torch.float_power),
    "it divides by the input (1 / h is curved)": (torch.Tensor.__rtruediv__, torch.Tensor.reciprocal),
    "variance and standard deviation are quadratic (and square roots) in the input":
        (torch.var, torch.Tensor.var, torch.std, torch.Tensor.std, torch.var_mean, torch.std_mean),
}
for _reason, _funcs in _REASONS.items():
    for _f in _funcs:
        if _f is not None:
            register_builtin(_f, NotPiecewiseAffine(_reason))
