"""What the Hierarchical Attribute CNN experiments of 001 ch. 5 share: the data (CIFAR-10 when the data folder has
it, else mnist5k; CIFAR-100 when the folder has it), the CPU-sized network, one "train and test" step and the
settings' wording."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..data import ArrayDataset, stratified_indices
from ..nn import HierarchicalCNN
from ._receptive import RFBudget, held_out, train_error
from ._recipes import load_cifar10, load_cifar100, load_digits
from ._registry import RunContext

__all__ = ["HCNNArch", "HCNNData", "hcnn_cifar100", "hcnn_data", "train_test"]


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
    """Training, test and (when asked) held-out validation images, their channels and classes, and the sentence a
    claim's setting quotes."""

    train: ArrayDataset
    test: ArrayDataset
    channels: int
    classes: int
    description: str
    unmeasured: dict[str, str] = field(default_factory=dict)
    val: ArrayDataset | None = None


def _split(pool: ArrayDataset, test: ArrayDataset, train_size: int, validation: int, seed: int, channels: int,
           description: str) -> HCNNData:
    """A class-stratified training subset of ``pool`` and, when ``validation > 0``, a stratified held-out set of
    ``validation`` items from the rest of ``pool`` (never the test split); ``description``'s first ``{train}``,
    ``{held}`` and ``{test}`` become the sizes."""
    chosen = stratified_indices(pool.labels, min(train_size, len(pool)), seed)
    train = pool.subset(chosen)
    val = held_out(pool, chosen, validation, seed) if validation > 0 else None
    held = f", {len(val):,} held-out for the learning rate" if val is not None else ""
    sizes = {"{train}": f"{len(train):,}", "{held}": held, "{test}": f"{len(test):,}"}
    for placeholder, value in sizes.items():
        description = description.replace(placeholder, value, 1)
    return HCNNData(train, test, channels, pool.num_classes, description, val=val)


def hcnn_data(ctx: RunContext, train_size: int, purpose: str, *, validation: int = 0) -> HCNNData:
    """CIFAR-10 (the paper's data, a class-stratified subset of ``train_size`` images) when the data folder has it,
    else mnist5k's real digits (28 x 28, one channel); ``purpose`` completes the log line of the fall-back;
    ``validation`` held-out training images (stratified, outside the training subset) for :func:`tune_lr`."""
    cifar = load_cifar10(ctx, purpose)
    if isinstance(cifar, tuple):
        pool, test = cifar
        return _split(pool, test, train_size, validation, ctx.seed, 3,
                      "CIFAR-10: {train} class-stratified training images of 50,000{held} / {test} test images")
    digits = load_digits(ctx, transforms=())
    return _split(digits.train, digits.test, train_size, validation, ctx.seed, 1,
                  "mnist5k ({train} training{held} / {test} test digits, 28 x 28) for CIFAR-10 (" + cifar + ")")


def hcnn_cifar100(ctx: RunContext, train_size: int, *, validation: int = 0) -> HCNNData | str:
    """CIFAR-100 (a class-stratified subset of ``train_size`` of its 50,000 training images, 100 fine labels) when
    the data folder has it, else why not (the files to place)."""
    cifar = load_cifar100(ctx, "the CIFAR-100 arm is not measured")
    if isinstance(cifar, str):
        return cifar
    pool, test = cifar
    return _split(pool, test, train_size, validation, ctx.seed, 3,
                  "CIFAR-100: {train} class-stratified training images of 50,000{held} / {test} test images")


def train_test(ctx: RunContext, name: str, build: Callable[[], nn.Module], data: HCNNData, budget: RFBudget,
               seed: int) -> tuple[float, nn.Module]:
    """Train ``build()`` on the data within ``budget`` (Adam, cosine decay) and return (test accuracy, model)."""
    err, model, _ = train_error(ctx, name, build, data.train, data.test, budget, seed)
    ctx.log(f"{name}: test accuracy {1 - err:.4f}")
    return 1.0 - err, model
