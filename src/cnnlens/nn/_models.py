"""Reference CNNs: LeNet-5 (RECOS paper, 003), plain small/large CNNs (spline paper, 000), a small ResNet, and the
ImageNet-scale ResNet-18, VGG-11-BN and MobileNet-v1 (written by hand, torchvision-style; no torchvision needed).

Short, readable definitions in the torchvision manner: one ``nn.Module`` per family and thin keyword-only builders
registered by name (``get_model``, ``list_models``). Every model is built only from piecewise-affine parts (conv,
linear, ReLU, max-pool, batch-norm, residual additions, depthwise convolutions, dropout in eval mode), so the
spline engine reads all of them exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "VGG",
    "LeNet5",
    "MobileNetV1",
    "PlainCNN",
    "ResNet18",
    "SmallResNet",
    "get_model",
    "large_cnn",
    "lenet5",
    "list_models",
    "mobilenet_v1",
    "register_model",
    "resnet18",
    "small_cnn",
    "small_resnet",
    "vgg11_bn",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name``; duplicate names are rejected."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered; pick another name")
        _MODELS[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of the registered model builders, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **config: object) -> nn.Module:
    """Build the registered model ``name`` with keyword ``config`` (e.g. ``num_classes=10``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name](**config)


def _activation(activation: str | type[nn.Module]) -> nn.Module:
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if activation == "relu":
        return nn.ReLU()
    if activation == "none":
        return nn.Identity()
    raise ValueError(
        f"activation must be 'relu', 'none' or an nn.Module class (e.g. nn.LeakyReLU), got {activation!r}"
    )


class LeNet5(nn.Module):
    """LeNet-5 as used in the RECOS paper (003, Fig. 1, Table 1) with ReLU activations and max-pooling.

    Input (N, C, 32, 32) -> C1 conv 5x5, 6 maps (28x28) -> S2 max-pool 2 (14x14) -> C3 conv 5x5, 16 maps (10x10)
    -> S4 max-pool 2 (5x5) -> C5 conv 5x5, 120 maps (1x1) -> F6 linear 84 -> output linear ``num_classes``.
    With ``activation="none"`` every activation is the identity (the "without rectification" arm of 003 sec. 2);
    max-pooling, itself a max-affine spline, remains: replace ``s2``/``s4`` by ``nn.AvgPool2d(2)`` for a network
    that is one affine map.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, activation: str | type[nn.Module] = "relu"
    ) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.act1 = _activation(activation)
        self.s2 = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.act2 = _activation(activation)
        self.s4 = nn.MaxPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.act3 = _activation(activation)
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(120, 84)
        self.act4 = _activation(activation)
        self.output = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-2:] != (32, 32):
            raise ValueError(
                f"LeNet-5 expects inputs of shape (N, C, 32, 32), got {tuple(x.shape)}; "
                "pad 28x28 digits with the 'pad32' transform of cnnlens.data"
            )
        x = self.s2(self.act1(self.c1(x)))
        x = self.s4(self.act2(self.c3(x)))
        x = self.flatten(self.act3(self.c5(x)))
        return self.output(self.act4(self.f6(x)))


#: builds a 3x3 convolution without bias, "same" padding: (in_channels, out_channels, stride) -> module
Conv3x3 = Callable[[int, int, int], nn.Module]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv_bn_relu(cin: int, cout: int, conv: Conv3x3 = _conv3x3) -> list[nn.Module]:
    return [conv(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU()]


class PlainCNN(nn.Module):
    """Plain CNN in the spirit of the spline paper's smallCNN/largeCNN (000 sec. 6-7; exact nets not in the seed).

    ``stages`` is a list of stages, each a list of channel widths; every width is a 3x3 conv (no bias) ->
    batch-norm -> ReLU, and each stage ends with a 2x2 max-pool. A global average pool and one linear layer (the
    class templates' last factor) follow. Works for any input size >= 2**len(stages).
    """

    def __init__(self, stages: list[list[int]], num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for widths in stages:
            for cout in widths:
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.flatten(self.pool(self.features(x))))


class _BasicBlock(nn.Module):
    """Residual block: relu(x + bn(conv(relu(bn(conv(x)))))), with a 1x1 projection when the shape changes.
    ``conv`` builds the two 3x3 convolutions (plain ``nn.Conv2d`` by default)."""

    def __init__(self, cin: int, cout: int, stride: int, conv: Conv3x3 = _conv3x3) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet: stem conv -> three stages of ``blocks`` residual blocks (widths w, 2w, 4w; stride 2 between
    stages) -> global average pool -> linear. ``conv`` builds every 3x3 convolution, in the order of the forward
    pass (stem, then conv1 and conv2 of each block); the 1x1 projections stay plain."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks: int = 1,
                 conv: Conv3x3 = _conv3x3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width, conv))
        stages: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, conv))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.flatten(self.pool(self.stages(self.stem(x)))))


def _check_width(name: str, width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{name}'s width (channels of the first stage) must be a positive int; received {width!r}.")
    return width


class _ResNetBlock(nn.Module):
    """torchvision's ``BasicBlock``, same parameter names: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016, Table 1) with torchvision's layout and parameter names, so a torchvision
    ``state_dict`` loads into it: 7x7/2 conv, 3x3/2 max-pool, four stages of two basic blocks (widths w, 2w, 4w, 8w;
    stride 2 from the second stage on), global average pool, linear. 11.7 M parameters at ``width=64``, 1000 classes.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = width
        for i in range(4):
            cout = width * 2**i
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_ResNetBlock(cin, cout, stride), _ResNetBlock(cout, cout, 1)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """VGG with batch-norm (Simonyan & Zisserman, ICLR 2015) in torchvision's layout and parameter names.

    ``config`` lists conv widths (3x3, padding 1, each followed by batch-norm and ReLU) and ``"M"`` for a 2x2
    max-pool; then a 7x7 adaptive average pool and the classifier linear(49 * last, hidden) - ReLU - dropout -
    linear(hidden, hidden) - ReLU - dropout - linear(hidden, num_classes). Inputs need at least 32x32 (five
    poolings).
    """

    def __init__(self, config: list[int | str], num_classes: int = 1000, in_channels: int = 3,
                 hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                cin = int(item)
        self.poolings = config.count("M")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or min(x.shape[-2:]) < 2**self.poolings:
            raise ValueError(f"VGG halves the resolution {self.poolings} times and expects inputs (N, C, H, W) with "
                             f"H, W >= {2**self.poolings}; got {tuple(x.shape)}.")
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    """MobileNet-v1 (Howard et al., 2017, Table 1): a 3x3/2 conv, then 13 depthwise-separable blocks (a 3x3
    depthwise conv and a 1x1 pointwise conv, each with batch-norm and ReLU), global average pool, linear. Widths are
    ``width`` times 1, 2, 4, 4, 8, 8, 16, 16 x5, 32, 32 (32 by default: 4.2 M parameters with 1000 classes)."""

    _BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1), (16, 1), (16, 1), (16, 1), (16, 1),
               (32, 2), (32, 1))  # (output width / width, stride of the depthwise conv)

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers = [_conv_bn(in_channels, width, 3, 2)]
        cin = width
        for mult, stride in self._BLOCKS:
            layers += [_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, width * mult, 1, 1)]
            cin = width * mult
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("lenet5")
def lenet5(
    *, num_classes: int = 10, in_channels: int = 1, activation: str | type[nn.Module] = "relu"
) -> LeNet5:
    """LeNet-5 of 003 (32x32 input), ReLU by default; ``activation="none"`` removes the activations."""
    return LeNet5(num_classes, in_channels, activation)


@register_model("small-cnn")
def small_cnn(*, num_classes: int = 10, in_channels: int = 1) -> PlainCNN:
    """smallCNN-like: stages [[32], [64]] (two conv-BN-ReLU, two max-pools), GAP, linear. 0.02 M parameters."""
    return PlainCNN([[32], [64]], num_classes, in_channels)


@register_model("large-cnn")
def large_cnn(*, num_classes: int = 10, in_channels: int = 1, width: int = 64) -> PlainCNN:
    """largeCNN-like: stages [[w, w], [2w, 2w], [4w]] with ``w = width`` (64 by default: 0.56 M parameters), GAP,
    linear. A narrower ``width`` keeps the depth and layout at a fraction of the cost (about ``(width / 64) ** 2``)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"large-cnn's width (channels of the first stage) must be a positive int; received {width!r}.")
    return PlainCNN([[width, width], [2 * width, 2 * width], [4 * width]], num_classes, in_channels)


@register_model("small-resnet")
def small_resnet(*, num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks: int = 1) -> SmallResNet:
    """Small ResNet (widths 16/32/64, one basic block per stage by default)."""
    return SmallResNet(num_classes, in_channels, width, blocks)


@register_model("resnet18")
def resnet18(*, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> ResNet18:
    """ResNet-18 (torchvision layout and parameter names); a smaller ``width`` keeps the depth and layout."""
    return ResNet18(num_classes, in_channels, _check_width("resnet18", width))


@register_model("vgg11-bn")
def vgg11_bn(*, num_classes: int = 1000, in_channels: int = 3, width: int = 64, hidden: int = 4096) -> VGG:
    """VGG-11 with batch-norm (configuration "A", torchvision layout): conv widths w, 2w, 4w, 4w, 8w, 8w, 8w, 8w
    with ``w = width`` and five max-pools; ``hidden`` units in the two hidden classifier layers (133 M parameters
    at the defaults)."""
    w = _check_width("vgg11-bn", width)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"vgg11-bn's hidden (units of the classifier) must be a positive int; received {hidden!r}.")
    return VGG([w, "M", 2 * w, "M", 4 * w, 4 * w, "M", 8 * w, 8 * w, "M", 8 * w, 8 * w, "M"], num_classes,
               in_channels, hidden)


@register_model("mobilenet-v1")
def mobilenet_v1(*, num_classes: int = 1000, in_channels: int = 3, width: int = 32) -> MobileNetV1:
    """MobileNet-v1; ``width`` = 32 * the paper's width multiplier alpha."""
    return MobileNetV1(num_classes, in_channels, _check_width("mobilenet-v1", width))
