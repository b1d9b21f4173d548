"""Random piecewise-affine architectures for the spline property tests (a helper module; it holds no tests).

Every supported part appears, as a module and as a functional call: conv, linear, BN (eval, random statistics),
ReLU / F.relu / torch.relu / x.relu() / x.clamp(min=0) / torch.maximum(x, 0*x), leaky ReLU, PReLU, abs, hardtanh,
two-sided clamp, relu6, max/avg pooling, adaptive avg pooling, residual additions, concatenation, dropout (eval),
flatten/view/reshape, scaling by constants and sums of linear branches.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from torch import nn

ACTIVATIONS = ("relu_mod", "relu_f", "relu_torch", "relu_method", "clamp0", "maximum0", "leaky_mod", "leaky_f",
               "prelu", "abs", "hardtanh_mod", "clamp2", "relu6", "relu_inplace")
BLOCKS = ("conv", "bn", "act", "maxpool", "maxpool_f", "avgpool", "residual", "cat", "scale", "dropout",
          "branches")


def arch_settings(examples: int) -> settings:
    """Hypothesis settings of a random-architecture test: ``examples`` examples (times CNNLENS_HYPOTHESIS_SCALE, so
    that ``CNNLENS_HYPOTHESIS_SCALE=4`` runs four times as many), no deadline."""
    scale = float(os.environ.get("CNNLENS_HYPOTHESIS_SCALE", "1"))
    return settings(max_examples=max(1, int(examples * scale)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class RandomNet(nn.Module):
    """A network of ``blocks`` (names above) on (N, C, 8, 8) (2-D) or (N, C, 16) (1-D) inputs."""

    def __init__(self, blocks: list[tuple[str, str]], in_channels: int = 2, dims: int = 2, num_classes: int = 4,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dims = dims
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.plan: list[tuple[str, str, str]] = []
        self.layers = nn.ModuleDict()
        c = in_channels
        size = 16 if dims == 1 else 8
        for i, (block, act) in enumerate(blocks):
            key = f"b{i}"
            act_channels = c
            if act == "relu_inplace" and block != "conv":
                act = "relu_mod"  # in place only right after a convolution, as in real code (autograd-safe)
            if block in ("conv", "residual", "cat", "branches"):
                out = c if block == "residual" else 3
                self.layers[key] = conv(c, out, 3, padding=1)
                if block == "branches":
                    self.layers[key + "_2"] = conv(c, out, 1)
                c, act_channels = (c + out if block == "cat" else out), out
            elif block == "bn":
                m = bn(c)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.data.copy_(torch.randn(c, generator=g))
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
                self.layers[key] = m
            elif block in ("maxpool", "maxpool_f", "avgpool"):
                if size < 4:
                    block = "scale"
                elif block == "maxpool":
                    self.layers[key] = (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(2)
                    size //= 2
                elif block == "avgpool":
                    self.layers[key] = (nn.AvgPool1d if dims == 1 else nn.AvgPool2d)(2)
                    size //= 2
            elif block == "dropout":
                self.layers[key] = nn.Dropout(0.3)
            if block in ("conv", "residual", "cat", "branches", "act"):
                if act == "relu_mod":
                    self.layers[key + "_act"] = nn.ReLU()
                elif act == "leaky_mod":
                    self.layers[key + "_act"] = nn.LeakyReLU(0.2)
                elif act == "prelu":
                    self.layers[key + "_act"] = nn.PReLU(act_channels)
                elif act == "hardtanh_mod":
                    self.layers[key + "_act"] = nn.Hardtanh(-0.5, 0.7)
                elif act == "relu_inplace":
                    self.layers[key + "_act"] = nn.ReLU(inplace=True)
            self.plan.append((key, block, act))
        self.pool_out = 2 if dims == 2 else 3
        self.head = nn.Linear(c * self.pool_out ** dims, 6)
        self.head_act = nn.LeakyReLU(0.1)
        self.output = nn.Linear(6, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                scale = 1.0 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)

    def _act(self, key: str, act: str, x: torch.Tensor) -> torch.Tensor:
        mod = self.layers[key + "_act"] if (key + "_act") in self.layers else None
        if mod is not None:
            return mod(x)
        if act == "relu_f":
            return F.relu(x)
        if act == "relu_torch":
            return torch.relu(x)
        if act == "relu_method":
            return x.relu()
        if act == "clamp0":
            return x.clamp(min=0)
        if act == "maximum0":
            return torch.maximum(x, 0 * x)
        if act == "leaky_f":
            return F.leaky_relu(x, 0.3)
        if act == "abs":
            return x.abs()
        if act == "clamp2":
            return torch.clamp(x, -0.6, 0.8)
        if act == "relu6":
            return F.relu6(x * 4)
        raise AssertionError(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for key, block, act in self.plan:
            if block == "conv":
                x = self._act(key, act, self.layers[key](x))
            elif block == "act":
                x = self._act(key, act, x)
            elif block == "residual":
                x = x + self._act(key, act, self.layers[key](x))
            elif block == "cat":
                x = torch.cat([x, self._act(key, act, self.layers[key](x))], dim=1)
            elif block == "branches":
                x = self._act(key, act, self.layers[key](x) - 0.5 * self.layers[key + "_2"](x))
            elif block == "maxpool_f":
                x = F.max_pool1d(x, 3, 1, 1) if self.dims == 1 else F.max_pool2d(x, 3, 1, 1)
            elif block == "scale":
                x = x * 1.5 / 2.0
            else:  # bn, maxpool, avgpool, dropout
                x = self.layers[key](x)
        pool = F.adaptive_avg_pool1d if self.dims == 1 else F.adaptive_avg_pool2d
        x = pool(x, self.pool_out)
        x = x.reshape(x.shape[0], -1)
        return self.output(self.head_act(self.head(x)))


def random_net(blocks: list[tuple[str, str]], dims: int, seed: int, dtype: torch.dtype) -> RandomNet:
    """Build, randomise and put in eval mode."""
    return RandomNet(blocks, dims=dims, seed=seed).to(dtype).eval()


def input_for(net: RandomNet, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    shape = (n, 2, 16) if net.dims == 1 else (n, 2, 8, 8)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
