"""partition_distance is eq. 15 of 000 and nearest_neighbors equals a brute-force stable sort of it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.spline import _distance as distance_module
from cnnlens.spline._codes import LayerCode, PartitionCodes
from cnnlens.spline._distance import _faiss_available, nearest_neighbors, partition_distance

KINDS = [("binary", 2), ("ternary", 3), ("argmax", 4), ("argmax", 9)]
needs_faiss = pytest.mark.skipif(not _faiss_available(), reason="faiss-cpu is not installed")


def _code(states: np.ndarray, kind: str, num_states: int, shape: tuple[int, ...] | None = None) -> LayerCode:
    """A LayerCode built from unpacked states exactly as the contract stores it."""
    states = np.asarray(states)
    if kind == "binary":
        data = torch.from_numpy(np.packbits(states.astype(np.uint8), axis=1))
    else:
        data = torch.from_numpy(states.astype(np.uint8))
    return LayerCode(
        name=f"{kind}_layer", kind=kind, shape=shape or (states.shape[1],), num_states=num_states, data=data
    )


def _random_states(rng: np.random.Generator, n: int, units: int, num_states: int, tie_heavy: bool) -> np.ndarray:
    if tie_heavy:  # few distinct rows, few differing units: many exactly equal distances
        base = rng.integers(0, num_states, (1, units))
        prototypes = np.repeat(base, 3, axis=0)
        prototypes[1:, : max(1, units // 8)] = rng.integers(0, num_states, (2, max(1, units // 8)))
        return prototypes[rng.integers(0, 3, n)]
    return rng.integers(0, num_states, (n, units))


def _brute_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 15 of 000 in numpy, as the once-rounded ratio #differing units / D (= 1 - #equal units / D)."""
    return (a[:, None, :] != b[None, :, :]).sum(axis=2) / a.shape[1]


def _brute_neighbors(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = _brute_distance(a, b)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@settings(max_examples=40, deadline=None)
@given(
    kind_index=st.integers(0, len(KINDS) - 1),
    num_query=st.integers(1, 9),
    num_db=st.integers(1, 30),
    units=st.integers(1, 70),
    tie_heavy=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_distance_and_neighbors_equal_brute_force(
    kind_index: int, num_query: int, num_db: int, units: int, tie_heavy: bool, seed: int
) -> None:
    kind, num_states = KINDS[kind_index]
    rng = np.random.default_rng(seed)
    a = _random_states(rng, num_query, units, num_states, tie_heavy)
    b = _random_states(rng, num_db, units, num_states, tie_heavy)
    code_a, code_b = _code(a, kind, num_states), _code(b, kind, num_states)
    dist = partition_distance(code_a, code_b)
    assert dist.dtype == torch.float64 and dist.shape == (num_query, num_db)
    np.testing.assert_array_equal(dist.numpy(), _brute_distance(a, b))
    literal = 1.0 - (a[:, None, :] == b[None, :, :]).sum(axis=2) / units  # eq. 15 as printed
    np.testing.assert_allclose(dist.numpy(), literal, rtol=0, atol=1e-15)
    k = int(rng.integers(1, num_db + 1))
    expected_idx, expected_dist = _brute_neighbors(a, b, k)
    backends = ["gemm", "auto"] + (["faiss"] if kind == "binary" and _faiss_available() else [])
    for backend in backends:
        indices, distances = nearest_neighbors(code_a, code_b, k, backend=backend, chunk_size=int(rng.integers(1, 5)))
        assert indices.dtype == torch.int64 and distances.dtype == torch.float64
        np.testing.assert_array_equal(indices.numpy(), expected_idx, err_msg=backend)
        np.testing.assert_array_equal(distances.numpy(), expected_dist, err_msg=backend)


@pytest.mark.parametrize("kind,num_states", KINDS)
def test_heavy_ties_at_scale(kind: str, num_states: int) -> None:
    # 600 database rows drawn from 3 prototypes: every query has hundreds of exactly tied neighbours,
    # far more than the candidates faiss is asked for, so the tie fix-up and its fallback both run.
    rng = np.random.default_rng(7)
    a = _random_states(rng, 40, 300, num_states, tie_heavy=True)
    b = _random_states(rng, 600, 300, num_states, tie_heavy=True)
    for k in (1, 10, 50):
        expected_idx, expected_dist = _brute_neighbors(a, b, k)
        backends = ["gemm", "auto"] + (["faiss"] if kind == "binary" and _faiss_available() else [])
        for backend in backends:
            idx, dist = nearest_neighbors(_code(a, kind, num_states), _code(b, kind, num_states), k, backend=backend)
            np.testing.assert_array_equal(idx.numpy(), expected_idx, err_msg=f"{backend} k={k}")
            np.testing.assert_array_equal(dist.numpy(), expected_dist, err_msg=f"{backend} k={k}")


@pytest.mark.parametrize("kind,num_states", KINDS)
def test_distance_properties(kind: str, num_states: int) -> None:
    rng = np.random.default_rng(3)
    states = rng.integers(0, num_states, (25, 4 * 5 * 5))
    code = _code(states, kind, num_states, shape=(4, 5, 5))
    dist = partition_distance(code, code, chunk_size=7)
    assert float(dist.min()) >= 0.0 and float(dist.max()) <= 1.0
    assert torch.equal(dist, dist.T)
    assert torch.equal(torch.diagonal(dist), torch.zeros(25, dtype=torch.float64))
    # triangle inequality (eq. 15 is a normalised Hamming distance, a metric on codes)
    assert bool((dist[:, None, :] <= dist[:, :, None] + dist[None, :, :] + 1e-12).all())
    # values are (once-rounded) multiples of 1/D
    counts = (dist * code.num_units).round()
    assert torch.equal(counts / code.num_units, dist)
    # a sample is its own nearest neighbour when the database contains it (distance 0, lowest index first)
    idx, d = nearest_neighbors(code, code, 1)
    assert torch.equal(d[:, 0], torch.zeros(25, dtype=torch.float64))
    first_copy = [int(np.flatnonzero((states == row).all(axis=1))[0]) for row in states]
    assert idx[:, 0].tolist() == first_copy


def test_binary_codes_padding_bits_ignored() -> None:
    # 13 units -> 2 packed bytes with 3 zero padding bits; distances are normalised by 13, not 16
    a = np.zeros((1, 13), dtype=np.int64)
    b = np.ones((1, 13), dtype=np.int64)
    dist = partition_distance(_code(a, "binary", 2), _code(b, "binary", 2))
    assert dist.item() == 1.0
    b[0, :4] = 0
    assert partition_distance(_code(a, "binary", 2), _code(b, "binary", 2)).item() == 9 / 13


def test_partition_codes_by_name_and_position() -> None:
    rng = np.random.default_rng(0)
    relu = rng.integers(0, 2, (6, 20))
    pool = rng.integers(0, 4, (6, 5))
    relu_code = replace(_code(relu, "binary", 2), name="relu_0")
    pool_code = replace(_code(pool, "argmax", 4), name="max_pool2d_0")
    codes = PartitionCodes.cat(
        [PartitionCodes([relu_code[:4], pool_code[:4]]), PartitionCodes([relu_code[4:], pool_code[4:]])]
    )
    by_name = partition_distance(codes, codes, "max_pool2d_0")
    by_position = partition_distance(codes, codes, 1)
    np.testing.assert_array_equal(by_name.numpy(), _brute_distance(pool, pool))
    assert torch.equal(by_name, by_position)
    idx_name, _ = nearest_neighbors(codes, codes, 3, "relu_0")
    idx_pos, _ = nearest_neighbors(codes, codes, 3, -2)
    assert torch.equal(idx_name, idx_pos)
    np.testing.assert_array_equal(idx_name.numpy(), _brute_neighbors(relu, relu, 3)[0])
    with pytest.raises(ValueError, match=r"layer 'relu_9' is not among the layers of a: \['relu_0', 'max_pool2d_0'\]"):
        partition_distance(codes, codes, "relu_9")
    with pytest.raises(ValueError, match=r"layer position 2 is out of range for query_codes with 2 layers"):
        nearest_neighbors(codes, codes, 1, 2)
    with pytest.raises(ValueError, match=r"pass `layer` as one of these names or a position in 0..1"):
        partition_distance(codes, codes)
    # a LayerCode and PartitionCodes mix: the layer applies to the PartitionCodes argument only
    assert torch.equal(partition_distance(pool_code, codes, "max_pool2d_0"), by_name)


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.integers(0, 2, (37, 100)), rng.integers(0, 2, (53, 100))
    ca, cb = _code(a, "binary", 2), _code(b, "binary", 2)
    full = partition_distance(ca, cb)
    for chunk in (1, 5, 36, 37, 1000):
        assert torch.equal(partition_distance(ca, cb, chunk_size=chunk), full)
        assert torch.equal(nearest_neighbors(ca, cb, 7, chunk_size=chunk)[0], nearest_neighbors(ca, cb, 7)[0])


@needs_faiss
def test_faiss_and_gemm_agree_on_long_codes() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 2, (50, 2000)), rng.integers(0, 2, (400, 2000))
    ca, cb = _code(a, "binary", 2), _code(b, "binary", 2)
    got_faiss = nearest_neighbors(ca, cb, 10, backend="faiss")
    got_gemm = nearest_neighbors(ca, cb, 10, backend="gemm")
    assert torch.equal(got_faiss[0], got_gemm[0]) and torch.equal(got_faiss[1], got_gemm[1])
    np.testing.assert_array_equal(got_gemm[0].numpy(), _brute_neighbors(a, b, 10)[0])


def test_mismatched_layers_error() -> None:
    rng = np.random.default_rng(0)
    binary = _code(rng.integers(0, 2, (3, 10)), "binary", 2)
    wider = _code(rng.integers(0, 2, (3, 12)), "binary", 2)
    pooled = _code(rng.integers(0, 2, (3, 10)), "argmax", 2)
    with pytest.raises(ValueError, match=r"codes of different layers cannot be compared.*unit shape \(10,\).*\(12,\)"):
        partition_distance(binary, wider)
    with pytest.raises(ValueError, match=r"kind 'binary'.*kind 'argmax'"):
        nearest_neighbors(binary, pooled, 1)


def test_bad_k_and_backend_error() -> None:
    rng = np.random.default_rng(0)
    code = _code(rng.integers(0, 2, (4, 10)), "binary", 2)
    pooled = _code(rng.integers(0, 4, (4, 10)), "argmax", 4)
    with pytest.raises(ValueError, match=r"k must be an integer in 1..4 \(the database size\); received 5"):
        nearest_neighbors(code, code, 5)
    with pytest.raises(ValueError, match=r"received 0"):
        nearest_neighbors(code, code, 0)
    with pytest.raises(ValueError, match=r"backend must be 'auto', 'gemm' or 'faiss'; received 'cuda'"):
        nearest_neighbors(code, code, 1, backend="cuda")
    with pytest.raises(ValueError, match=r"backend='faiss' only handles binary"):
        nearest_neighbors(pooled, pooled, 1, backend="faiss")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive number of query rows; received 0"):
        partition_distance(code, code, chunk_size=0)


def test_bad_codes_type_error() -> None:
    with pytest.raises(TypeError, match=r"a must be PartitionCodes .* or one LayerCode; received Tensor"):
        partition_distance(torch.zeros(2, 3), torch.zeros(2, 3))


def test_kernel_counts_are_exact_for_large_unit_counts() -> None:
    # int8 GEMM accumulates in int32: a 40,000-unit layer (more than int8 or float16 could count) stays exact
    units = 40_000
    a = np.zeros((2, units), dtype=np.int64)
    b = np.zeros((1, units), dtype=np.int64)
    a[1, : units - 1] = 1
    dist = partition_distance(_code(a, "binary", 2), _code(b, "binary", 2))
    assert dist[:, 0].tolist() == [0.0, (units - 1) / units]
    assert math.isclose(dist[1, 0].item() * units, units - 1, rel_tol=0, abs_tol=0)


def test_float_gemm_fallback_equals_int8_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    # builds without torch._int_mm on the CPU use a float GEMM; both must give identical integer counts
    rng = np.random.default_rng(2)
    for kind, num_states in KINDS:
        a, b = rng.integers(0, num_states, (9, 77)), rng.integers(0, num_states, (31, 77))
        ca, cb = _code(a, kind, num_states), _code(b, kind, num_states)
        int8_result = partition_distance(ca, cb), nearest_neighbors(ca, cb, 5, backend="gemm")
        monkeypatch.setattr(distance_module, "_HAS_INT_MM", False)
        float_result = partition_distance(ca, cb), nearest_neighbors(ca, cb, 5, backend="gemm")
        monkeypatch.undo()
        assert torch.equal(int8_result[0], float_result[0])
        assert torch.equal(int8_result[1][0], float_result[1][0])
        np.testing.assert_array_equal(float_result[0].numpy(), _brute_distance(a, b))


@needs_faiss
def test_faiss_tie_fallback_runs_on_heavy_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    a = _random_states(rng, 12, 64, 2, tie_heavy=True)
    b = _random_states(rng, 300, 64, 2, tie_heavy=True)
    calls = []
    original = distance_module._brute_force_topk
    monkeypatch.setattr(
        distance_module, "_brute_force_topk", lambda *args: calls.append(args[1].shape[0]) or original(*args)
    )
    idx, _ = nearest_neighbors(_code(a, "binary", 2), _code(b, "binary", 2), 5, backend="faiss")
    assert calls and calls[0] > 0  # some queries had ties beyond faiss' candidates and were recomputed
    np.testing.assert_array_equal(idx.numpy(), _brute_neighbors(a, b, 5)[0])


def test_on_codes_of_a_real_network() -> None:
    # codes straight from partition_codes: conv -> ReLU -> max-pool -> hardtanh -> linear
    from torch import nn

    from cnnlens.spline import partition_codes

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Hardtanh(-0.2, 0.2), nn.Flatten(), nn.Linear(27, 4)
    ).eval()
    x = torch.rand(60, 1, 8, 8)
    codes = partition_codes(model, x)
    assert [codes[i].kind for i in range(len(codes))] == ["binary", "argmax", "ternary"]
    for position in range(len(codes)):
        states = codes[position].states().numpy()
        np.testing.assert_array_equal(partition_distance(codes, codes, position).numpy(),
                                      _brute_distance(states, states))
        idx, dist = nearest_neighbors(codes[position][:10], codes, 6, position)
        expected_idx, expected_dist = _brute_neighbors(states[:10], states, 6)
        np.testing.assert_array_equal(idx.numpy(), expected_idx)
        np.testing.assert_array_equal(dist.numpy(), expected_dist)


@pytest.mark.parametrize("num_bytes", [1, 3, 8, 16, 21])
def test_popcount_rows_both_paths(num_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    packed = torch.from_numpy(np.random.default_rng(num_bytes).integers(0, 256, (17, num_bytes), dtype=np.uint8))
    expected = np.unpackbits(packed.numpy(), axis=1).sum(axis=1)
    np.testing.assert_array_equal(distance_module._popcount_rows(packed).numpy(), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy < 2.0: the byte table
    np.testing.assert_array_equal(distance_module._popcount_rows(packed).numpy(), expected)
