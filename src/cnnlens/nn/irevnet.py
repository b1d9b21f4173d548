"""The i-RevNet of 001 (ch. 6, eq. 39, Figs. 16-17): an invertible deep network and its exact inverse.

Structure (Fig. 16 of 001). The splitting operator S~ maps the image to the pair (x_0, x~_0) (the two halves of the
channels of an invertible space-to-depth, zero channels appended for the injective variant (a) of sec. 6.3.2);
then J blocks

    x_{j+1} = S_{j+1} x~_j,      x~_{j+1} = S_{j+1} x_j + F_{j+1} x~_j                         (eq. 39 of 001)

with the bottleneck F_j (BN-ReLU-conv 1x1, BN-ReLU-conv 3x3, BN-ReLU-conv 1x1; the middle convolutions have four
times fewer channels, sec. 6.3.2) and S_j the invertible down-sampling of Fig. 17 or the identity. Eq. 39 writes
``x_j + F x~_j``; at a down-sampling block x_j must be carried to the lower resolution too, so it passes through the
same S_{j+1} (S_{j+1} = identity elsewhere, where both forms agree; the authors' code does the same). F then reduces
the resolution itself (stride of its 3x3 convolution) and outputs the channels of S_{j+1} x_j. The merge M~
concatenates (x_J, x~_J) into Phi(x); the classifier averages Phi over space, applies a ReLU and a linear map.

The inverse (eq. 39, right) replaces (S_j, F_j) by (S_j^-1, -F_j) in reverse order:
x~_j = S_{j+1}^-1 x_{j+1}, x_j = S_{j+1}^-1 (x~_{j+1} - F_{j+1} x~_j), then applies S~^+ (the left inverse of the
injective S~: it drops the appended channels).

Channel order of the down-sampling (Fig. 17). S with factor k is the inverse of the sub-pixel shuffle of Shi et al.
(``torch.nn.functional.pixel_unshuffle``): output channel ``c * k**2 + i * k + j`` at (h, w) holds input channel c at
(k*h + i, k*w + j). Each output pixel gathers one k x k neighbourhood, so the spatial ordering is kept.

Memory saving (sec. 6.3.2: "our scheme also allows avoiding storing any intermediate activations at training time"):
with ``memory_saving=True`` the block stack runs inside one autograd Function that stores only Phi and the input of
the first block (two layers, whatever the depth); the backward pass rebuilds each block's input from its output with
eq. 39 (right) and re-evaluates F there, replaying the random state of the forward pass (dropout) and leaving the
batch-norm running statistics as the forward pass left them (they are updated once per step).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F  # noqa: N812 (torch's convention)

from .models import SmallResNet, register_model

__all__ = [
    "Bottleneck",
    "IRevBlock",
    "IRevNet",
    "InvertibleDownsampling",
    "SplittingOperator",
    "comparable_resnet",
    "depth_to_space",
    "irevnet",
    "space_to_depth",
]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; received {value!r}")
    return value


def _check_divisible(x: torch.Tensor, factor: int, part: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{part} expects a batch of images (N, C, H, W); got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        sizes = ", ".join(str(factor * m) for m in range(max(1, min(h, w) // factor - 1), min(h, w) // factor + 3))
        raise ValueError(
            f"{part} down-samples by {factor}: the height and width must be multiples of {factor} (e.g. {sizes}); "
            f"got {h}x{w}. Crop or pad the images, or change the down-sampling factors."
        )


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The invertible down-sampling S of Fig. 17 of 001: (N, C, H, W) -> (N, C k^2, H/k, W/k), ``k = factor``.

    Output channel ``c * k**2 + i * k + j`` at pixel (h, w) is input channel c at (k h + i, k w + j): the inverse of
    the sub-pixel shuffle, which keeps the spatial ordering. A permutation of the coefficients (an isometry).
    """
    _check_divisible(x, factor, "space_to_depth")
    return x if factor == 1 else F.pixel_unshuffle(x, factor)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse of :func:`space_to_depth`: (N, C k^2, H, W) -> (N, C, k H, k W) (the sub-pixel shuffle)."""
    if x.ndim != 4 or x.shape[1] % (factor * factor):
        raise ValueError(f"depth_to_space with factor {factor} needs (N, C, H, W) with C a multiple of "
                         f"{factor * factor}; got shape {tuple(x.shape)}")
    return x if factor == 1 else F.pixel_shuffle(x, factor)


class InvertibleDownsampling(nn.Module):
    """S_j of eq. 39 and Fig. 17 of 001: :func:`space_to_depth` by ``factor`` (``factor=1``: the identity)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = _positive_int("the down-sampling factor", factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.factor)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return depth_to_space(y, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class SplittingOperator(nn.Module):
    """S~ of Fig. 16 of 001: space-to-depth by ``factor``, then zero channels appended up to ``out_channels``.

    ``out_channels == in_channels * factor**2``: bijective (model (b) of sec. 6.3.2, S~^+ = S~^-1); more: injective
    (model (a): 48 channels padded to 96), and :meth:`inverse` is the left inverse S~^+ = S~^T, which drops the
    appended channels (the orthogonal projection onto the range of S~, then its inverse). The output is split into
    two halves of the channels, so ``out_channels`` must be even.
    """

    def __init__(self, in_channels: int, factor: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.factor = _positive_int("the splitting operator's factor (init_stride)", factor)
        self.real_channels = in_channels * factor * factor
        self.out_channels = self.real_channels if out_channels is None else out_channels
        if isinstance(self.out_channels, bool) or not isinstance(self.out_channels, int):
            raise ValueError(f"init_channels must be an int or None; received {out_channels!r}")
        if self.out_channels < self.real_channels or self.out_channels % 2:
            low = self.real_channels + self.real_channels % 2
            hint = (f"{self.real_channels} (bijective) or any even number above it (injective)"
                    if self.real_channels % 2 == 0 else
                    f"an even init_channels >= {low} (injective), or an even init_stride (bijective)")
            raise ValueError(
                f"the splitting operator S~ gives {in_channels} x {factor}^2 = {self.real_channels} channels and the "
                f"blocks split its output into two equal halves; init_channels={self.out_channels} does not work. "
                f"Use {hint}.")

    @property
    def bijective(self) -> bool:
        return self.out_channels == self.real_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"IRevNet expects images (N, {self.in_channels}, H, W); got shape {tuple(x.shape)}")
        y = space_to_depth(x, self.factor)
        return F.pad(y, (0, 0, 0, 0, 0, self.out_channels - self.real_channels)) if not self.bijective else y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return depth_to_space(y[:, : self.real_channels], self.factor)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, factor={self.factor}, out_channels={self.out_channels}"


class Bottleneck(nn.Sequential):
    """F_j of sec. 6.3.2 of 001: three convolutions (kernels 1x1, 3x3, 1x1), each preceded by BN and ReLU.

    ``in_channels -> middle -> middle -> out_channels`` with ``middle = max(1, out_channels // mult)`` (four times
    fewer at ``mult=4``); the 3x3 convolution carries the down-sampling ``stride`` so that the output matches
    S_j x_j. ``dropout`` (after the middle convolution, as in the authors' code) is off by default.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 kernels: Sequence[int] = (1, 3, 1), mult: float = 4, dropout: float = 0.0) -> None:
        middle = max(1, int(out_channels // mult))
        widths = [in_channels, middle, middle, out_channels]
        layers: list[nn.Module] = []
        for i, k in enumerate(kernels):
            layers += [nn.BatchNorm2d(widths[i]), nn.ReLU(),
                       nn.Conv2d(widths[i], widths[i + 1], k, stride=stride if i == 1 else 1, padding=k // 2,
                                 bias=False)]
            if i == 1 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class IRevBlock(nn.Module):
    """One block of eq. 39 of 001: (x, x~) -> (S x~, S x + F x~); :meth:`inverse` undoes it exactly."""

    def __init__(self, channels: int, stride: int = 1, **bottleneck: Any) -> None:
        super().__init__()
        self.channels = channels  # of each half, at the input
        self.down = InvertibleDownsampling(stride)
        self.residual = Bottleneck(channels, channels * stride * stride, stride, **bottleneck)

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.down(xt), self.down(x) + self.residual(xt)

    def inverse(self, y: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xt = self.down.inverse(y)
        return self.down.inverse(yt - self.residual(xt)), xt


@contextmanager
def _frozen_batch_norm(module: nn.Module) -> Iterator[None]:
    """Batch norm inside ``module`` normalises as usual but its running statistics end as they began."""
    saved = [(m, [b.clone() for b in m.buffers()]) for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for b, old in zip(m.buffers(), buffers, strict=True):
                    b.copy_(old)


def _stochastic(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in block.modules())


@contextmanager
def _replayed_rng(state: tuple[torch.Tensor, list[torch.Tensor]] | None, devices: list[torch.device]
                  ) -> Iterator[None]:
    """Run with the random state ``state`` of the forward pass; the global state is restored afterwards."""
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(devices, state[1], strict=True):
            torch.cuda.set_rng_state(cuda_state, device)
        yield


def _split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = z.shape[1] // 2
    return z[:, :half], z[:, half:]


class _ReversibleStack(torch.autograd.Function):
    """The block stack of eq. 39 without stored activations: forward keeps only its input and output Phi (and the
    random state before each block); backward rebuilds each block's input from its output and re-evaluates F there.

    The first block's input is kept rather than rebuilt: in the injective variant half of it is exactly zero, and
    batch norm in train mode would blow the rounding error of a rebuilt zero up (it divides by a batch deviation).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, blocks: nn.ModuleList, *params: torch.Tensor) -> torch.Tensor:
        ctx.blocks, ctx.rng, ctx.devices = blocks, [], [z.device] if z.device.type == "cuda" else []
        x, xt = _split(z)
        with torch.no_grad():
            for block in blocks:  # the random state is kept only where F draws random numbers (dropout)
                ctx.rng.append((torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in ctx.devices])
                               if _stochastic(block) else None)
                x, xt = block(x, xt)
            phi = torch.cat((x, xt), 1)
        ctx.save_for_backward(z, phi)  # z: the exact input of block 1 (the zero half of S~ (a) is not rebuilt)
        return phi

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_phi: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, phi = ctx.saved_tensors
        y, yt = _split(phi)
        g, gt = _split(grad_phi)
        grads: dict[int, torch.Tensor | None] = {}
        for index in reversed(range(len(ctx.blocks))):
            block, state, down = ctx.blocks[index], ctx.rng[index], ctx.blocks[index].down
            xt = down.inverse(y) if index else _split(z)[1]
            params = [p for p in block.parameters() if p.requires_grad]
            with torch.enable_grad(), _replayed_rng(state, ctx.devices), _frozen_batch_norm(block):
                leaf = xt.detach().requires_grad_()
                f = block.residual(leaf)
                g_leaf, *g_params = torch.autograd.grad(f, [leaf, *params], gt, allow_unused=True)
            x = down.inverse(yt - f.detach())
            grads.update((id(p), gp) for p, gp in zip(params, g_params, strict=True))
            g, gt = down.inverse(gt), down.inverse(g) + (0 if g_leaf is None else g_leaf)
            y, yt = x, xt
        params_in = [p for block in ctx.blocks for p in block.parameters() if p.requires_grad]
        return (torch.cat((g, gt), 1), None, *(grads.get(id(p)) for p in params_in))


class IRevNet(nn.Module):
    """The i-RevNet of 001 (eq. 39, Fig. 16, sec. 6.3.2); ``forward`` gives (logits, Phi(x)), ``inverse(Phi)`` x.

    Parameters
    ----------
    in_channels, num_classes : image channels and classes.
    blocks : blocks per stage; the first block of stage s applies S_j with factor ``strides[s]`` (1: identity).
    strides : down-sampling factor of each stage (Fig. 17: 2). Each factor k multiplies the channels of each half
        by k^2, so the layer size is kept (bijective) or stays that of S~'s output (injective).
    init_stride : factor of the splitting operator S~ (its space-to-depth).
    init_channels : channels after S~; ``None`` (= in_channels * init_stride^2) is bijective (model (b)); more
        appends zero channels: injective (model (a)), and :meth:`inverse` is the left inverse.
    kernels : kernel sizes of the three convolutions of F (1, 3, 1 in sec. 6.3.2).
    mult : the middle convolutions of F have ``out // mult`` channels (at least 1); 4 in sec. 6.3.2.
    dropout : dropout rate inside F (0: none).
    memory_saving : recompute the blocks' activations in the backward pass instead of storing them (sec. 6.3.2);
        ``False`` uses ordinary autograd. Gradients are the same. First-order only (no double backward); under
        ``torch.func`` transforms (jvp, vjp, jacrev, vmap) the blocks run with ordinary autograd.
    return_phi : ``forward`` returns (logits, Phi); ``False`` returns the logits only (what ``cnnlens.train.fit``,
        ``evaluate`` and the model registry expect). :meth:`phi` and :meth:`classify` give the two parts apart.

    Input height and width must be multiples of ``init_stride * prod(strides)`` (:attr:`downsampling`).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, blocks: Sequence[int] = (3, 3),
                 strides: Sequence[int] = (1, 2), init_stride: int = 2, init_channels: int | None = None,
                 kernels: Sequence[int] = (1, 3, 1), mult: float = 4, dropout: float = 0.0,
                 memory_saving: bool = True, return_phi: bool = True) -> None:
        super().__init__()
        blocks, strides, kernels = tuple(blocks), tuple(strides), tuple(kernels)
        if len(blocks) != len(strides) or not blocks:
            raise ValueError(f"blocks (per stage) and strides (per stage) must be non-empty and of equal length; "
                             f"received blocks={blocks}, strides={strides}")
        for name, values in (("blocks", blocks), ("strides", strides), ("kernels", kernels)):
            for v in values:
                _positive_int(f"every entry of {name}", v)
        if len(kernels) != 3 or any(k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be three odd kernel sizes (1, 3, 1 in sec. 6.3.2); received {kernels}")
        if not 0 <= dropout < 1 or (isinstance(mult, bool) or not isinstance(mult, int | float) or mult <= 0):
            raise ValueError(f"dropout must be in [0, 1) and mult > 0; received dropout={dropout!r}, mult={mult!r}")
        self.in_channels, self.num_classes = _positive_int("in_channels", in_channels), num_classes
        self.memory_saving, self.return_phi = memory_saving, return_phi
        self.split = SplittingOperator(in_channels, init_stride, init_channels)
        self.downsampling = init_stride
        half = self.split.out_channels // 2
        stack: list[IRevBlock] = []
        for count, stride in zip(blocks, strides, strict=True):
            for i in range(count):
                s = stride if i == 0 else 1
                stack.append(IRevBlock(half, s, kernels=kernels, mult=mult, dropout=dropout))
                half *= s * s
            self.downsampling *= stride
        self.blocks = nn.ModuleList(stack)
        self.phi_channels = 2 * half
        self.linear = nn.Linear(self.phi_channels, _positive_int("num_classes", num_classes))

    @classmethod
    def imagenet_a(cls, **overrides: Any) -> IRevNet:
        """Model (a) of sec. 6.3.2 of 001 (injective): S~ down-samples by 4 (3 -> 48 channels) and pads to 96;
        18 blocks (4, 4, 6, 4) with S_j at blocks 5, 9, 15 (layers 3j = 15, 27, 45), halves of 48, 192, 768,
        3072 channels at 56^2, 28^2, 14^2, 7^2 for 224^2 inputs, 1000 classes."""
        config: dict[str, Any] = dict(in_channels=3, num_classes=1000, blocks=(4, 4, 6, 4), strides=(1, 2, 2, 2),
                                      init_stride=4, init_channels=96)
        return cls(**{**config, **overrides})

    @classmethod
    def imagenet_b(cls, **overrides: Any) -> IRevNet:
        """Model (b) of sec. 6.3.2 of 001 (bijective): S~ down-samples by 2 (3 -> 12 channels); 100 blocks
        (6, 16, 72, 6) with S_j at blocks 1, 7, 23, 95 (layers 3j = 3, 21, 69, 285), halves of 24, 96, 384, 1536
        channels, every layer of size 3 x 224^2, 1000 classes."""
        config: dict[str, Any] = dict(in_channels=3, num_classes=1000, blocks=(6, 16, 72, 6), strides=(2, 2, 2, 2),
                                      init_stride=2)
        return cls(**{**config, **overrides})

    @property
    def bijective(self) -> bool:
        """True when S~ is invertible (no zero channels): then :meth:`inverse` is Phi^-1, else the left inverse."""
        return self.split.bijective

    def _check_input(self, x: torch.Tensor) -> None:
        _check_divisible(x, self.downsampling,
                         f"IRevNet (S~ by {self.split.factor}, then S_j by {self.downsampling // self.split.factor})")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("IRevNet received non-finite values (NaN or inf); clean the input first")

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """Phi(x) = M~ (x_J, x~_J): the representation before the classifier (channels ``phi_channels``)."""
        self._check_input(x)
        z = self.split(x)
        params = [p for p in self.blocks.parameters() if p.requires_grad]
        # under torch.func transforms (jvp, vmap, jacrev) plain autograd runs: the Function has no rule for them
        if (self.memory_saving and torch.is_grad_enabled() and (z.requires_grad or params)
                and torch._C._functorch.peek_interpreter_stack() is None):
            return _ReversibleStack.apply(z, self.blocks, *params)
        x0, xt = _split(z)
        for block in self.blocks:
            x0, xt = block(x0, xt)
        return torch.cat((x0, xt), 1)

    def classify(self, phi: torch.Tensor) -> torch.Tensor:
        """Logits from Phi: spatial average, ReLU, linear (sec. 6.3.1 of 001)."""
        return self.linear(F.relu(phi.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        phi = self.phi(x)
        logits = self.classify(phi)
        return (logits, phi) if self.return_phi else logits

    def inverse(self, phi: torch.Tensor) -> torch.Tensor:
        """x from Phi(x) (eq. 39, right; then S~^+): exact for the bijective variant, the left inverse otherwise.

        Needs eval mode: Phi is then a fixed function of x with an inverse. In train mode batch norm uses the
        statistics of the batch (Phi of one image depends on the others, and an interpolated Phi has no batch of
        its own) and dropout draws new masks, so this raises instead of returning a wrong x.
        """
        if phi.ndim != 4 or phi.shape[1] != self.phi_channels:
            raise ValueError(f"IRevNet.inverse expects Phi of shape (N, {self.phi_channels}, H, W); got "
                             f"{tuple(phi.shape)}")
        if self.training:
            raise ValueError("IRevNet.inverse needs eval mode (batch norm with running statistics, no dropout): in "
                             "train mode Phi depends on the whole batch and on dropout masks; call model.eval() first")
        y, yt = _split(phi)
        for block in reversed(self.blocks):
            y, yt = block.inverse(y, yt)
        return self.split.inverse(torch.cat((y, yt), 1))


def comparable_resnet(model: IRevNet, *, blocks: int = 1) -> SmallResNet:
    """A non-invertible :class:`~cnnlens.nn.models.SmallResNet` (``blocks`` per stage) with the width whose
    parameter count is closest to ``model``'s: the ResNet baseline of Table 9 of 001 at the i-RevNet's size.

    The count grows with the width, so the width is found by doubling and bisection, counting on the meta device
    (no memory allocated, no weights initialised)."""
    target = sum(p.numel() for p in model.parameters())

    def size(width: int) -> int:
        with torch.device("meta"):
            net = SmallResNet(model.num_classes, model.in_channels, width, blocks)
        return sum(p.numel() for p in net.parameters())

    hi = 1
    while size(hi) < target:
        hi *= 2
    lo = max(1, hi // 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < target else (lo, mid)
    width = min((lo, hi), key=lambda w: abs(size(w) - target))
    return SmallResNet(model.num_classes, model.in_channels, width, blocks)


@register_model("irevnet")
def irevnet(*, num_classes: int = 10, in_channels: int = 1, return_phi: bool = False, **config: Any) -> IRevNet:
    """The i-RevNet (bijective by default, see :class:`IRevNet` for ``config``); returns logits only by default,
    as every registered model does (``return_phi=True`` for (logits, Phi))."""
    return IRevNet(in_channels, num_classes, return_phi=return_phi, **config)
