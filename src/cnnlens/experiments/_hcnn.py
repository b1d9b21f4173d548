"""What the Hierarchical Attribute CNN experiments of 001 ch. 5 share: the data (CIFAR-10 when the data folder has
it, else mnist5k), the CPU-sized network, one "train and test" step and the settings' wording."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..data import ArrayDataset, stratified_subset
from ..nn import HierarchicalCNN
from ._receptive import RFBudget, train_error
from ._recipes import load_cifar10, load_digits
from ._registry import RunContext

__all__ = ["HCNNArch", "HCNNData", "hcnn_data", "train_test"]


@dataclass(frozen=True)
class HCNNArch:
    """The CPU-sized network (sec. 5.4 scaled down): K, J, the depths that subsample u, the attribute support, Q."""

    width: int = 8
    depth: int = 6
    downsample: tuple[int, ...] = (2, 4)
    attribute_kernel: tuple[int, int] = (3, 5)
    q: int = 9

    def build(self, data: HCNNData, **overrides: object) -> HierarchicalCNN:
        """The network for ``data``'s channels and classes (``overrides``: e.g. ``plus=True``, ``q=16``)."""
        config: dict[str, object] = dict(width=self.width, depth=self.depth, downsample=self.downsample,
                                         attribute_kernel=self.attribute_kernel, q=self.q)
        return HierarchicalCNN(data.channels, data.classes, **{**config, **overrides})  # type: ignore[arg-type]

    def describe(self) -> str:
        return (f"K = {self.width}, J = {self.depth}, u subsampled at j = {', '.join(map(str, self.downsample))}, "
                f"3x3 spatial and {self.attribute_kernel[0]} x {self.attribute_kernel[1]} attribute supports, "
                f"Q = {self.q}")


@dataclass
class HCNNData:
    """Training and test images, their channels and classes, and the sentence a claim's setting quotes."""

    train: ArrayDataset
    test: ArrayDataset
    channels: int
    classes: int
    description: str
    unmeasured: dict[str, str] = field(default_factory=dict)


def hcnn_data(ctx: RunContext, train_size: int, purpose: str) -> HCNNData:
    """CIFAR-10 (the paper's data, a class-stratified subset of ``train_size`` images) when the data folder has it,
    else mnist5k's real digits (28 x 28, one channel); ``purpose`` completes the log line of the fall-back."""
    cifar = load_cifar10(ctx, purpose)
    if isinstance(cifar, tuple):
        train, test = cifar
        train = stratified_subset(train, min(train_size, len(train)), seed=ctx.seed)
        return HCNNData(train, test, 3, 10, f"CIFAR-10: {len(train):,} class-stratified training images of 50,000 "
                                            f"/ {len(test):,} test images")
    digits = load_digits(ctx, train_size=train_size, transforms=())
    return HCNNData(digits.train, digits.test, 1, 10,
                    f"mnist5k ({len(digits.train):,} training / {len(digits.test):,} test digits, 28 x 28) for "
                    f"CIFAR-10 ({cifar})")


def train_test(ctx: RunContext, name: str, build: Callable[[], nn.Module], data: HCNNData, budget: RFBudget,
               seed: int) -> tuple[float, nn.Module]:
    """Train ``build()`` on the data within ``budget`` (Adam, cosine decay) and return (test accuracy, model)."""
    err, model, _ = train_error(ctx, name, build, data.train, data.test, budget, seed)
    ctx.log(f"{name}: test accuracy {1 - err:.4f}")
    return 1.0 - err, model
