"""Partition distance (eq. 15 of 000) and exact nearest neighbours under it.

The region code of a layer (eq. 14 of 000) is a vector of ``U`` categorical states; the distance between two
codes is the fraction of units whose states differ. Every kernel here counts *mismatches* exactly in integers:

* binary codes (ReLU-like layers, bits packed MSB-first): Hamming distance, either as one int8 GEMM over the
  unpacked bits (``|a| + |b| - 2 <a, b>``) or, for short codes, with faiss-cpu's ``IndexBinaryFlat`` when faiss
  is installed;
* categorical codes (hardtanh's 3 states, max-pool argmax indices): ``U - <onehot(a), onehot(b)>``, one int8
  GEMM over one-hot codes.

Which kernel is faster was measured on 2 Xeon cores (``benchmarks/bench_neighbors.py --bits B``, 20,000 codes, 1,000
queries): faiss wins for codes of up to :data:`_FAISS_MAX_BITS` bits (where faiss has specialised popcount kernels for
code sizes of 4 to 64 bytes), the int8 GEMM above that (4,096 bits: about 0.6x faiss's time).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._codes import LayerCode, PartitionCodes
from ._distributed import distributed_active, sharded_neighbors

__all__ = ["nearest_neighbors", "partition_distance"]

#: Longest binary code (in bits) for which faiss' IndexBinaryFlat beats the int8 GEMM (measured, see module doc).
_FAISS_MAX_BITS = 512
#: Budget for one chunk's (queries x database) int32/int64 work array, in elements (32 MiB of int32: large enough
#: for the GEMM to run at full speed, measured in ``benchmarks/bench_neighbors.py``).
_CHUNK_ELEMENTS = 1 << 23


def _int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Exact ``a @ b.T`` of two int8 matrices with 0/1 entries, as int32 (shapes (n, K), (m, K) -> (n, m)).

    Uses the int8 GEMM ``torch._int_mm`` (int32 accumulation, VNNI on x86) when this torch build has it on the
    CPU, and a float GEMM otherwise (exact: every partial sum is an integer <= K < 2**24 in float32, or 2**53
    in float64).
    """
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32)
    if _HAS_INT_MM:
        return torch._int_mm(a, b.T)
    float_dtype = torch.float32 if a.shape[1] < (1 << 24) else torch.float64
    return (a.to(float_dtype) @ b.to(float_dtype).T).round_().to(torch.int32)


def _probe_int_mm() -> bool:
    """Whether ``torch._int_mm`` exists and is exact on the CPU in this build."""
    if not hasattr(torch, "_int_mm"):
        return False
    a = torch.tensor([[1, 0, 1]], dtype=torch.int8)
    try:
        return bool(torch._int_mm(a, a.T).item() == 2)
    except RuntimeError:
        return False


_HAS_INT_MM = _probe_int_mm()


def _unpack_bits(packed: Tensor) -> Tensor:
    """Unpack MSB-first packed bits ``(N, B)`` uint8 into an int8 0/1 matrix ``(N, 8 B)``."""
    bits = np.unpackbits(packed.contiguous().numpy(), axis=1)
    return torch.from_numpy(bits.view(np.int8))


def _one_hot(states: Tensor, num_states: int) -> Tensor:
    """One-hot int8 matrix ``(N, U * num_states)`` of integer states ``(N, U)``."""
    n, u = states.shape
    out = torch.zeros(n, u * num_states, dtype=torch.int8)
    offsets = torch.arange(u, dtype=torch.int64) * num_states
    out.scatter_(1, states.to(torch.int64) + offsets, 1)
    return out


class _MismatchCounter:
    """Exact mismatch counts between query codes and a fixed database of codes of one layer (eq. 15 of 000).

    Binary codes: ``mismatch = |q| + |d| - 2 <q, d>`` over 0/1 bits. Categorical codes:
    ``mismatch = U - <onehot(q), onehot(d)>``. Both are ``offset(q) + partial(q, d)`` with
    ``partial = base(d) - weight * <q, d>``, which is what the top-k search ranks (one fused pass per chunk).

    Parameters
    ----------
    db : Tensor
        Binary: uint8 ``(M, B)`` packed bits. Categorical: integer states ``(M, U)``.
    binary : bool
        Whether the codes are packed bits.
    num_states : int
        Number of states per unit (used for categorical codes).
    num_units : int
        Number of units U of the layer.
    """

    def __init__(self, db: Tensor, *, binary: bool, num_states: int, num_units: int) -> None:
        self.binary = binary
        self.num_states = num_states
        self.num_units = num_units
        self.db_features = self.features(db)
        self.num_db = self.db_features.shape[0]
        self.weight = 2 if binary else 1
        # partial(q, d) + U >= 0 always (|d| - 2 <q, d> >= -|d| >= -U), so shift it into [0, 2U]
        self.db_base = (_popcount_rows(db) + num_units) if binary else torch.full((self.num_db,), num_units)

    def features(self, codes: Tensor) -> Tensor:
        """int8 0/1 features whose inner products count agreeing units (bits, or one-hot states)."""
        return _unpack_bits(codes) if self.binary else _one_hot(codes, self.num_states)

    def offset(self, queries: Tensor) -> Tensor:
        """Per-query term: ``mismatch = offset + partial``, with the shift of ``db_base`` undone."""
        if self.binary:
            return _popcount_rows(queries) - self.num_units
        return torch.zeros(queries.shape[0], dtype=torch.int64)

    def __call__(self, queries: Tensor) -> Tensor:
        """int64 ``(n, M)`` number of units whose states differ between each query and each database code."""
        inner = _int8_matmul(self.features(queries), self.db_features)
        partial = torch.add(self.db_base[None, :], inner, alpha=-self.weight)
        return partial + self.offset(queries)[:, None]


#: Number of set bits of every byte value (fallback for numpy < 2.0, which has no bitwise_count).
_POPCOUNT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _popcount_rows(packed: Tensor) -> Tensor:
    """Number of set bits of each row of a packed uint8 matrix, int64 ``(N,)``.

    numpy >= 2.0: hardware popcount on 64-bit words when the row length allows (measured 14x faster than the
    byte table on 20,000 x 512 bytes); older numpy: the byte table.
    """
    array = np.ascontiguousarray(packed.numpy())
    if hasattr(np, "bitwise_count"):
        words = array.view(np.uint64) if array.shape[1] % 8 == 0 else array
        return torch.from_numpy(np.bitwise_count(words).sum(axis=1, dtype=np.int64))
    return torch.from_numpy(_POPCOUNT8[array].sum(axis=1, dtype=np.int64))


def _brute_force_topk(counter: _MismatchCounter, queries: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Exact k smallest mismatch counts per query, ties broken by the lower database index.

    The sort key ``partial * M + index`` (``partial`` = mismatch minus a per-query constant, see
    :class:`_MismatchCounter`) is unique per database entry, so ``topk`` on it is deterministic and orders equal
    counts by index, exactly like a stable sort of the counts. It is formed in one fused pass from the GEMM output.
    """
    num_db = counter.num_db
    key_dtype = torch.int32 if (2 * counter.num_units + 1) * num_db < 2**31 else torch.int64
    base = (counter.db_base * num_db + torch.arange(num_db)).to(key_dtype)
    indices, counts = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        keys = _int8_matmul(counter.features(chunk), counter.db_features).to(key_dtype)
        keys = torch.topk(keys.mul_(-counter.weight * num_db).add_(base), k, dim=1, largest=False).values
        keys = keys.long()
        indices.append(keys % num_db)
        counts.append(keys // num_db + counter.offset(chunk)[:, None])
    return torch.cat(indices), torch.cat(counts)


def _faiss_topk(db: Tensor, queries: Tensor, num_units: int, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Exact k nearest binary codes with faiss' ``IndexBinaryFlat``, ties re-ordered by the lower index.

    faiss returns the right distances but orders (and, at the k-th place, selects) tied entries in its own
    way. It is therefore asked for ``k' > k`` candidates: when the k'-th candidate is strictly farther than
    the k-th, every entry at most as far as the k-th is among the candidates, and sorting them by
    ``(distance, index)`` gives exactly the brute-force answer. Queries whose ties reach past the k'-th
    candidate are recomputed with the exact GEMM kernel.
    """
    import faiss

    num_db = db.shape[0]
    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index.add(db.contiguous().numpy())
    num_candidates = min(num_db, 2 * k + 16)
    distances, candidates = index.search(queries.contiguous().numpy(), num_candidates)
    keys = np.sort(distances.astype(np.int64) * num_db + candidates, axis=1)[:, :k]
    indices = torch.from_numpy(keys % num_db)
    counts = torch.from_numpy(keys // num_db)
    if num_candidates < num_db:
        unresolved = np.flatnonzero(distances[:, num_candidates - 1] <= distances[:, k - 1])
        if unresolved.size:
            rows = torch.from_numpy(unresolved)
            counter = _MismatchCounter(db, binary=True, num_states=2, num_units=num_units)
            exact_indices, exact_counts = _brute_force_topk(counter, queries[rows], k, chunk_size)
            indices[rows] = exact_indices
            counts[rows] = exact_counts
    return indices, counts


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _check_same_layer(query: LayerCode, db: LayerCode) -> None:
    """Raise ValueError unless two layer codes come from the same layer (kind, unit shape, states)."""
    if (query.kind, tuple(query.shape), query.num_states) != (db.kind, tuple(db.shape), db.num_states):
        raise ValueError(
            f"codes of different layers cannot be compared: received {query.name!r} (kind {query.kind!r}, "
            f"unit shape {tuple(query.shape)}, {query.num_states} states) and {db.name!r} (kind {db.kind!r}, "
            f"unit shape {tuple(db.shape)}, {db.num_states} states). Encode both sets with the same model and "
            "pick the same layer."
        )


def _layer_code(codes: LayerCode | PartitionCodes, layer: str | int | None, role: str) -> LayerCode:
    """The LayerCode of ``codes`` at ``layer`` (ignored when ``codes`` already is a LayerCode)."""
    if isinstance(codes, LayerCode):
        return codes
    if isinstance(codes, PartitionCodes):
        if layer is None:
            raise ValueError(
                f"{role} are PartitionCodes of {len(codes)} layers {list(codes)}; pass `layer` as one of these "
                f"names or a position in 0..{len(codes) - 1}."
            )
        names = list(codes)
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not -len(names) <= layer < len(names):
                raise ValueError(
                    f"layer position {layer} is out of range for {role} with {len(names)} layers {names}."
                )
            return codes[names[layer]]
        if layer not in names:
            raise ValueError(f"layer {layer!r} is not among the layers of {role}: {names}.")
        return codes[layer]
    raise TypeError(
        f"{role} must be PartitionCodes (from cnnlens.spline.partition_codes) or one LayerCode; received "
        f"{type(codes).__name__}."
    )


def _kernel_inputs(code: LayerCode) -> Tensor:
    """The stored codes as the kernels take them: packed bits for binary codes, int64 states otherwise."""
    return code.data.cpu() if code.kind == "binary" else code.states().cpu()


def _chunk_rows(num_db: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(num_db, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of query rows; received {chunk_size}.")
    return chunk_size


def partition_distance(
    a: LayerCode | PartitionCodes,
    b: LayerCode | PartitionCodes,
    layer: str | int | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Pairwise partition distance of eq. 15 of 000 between the samples of ``a`` and ``b`` at one layer.

    .. math::

        d\big(t^{(\ell)}(x_1), t^{(\ell)}(x_2)\big)
            = 1 - \frac{1}{D^{(\ell)}} \sum_{k=1}^{D^{(\ell)}} 1\big([t^{(\ell)}(x_1)]_k = [t^{(\ell)}(x_2)]_k\big)

    with :math:`t^{(\ell)}` the region code of eq. 14 (one state per unit: a ReLU's sign bit, a max-pool's
    argmax within its window, hardtanh's 3 pieces) and :math:`D^{(\ell)}` the number of units. The count
    of agreeing units is computed exactly in integers (one int8 GEMM over bits or one-hot states), so the
    result is exactly ``mismatches / D`` rounded once to float64.

    Parameters
    ----------
    a, b : PartitionCodes or LayerCode
        Codes of two sets of samples (``Na`` and ``Nb`` samples), e.g. from
        :func:`cnnlens.spline.partition_codes` of the same model.
    layer : str or int, optional
        Layer name or position when ``a``/``b`` are PartitionCodes; ignored for LayerCode arguments.
    chunk_size : int, optional
        Rows of ``a`` processed at once (bounds memory; the result does not depend on it). By default chosen
        so that one chunk's work array holds about 8 million entries.

    Returns
    -------
    Tensor
        float64 ``(Na, Nb)`` in [0, 1]; symmetric when ``a`` and ``b`` are the same codes, zero on the diagonal.

    Raises
    ------
    ValueError
        If the two codes come from different layers (kind, unit shape or number of states differ), or the
        layer is not found.
    TypeError
        If an argument is not PartitionCodes or LayerCode.
    """
    code_a = _layer_code(a, layer, "a")
    code_b = _layer_code(b, layer, "b")
    _check_same_layer(code_a, code_b)
    num_units = code_a.num_units
    counter = _MismatchCounter(_kernel_inputs(code_b), binary=code_b.kind == "binary", num_states=code_b.num_states,
                               num_units=num_units)
    queries = _kernel_inputs(code_a)
    rows = _chunk_rows(len(code_b), chunk_size)
    out = torch.empty(len(code_a), len(code_b), dtype=torch.float64)
    for start in range(0, len(code_a), rows):
        out[start : start + rows] = counter(queries[start : start + rows]).double() / num_units
    return out


def nearest_neighbors(
    query_codes: LayerCode | PartitionCodes,
    db_codes: LayerCode | PartitionCodes,
    k: int,
    layer: str | int | None = None,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    distributed: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest database samples of each query under the partition distance (eq. 15 of 000).

    This is the search behind Fig. 4 of 000. The answer equals a brute-force evaluation of eq. 15 followed by
    a stable sort: ascending distance, and among equal distances the lower database index first (partition
    distances are multiples of ``1 / D``, so ties are the rule, not the exception).

    Parameters
    ----------
    query_codes, db_codes : PartitionCodes or LayerCode
        Codes of the ``Nq`` queries and ``Nd`` database samples, from the same model.
    k : int
        Number of neighbours, ``1 <= k <= Nd``.
    layer : str or int, optional
        Layer name or position when the codes are PartitionCodes; ignored for LayerCode arguments.
    backend : {"auto", "gemm", "faiss"}
        ``"gemm"``: one int8 GEMM over unpacked bits / one-hot states per query chunk, then an exact top-k.
        ``"faiss"``: faiss-cpu ``IndexBinaryFlat`` (binary codes only; ties re-sorted to the brute-force
        order). ``"auto"`` picks faiss for binary codes of at most 512 bits when faiss is installed and the
        GEMM otherwise (the faster kernel on the measurements of ``benchmarks/bench_neighbors.py``).
    chunk_size : int, optional
        Queries processed at once (bounds memory to about ``chunk_size * Nd`` integers; the result does not
        depend on it).
    distributed : bool, optional
        Under ``torchrun`` (an initialised ``torch.distributed`` process group of two ranks or more, the same codes
        on every rank) the database is split over the ranks and the per-rank top-k lists are merged exactly; every
        rank receives the answer of one process. None (default): so whenever a process group is initialised; True:
        the same, but raise without one; False: search on each rank alone.

    Returns
    -------
    indices : LongTensor
        ``(Nq, k)`` database indices, nearest first.
    distances : Tensor
        float64 ``(Nq, k)``, ascending along each row.

    Raises
    ------
    ValueError
        Different layers, ``k`` out of range, unknown backend, or faiss requested for non-binary codes.
    ImportError
        If ``backend="faiss"`` and faiss-cpu is not installed.
    """
    query = _layer_code(query_codes, layer, "query_codes")
    db = _layer_code(db_codes, layer, "db_codes")
    _check_same_layer(query, db)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(db):
        raise ValueError(
            f"k must be an integer in 1..{len(db)} (the database size); received {k!r}. "
            "Ask for fewer neighbours or encode a larger database."
        )
    if backend not in ("auto", "gemm", "faiss"):
        raise ValueError(f"backend must be 'auto', 'gemm' or 'faiss'; received {backend!r}.")
    binary = db.kind == "binary"
    if backend == "faiss" and not binary:
        raise ValueError(
            f"backend='faiss' only handles binary (ReLU-like) codes; layer {db.name!r} has {db.kind!r} codes. "
            "Use backend='gemm' or 'auto'."
        )
    if backend == "auto":
        backend = "faiss" if binary and db.num_units <= _FAISS_MAX_BITS and _faiss_available() else "gemm"
    if distributed_active(distributed):
        indices, counts = sharded_neighbors(query, db, k, backend, chunk_size)
        return indices, counts.double() / db.num_units
    db_inputs = _kernel_inputs(db)
    queries = _kernel_inputs(query)
    rows = _chunk_rows(len(db), chunk_size)
    if backend == "faiss":
        indices, counts = _faiss_topk(db_inputs, queries, db.num_units, k, rows)
    else:
        counter = _MismatchCounter(db_inputs, binary=binary, num_states=db.num_states, num_units=db.num_units)
        indices, counts = _brute_force_topk(counter, queries, k, rows)
    return indices, counts.double() / db.num_units
