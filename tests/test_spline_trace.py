"""The engine's trace of affine and pooling ops (module path, op, shapes, arguments), used by recos.summary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.spline._trace import TracedOp, trace_ops


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode="reflect")
        self.weight = nn.Parameter(torch.randn(3, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.conv(x))  # not piecewise affine: the trace does not care
        return F.conv2d(h, self.weight, padding=(0, 1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, return_indices=True)
        self.fc = nn.Linear(3 * 2 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.pool(self.block(x))
        h = F.avg_pool2d(h, (1, 1))
        return self.fc(h.flatten(1))


def test_trace_names_ops_by_module_with_shapes_and_arguments():
    """On the CPU; the "meta" device (what summary uses for AlexNet) is covered by tests/test_recos.py."""
    net = Net()
    ops = trace_ops(net, torch.zeros(2, 2, 8, 8))
    assert [(op.module, op.op) for op in ops] == [("block.conv", "conv"), ("block", "conv"), ("pool", "max_pool"),
                                                  ("", "avg_pool"), ("fc", "linear")]
    conv, conv1x1, pool, avg, fc = ops
    # the reflect padding of nn.Conv2d runs as F.pad + conv with padding 0: the input is the module's input
    assert conv == TracedOp("block.conv", "conv", (2, 8, 8), (4, 4, 4), (4, 1, 3, 3), (3, 3), (2, 2), (0, 0), (1, 1),
                            2)
    assert conv1x1.padding == (0, 1) and conv1x1.output_shape == (3, 4, 6) and conv1x1.stride == (1, 1)
    assert (pool.kernel_size, pool.stride, pool.padding, pool.output_shape) == ((3, 3), (2, 2), (1, 1), (3, 2, 3))
    assert avg.stride == (1, 1) and avg.dilation == (1, 1)
    assert fc.weight_shape == (2, 18) and fc.input_shape == (18,) and fc.kernel_size is None
