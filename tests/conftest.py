"""Shared fixtures: every exact identity is checked in float32 and float64 (tolerance from the dtype)."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from torch.nn import functional as F

matplotlib.use("Agg")

TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating-point type of a test (float32 and float64)."""
    return request.param


def tol(dtype: torch.dtype) -> float:
    """Relative tolerance of exact identities for ``dtype``."""
    return TOLERANCES[dtype]


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Keep the global default dtype and thread count as they were (tests may change them)."""
    default, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(default)
    torch.set_num_threads(threads)


def factorised_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's Fig. 4 forward of a structured convolution (RFConv, FrameConv): convolve every input channel with
    every basis function, then recombine the responses with the 1x1 weights alpha (eq. 24 of 001), written
    independently of ``effective_weight``."""
    dim = layer.basis.dim() - 1
    conv = F.conv2d if dim == 2 else F.conv3d
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    flipped = layer.basis.flip(tuple(range(1, dim + 1)))
    bank = flipped.unsqueeze(1)  # (F, 1, *k)
    responses = conv(x.reshape(n * c, 1, *spatial), bank, None, layer.stride, layer.padding, layer.dilation)
    responses = responses.reshape(n, layer.groups, c // layer.groups, layer.num_basis, *responses.shape[2:])
    alpha = layer.alpha.reshape(layer.groups, layer.out_channels // layer.groups, c // layer.groups, -1)
    out = torch.einsum("ngif...,goif->ngo...", responses, alpha).flatten(1, 2)
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, *([1] * len(spatial)))
    return out
