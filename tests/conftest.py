"""Shared fixtures: every exact identity is checked in float32 and float64 (tolerance from the dtype)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

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
