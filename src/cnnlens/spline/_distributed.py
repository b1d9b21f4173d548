"""Dataset-wide work in batches, and data-parallel under ``torch.distributed`` (``torchrun``).

When a process group is initialised with two ranks or more, :func:`partition_codes` and :func:`templates` over a
Dataset and :func:`nearest_neighbors` split their work over the ranks and return, on every rank, what one process
computes on the whole data set, to the last bit:

* a data set is read in the batches one process reads (``batch_size`` / ``chunk_size`` samples), and the batches
  are shared out as :class:`torch.utils.data.DistributedSampler` (``shuffle=False``) shares out indices: with W
  ranks, rank r takes batches r, r + W, r + 2W, ..., the last ones wrapping round to the start so that every rank
  holds the same number. Each sample is thus computed in the same batch as in one process (convolution kernels may
  round differently at another batch size). Each result tensor is gathered with one ``all_gather`` of equal-sized
  byte tensors (on the current GPU for NCCL, on the CPU for gloo), put back in the original order, and the wrapped
  duplicates are dropped;
* the nearest-neighbour database is split into W contiguous parts: each rank finds the k nearest codes of its part,
  and the W candidate lists are merged by (distance, database index), the order one process sorts by.

Before any work the ranks compare what they were given (the function and its settings, the data set's length and its
first and last samples, a checksum of the model's parameters and buffers, the codes searched). A disagreement raises
ValueError on every rank, naming what differs, instead of gathering mismatched shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Subset

__all__ = ["dataset_templates", "distributed_active", "sharded_neighbors", "sharded_partition_codes"]

#: Samples per batch of templates over a Dataset when ``chunk_size`` is not given.
_DATASET_BATCH = 256


def _world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


def distributed_active(distributed: bool | None, x: Any = None) -> bool:
    """Whether to shard: ``distributed=None`` (auto) shards when a process group of two ranks or more is initialised
    and ``x`` is a Dataset (or no data is given: the code database of :func:`nearest_neighbors`); True requires a
    process group; False never shards."""
    if distributed is False:
        return False
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is True and not initialised:
        raise ValueError("distributed=True needs an initialised process group: launch with torchrun and call "
                         "torch.distributed.init_process_group() first (or pass distributed=None or False).")
    if not initialised or dist.get_world_size() < 2:
        return False
    return distributed is True or x is None or isinstance(x, Dataset)


def _digest(tensors: Sequence[Tensor]) -> str:
    """A checksum of the values, shapes and dtypes of ``tensors`` (12 hex digits)."""
    h = hashlib.blake2b(digest_size=6)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_digest(model: Callable[[Tensor], Tensor]) -> str:
    if isinstance(model, nn.Module):
        state = model.state_dict()
        return f"parameters and buffers with checksum {_digest([v for _, v in sorted(state.items())])}"
    return f"{type(model).__module__}.{getattr(model, '__qualname__', type(model).__qualname__)}"


def _sample(x: Tensor | Dataset, i: int) -> Tensor:
    item = x[i]
    return item[0] if isinstance(item, (tuple, list)) else item


def _data_digest(x: Tensor | Dataset) -> str:
    """Length and a checksum of the first and last samples (the data set itself is never gathered)."""
    n = len(x)
    return f"{n} samples, the first and last with checksum {_digest([_sample(x, 0), _sample(x, n - 1)] if n else [])}"


def _codes_digest(code: Any) -> str:
    return f"{len(code)} codes of layer {code.name!r} with checksum {_digest([code.data])}"


def _agree(what: str, facts: dict[str, Any]) -> None:
    """Raise ValueError on every rank unless all ranks hold the same ``facts`` (one all_gather_object)."""
    _, world = _world()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, facts)
    keys = list(dict.fromkeys(k for g in gathered for k in g))
    differ = [k for k in keys if any(g.get(k) != gathered[0].get(k) for g in gathered)]
    if differ:
        detail = " ".join(f"{k.capitalize()}: " + "; ".join(f"rank {r}: {g.get(k)}" for r, g in enumerate(gathered))
                          + "." for k in differ)
        raise ValueError(f"{what} under torch.distributed: the {world} ranks disagree on the {', '.join(differ)}. "
                         f"{detail} Every rank must call it with the same model, data and settings, or pass "
                         "distributed=False to compute on each rank alone.")


def _collective_device() -> torch.device:
    """Where collectives run: the current GPU for NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (same shape and dtype on all ranks, checked by the caller), as bytes: any dtype, any
    backend."""
    _, world = _world()
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).to(_collective_device())
    parts = [torch.empty_like(raw) for _ in range(world)]
    dist.all_gather(parts, raw)
    return [p.to(t.device).view(t.dtype).reshape(t.shape) for p in parts]


def _batch(x: Tensor | Dataset, lo: int, hi: int) -> Tensor:
    """Samples ``lo .. hi - 1`` of ``x`` as one batch (a Dataset's items ``(x, y)`` stacked as one process does)."""
    from ._codes import _batches

    return x[lo:hi] if isinstance(x, Tensor) else next(_batches(Subset(x, range(lo, hi)), hi - lo))


@dataclass(frozen=True)
class _Shard:
    """This rank's batches of a data set of ``total`` samples read ``batch_size`` at a time.

    The batches are the ones one process reads (samples ``[b B, (b + 1) B)``), shared out as DistributedSampler
    (``shuffle=False``) shares out the batch indices: rank r takes batches r, r + W, ..., the last ones wrapping
    round to the start. So every sample is computed in the same batch as in one process, and the result is the same
    to the last bit (kernels may round differently at another batch size or composition).
    """

    total: int
    batch_size: int

    @property
    def num_batches(self) -> int:
        return -(-self.total // self.batch_size)

    def batch_ids(self, rank: int) -> list[int]:
        """Rank ``rank``'s batches, wrapped duplicates included (rank r's j-th is padded position r + j W)."""
        world = _world()[1]
        return list(DistributedSampler(range(self.num_batches), num_replicas=world, rank=rank, shuffle=False,
                                       drop_last=False))

    def bounds(self, b: int) -> tuple[int, int]:
        return b * self.batch_size, min((b + 1) * self.batch_size, self.total)

    def batches(self, x: Tensor | Dataset) -> list[Tensor]:
        """This rank's batches of ``x``."""
        return [_batch(x, *self.bounds(b)) for b in self.batch_ids(_world()[0])]

    def gather(self, what: str, rows: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor of per-sample ``rows`` (this rank's batches, concatenated) over all samples, in order.

        Every rank's rows are padded to the same length for one ``all_gather``; the wrapped duplicate batches are
        dropped.
        """
        _agree(f"{what} (results)", {"results": [(tuple(t.shape[1:]), str(t.dtype)) for t in rows]})
        world = _world()[1]
        length = -(-self.num_batches // world) * self.batch_size
        out = []
        for t in rows:
            padded = torch.cat([t, t.new_zeros(length - len(t), *t.shape[1:])])
            parts = _all_gather(padded)
            full = t.new_empty(self.total, *t.shape[1:])
            for rank, part in enumerate(parts):
                offset = 0
                for j, b in enumerate(self.batch_ids(rank)):
                    lo, hi = self.bounds(b)
                    if rank + j * world < self.num_batches:  # not a wrapped duplicate
                        full[lo:hi] = part[offset:offset + hi - lo]
                    offset += hi - lo
            out.append(full)
        return out


def _shard(what: str, x: Tensor | Dataset, batch_size: int, facts: dict[str, Any],
           model: Callable[[Tensor], Tensor]) -> _Shard:
    """Check that the ranks agree on the call, then this rank's shard of ``x``."""
    _agree(what, {"model": _model_digest(model), "data set": _data_digest(x), "batch size": batch_size, **facts})
    if len(x) == 0:
        raise ValueError("x holds no samples; pass at least one.")
    return _Shard(len(x), batch_size)


def sharded_partition_codes(model: Callable[[Tensor], Tensor], x: Tensor | Dataset,
                            layers: Sequence[str | int] | None, batch_size: int) -> Any:
    """:func:`cnnlens.spline.partition_codes` of ``x`` with each rank encoding its shard, gathered on every rank."""
    from ._codes import LayerCode, PartitionCodes, partition_codes

    shard = _shard("partition_codes", x, batch_size, {"layers": repr(layers)}, model)
    local = PartitionCodes.cat([partition_codes(model, xb, layers, batch_size=batch_size, distributed=False)
                                for xb in shard.batches(x)])
    codes = list(local.values())
    data = shard.gather("partition_codes", [c.data for c in codes])
    return PartitionCodes([LayerCode(c.name, c.kind, c.shape, c.num_states, d) for c, d in zip(codes, data,
                                                                                               strict=True)])


def _model_device(model: Callable[[Tensor], Tensor], fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return fallback if param is None else param.device


def _templates_of(model: Callable[[Tensor], Tensor], batches: Iterable[Tensor],
                  classes: Sequence[int] | Tensor | None, chunk_size: int | None, approximate: bool) -> Any:
    """Templates of every sample of ``batches``, one batch at a time, concatenated."""
    from ._affine import Templates, templates

    parts = [templates(model, xb.to(_model_device(model, xb.device)), classes, chunk_size=chunk_size,
                       approximate=approximate, distributed=False) for xb in batches]
    if not parts:
        raise ValueError("x holds no samples; pass at least one.")
    return Templates(templates=torch.cat([p.templates for p in parts]), biases=torch.cat([p.biases for p in parts]),
                     inner_products=torch.cat([p.inner_products for p in parts]),
                     outputs=torch.cat([p.outputs for p in parts]), classes=parts[0].classes,
                     **_merged_flags([_flags(p) for p in parts]))


def _flags(t: Any) -> tuple:
    """What a :class:`Templates` says of how it was computed and checked (merged over batches and ranks)."""
    return (t.approximate, t.path, t.fallback_reason, t.identity_error, t.bias_fallback, t.bias_method)


def _merged_flags(flags: list[tuple]) -> dict[str, Any]:
    """The :func:`_flags` of several parts as one: the worst identity error, every distinct reason and method."""
    from ._affine import AUTOGRAD, TRANSPOSED

    def joined(i: int, sep: str) -> str | None:
        return sep.join(dict.fromkeys(f[i] for f in flags if f[i])) or None

    errors = [f[3] for f in flags if f[3] is not None]
    return {"approximate": any(f[0] for f in flags), "path": AUTOGRAD if any(f[1] == AUTOGRAD for f in flags)
            else TRANSPOSED, "fallback_reason": joined(2, "; "), "identity_error": max(errors) if errors else None,
            "bias_fallback": joined(4, "; "), "bias_method": joined(5, " and ")}


def dataset_templates(model: Callable[[Tensor], Tensor], x: Tensor | Dataset, classes: Sequence[int] | Tensor | None,
                      chunk_size: int | None, approximate: bool, distributed: bool | None) -> Any:
    """:func:`cnnlens.spline.templates` over a Dataset (items ``(x, y)`` or ``x``), ``chunk_size`` (default 256)
    samples at a time; under torch.distributed each rank computes its shard and every rank receives all templates
    in order."""
    from ._codes import _batches

    batch_size = chunk_size or _DATASET_BATCH
    if not distributed_active(distributed, x):
        return _templates_of(model, _batches(x, batch_size), classes, chunk_size, approximate)
    from ._affine import Templates

    rows = None if classes is None else torch.as_tensor(classes).reshape(-1).tolist()
    shard = _shard("templates", x, batch_size, {"classes": rows, "approximate": approximate}, model)
    local = _templates_of(model, shard.batches(x), classes, chunk_size, approximate)
    flags: list[Any] = [None] * _world()[1]
    dist.all_gather_object(flags, _flags(local))
    tpl, biases, inner, outputs = shard.gather("templates", [local.templates, local.biases, local.inner_products,
                                                             local.outputs])
    return Templates(templates=tpl, biases=biases, inner_products=inner, outputs=outputs, classes=local.classes,
                     **_merged_flags(flags))


def sharded_neighbors(query: Any, db: Any, k: int, backend: str, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """Exact k nearest codes (indices, mismatch counts) with the database split over the ranks, merged exactly.

    Each rank searches its contiguous part ``[r M / W, (r + 1) M / W)`` of the M database codes for its k nearest
    (fewer when the part is smaller; padded with entries farther than any code). Among the W k candidates of a query,
    the k smallest keys ``count * (M + 1) + index`` are the k nearest with ties broken by the lower database index,
    as in one process: every code of the global answer is among the k nearest of its own part.
    """
    from ._distance import _brute_force_topk, _chunk_rows, _faiss_topk, _kernel_inputs, _MismatchCounter

    _agree("nearest_neighbors", {"k": k, "backend": backend, "chunk size": chunk_size,
                                 "queries": _codes_digest(query), "database": _codes_digest(db)})
    rank, world = _world()
    num_db, num_queries = len(db), len(query)
    lo, hi = rank * num_db // world, (rank + 1) * num_db // world
    indices = torch.full((num_queries, k), num_db, dtype=torch.int64)
    counts = torch.full((num_queries, k), db.num_units + 1, dtype=torch.int64)
    local_k = min(k, hi - lo)
    if local_k > 0:
        part = db[lo:hi]
        queries = _kernel_inputs(query)
        rows = _chunk_rows(hi - lo, chunk_size)
        if backend == "faiss":
            found, dist_counts = _faiss_topk(_kernel_inputs(part), queries, db.num_units, local_k, rows)
        else:
            counter = _MismatchCounter(_kernel_inputs(part), binary=db.kind == "binary", num_states=db.num_states,
                                       num_units=db.num_units)
            found, dist_counts = _brute_force_topk(counter, queries, local_k, rows)
        indices[:, :local_k] = found + lo
        counts[:, :local_k] = dist_counts
    keys = torch.cat([c * (num_db + 1) + i for c, i in zip(_all_gather(counts), _all_gather(indices),
                                                            strict=True)], dim=1)
    best = torch.topk(keys, k, dim=1, largest=False, sorted=True).values
    return best % (num_db + 1), best // (num_db + 1)
