"""``irevnet-memory`` (001 sec. 6.3.2): the i-RevNet trains without storing its activations.

"For the same reasons as in [RevNets], our scheme also allows avoiding storing any intermediate activations at
training time, making memory consumption for very deep i-RevNets not an issue in practice." Measured: the peak
memory and the time of one training step (forward, cross-entropy, backward, SGD step) of a bijective i-RevNet at 4,
8, 16 and 32 blocks, with the memory-saving backward of :class:`cnnlens.nn.IRevNet` (activations rebuilt from the
outputs, eq. 39) and with ordinary autograd; and, in float64, that both give the same gradients and batch-norm
running statistics. For scale, memcnn reports RevNet-110 at 85.7 MB with and 810.7 MB without memory saving.

Peak memory on the CPU: tracemalloc does not see torch's allocator and the process's resident set carries the
library and the allocator's caching, so the peak is counted tensor by tensor: a ``TorchDispatchMode`` sees the
output of every aten operation of the step (backward included) and adds each new storage's bytes; a finalizer on
the storage subtracts them when it is freed. The peak is that of the live bytes allocated during the step
(activations, saved tensors, gradients, temporaries); the parameters, the optimiser's momentum buffers and the
input batch, allocated before the step, are not in it. ``benchmarks/bench_irevnet.py`` cross-checks it against the
kernel's peak resident set in fresh subprocesses.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..nn import IRevNet
from ..train import seed_everything
from ._claims import AllOf, AtLeast, AtMost, Claim, Estimated, Exact
from ._registry import ExperimentResult, RunContext, register_experiment

DEPTHS = (4, 8, 16, 32)


@dataclass(frozen=True)
class MemoryConfig:
    """Batch of random 3 x size x size images, 10 classes; the i-RevNet's blocks split over two stages (S~ by 2,
    then S_j by 2 at the second stage); ``repeats`` (>= 2, for a spread) interleaved timed steps per depth and
    mode, timed in process CPU time (one thread: sturdier than wall time on a shared machine)."""

    batch: int = 128
    size: int = 32
    mult: float = 4
    repeats: int = 9

    def __post_init__(self) -> None:
        if self.repeats < 2 or self.size % 4:
            raise ValueError(f"irevnet-memory needs repeats >= 2 (the time ratio's spread) and a size divisible by "
                             f"4 (two down-samplings by 2); received repeats={self.repeats}, size={self.size}")


class _LiveStorage(TorchDispatchMode):
    """Counts the bytes of the CPU tensor storages created under it and still alive; keeps their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.live:
                    self.live[key] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def _training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()

    return step


def training_step_peak_mb(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak MB of the tensor storages allocated during one SGD training step of ``model`` on (x, y), after one
    warm-up step (which allocates the momentum buffers); counted op by op as the module docstring says."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = _training_step(model, optimizer, x, y)
    step()
    with _LiveStorage() as counter:
        step()
    return counter.peak / 2**20


def _build(depth: int, cfg: MemoryConfig, saving: bool, seed: int) -> IRevNet:
    seed_everything(seed)
    return IRevNet(3, 10, blocks=(depth // 2, depth - depth // 2), strides=(1, 2), mult=cfg.mult,
                   memory_saving=saving)


def _gradient_agreement(seed: int) -> tuple[float, float]:
    """(max relative gradient difference, max batch-norm buffer difference) of memory saving vs autograd, float64,
    one training-mode step of an 8-block i-RevNet with dropout on random data."""
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(8) % 10
    runs = []
    for saving in (True, False):
        seed_everything(seed)
        model = IRevNet(3, 10, blocks=(4, 4), strides=(1, 2), dropout=0.2, memory_saving=saving).double()
        torch.manual_seed(seed + 1)
        nn.functional.cross_entropy(model(x)[0], y).backward()
        runs.append(([p.grad for p in model.parameters()], list(model.buffers())))
    scale = max(float(g.abs().max()) for g in runs[1][0])
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(runs[0][0], runs[1][0], strict=True)) / scale
    buffer_diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(runs[0][1], runs[1][1],
                                                                                     strict=True))
    return grad_diff, buffer_diff


def _figure(metrics: dict[str, float]) -> Figure:
    fig, (mem, tim) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, label in (("saving", "memory saving (activations rebuilt)"), ("autograd", "ordinary autograd")):
        mem.plot(DEPTHS, [metrics[f"peak_mb_{mode}_{d}"] for d in DEPTHS], marker="o", label=label)
        tim.plot(DEPTHS, [metrics[f"time_ms_{mode}_{d}"] for d in DEPTHS], marker="o", label=label)
    mem.set(xlabel="blocks", ylabel="peak memory of a training step (MB)", xticks=DEPTHS, ylim=(0, None),
            title="memory against depth")
    tim.set(xlabel="blocks", ylabel="time of a training step (ms)", xticks=DEPTHS, ylim=(0, None),
            title="time against depth")
    mem.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _setting(cfg: MemoryConfig) -> str:
    return (f"CPU, one thread; a bijective i-RevNet (S~ by 2, blocks split over two stages, S_j by 2 at the second, "
            f"bottleneck 1x1-3x3-1x1 with 1/{cfg.mult:g} middle channels) on {cfg.batch} random 3x{cfg.size}x"
            f"{cfg.size} images, instead of RevNet-110 / i-RevNets on ImageNet GPUs; peak = live bytes of the "
            "tensor storages allocated during one SGD step (forward, backward, gradients), counted op by op with a "
            "TorchDispatchMode and storage finalizers (parameters, momentum buffers and the batch excluded)")


@register_experiment(
    "irevnet-memory",
    title="i-RevNet training without stored activations: peak memory and time of a step against depth.",
    paper="001 sec. 6.3.2",
    quick=MemoryConfig(batch=4, size=16, repeats=2),
    full=MemoryConfig(),
    metrics=tuple(f"{key}_{d}" for d in DEPTHS for key in ("peak_mb_saving", "peak_mb_autograd", "time_ms_saving",
                                                           "time_ms_autograd"))
    + ("grad_max_rel_diff", "bn_stats_max_diff"),
    claims=(
        Claim("memory-flat-in-depth", "001 sec. 6.3.2; memcnn (RevNet-110)",
              "The memory of training does not grow with depth when the activations are rebuilt from the outputs, "
              "while ordinary backpropagation stores them and grows linearly (memcnn: RevNet-110 at 85.7 MB vs "
              "810.7 MB). Judged: from 4 to 32 blocks the saving peak grows by at most 1.25x, the autograd peak "
              "by at least 4x (half of the 8x of proportional growth).",
              AllOf((("saving flat", AtMost("saving_growth", 1.25, label="saving peak 32 / 4 blocks")),
                     ("autograd linear", AtLeast("autograd_growth", 4.0, label="autograd peak 32 / 4 blocks")))),
              paper_value="85.7 MB vs 810.7 MB (RevNet-110)"),
        Claim("saving-halves-memory", "001 sec. 6.3.2 (issue 14 target)",
              "At 16 and more blocks a memory-saving training step needs at most half the peak memory of ordinary "
              "autograd (memcnn's RevNet-110: 0.11x).",
              AllOf((("16 blocks", AtMost("memory_ratio_16", 0.5, label="peak saving / autograd, 16 blocks")),
                     ("32 blocks", AtMost("memory_ratio_32", 0.5, label="peak saving / autograd, 32 blocks")))),
              paper_value=85.7 / 810.7),
        Claim("time-within-2x", "001 sec. 6.3.2 (issue 14 target)",
              "Rebuilding the activations costs at most 2x the time of an ordinary training step at 16 and 32 "
              "blocks (one extra evaluation of every F in the backward pass).",
              AllOf((("16 blocks", AtMost("time_ratio_16", 2.0, Estimated("time_ratio_16_se", "spread of the "
                                                                          "per-repeat ratios"),
                                          label="time saving / autograd, 16 blocks")),
                     ("32 blocks", AtMost("time_ratio_32", 2.0, Estimated("time_ratio_32_se", "spread of the "
                                                                          "per-repeat ratios"),
                                          label="time saving / autograd, 32 blocks"))))),
        Claim("same-gradients", "001 sec. 6.3.2, eq. 39",
              "The memory-saving backward gives the gradients of ordinary backpropagation and updates the "
              "batch-norm running statistics once per step (float64, 8 blocks, dropout 0.2: RNG replayed).",
              AllOf((("gradients", Exact("grad_max_rel_diff", 1e-10, "float64 rounding of the rebuilt activations "
                                         "(relative to the largest gradient)")),
                     ("running statistics", Exact("bn_stats_max_diff", 0.0, "none: the rebuilt pass must not "
                                                  "touch them"))),),
              setting="float64, 8 blocks, batch 8 of random 3x16x16 images, dropout 0.2", quick=True),
    ),
)
def run(cfg: MemoryConfig, ctx: RunContext) -> ExperimentResult:
    """Peak memory (op-level storage count) and interleaved step times, both modes, every depth."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn(cfg.batch, 3, cfg.size, cfg.size, generator=gen)
    y = torch.randint(0, 10, (cfg.batch,), generator=gen)
    metrics: dict[str, float] = {}
    for depth in ctx.track(DEPTHS, "depths"):
        steps = {}
        for saving, mode in ((True, "saving"), (False, "autograd")):
            metrics[f"peak_mb_{mode}_{depth}"] = training_step_peak_mb(_build(depth, cfg, saving, ctx.seed), x, y)
            model = _build(depth, cfg, saving, ctx.seed)
            steps[mode] = _training_step(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), x, y)
            steps[mode]()  # warm-up
        times: dict[str, list[float]] = {mode: [] for mode in steps}
        for _ in range(cfg.repeats):
            for mode, step in steps.items():
                start = time.process_time()
                step()
                times[mode].append(1e3 * (time.process_time() - start))
        ratios = [s / a for s, a in zip(times["saving"], times["autograd"], strict=True)]
        for mode in steps:
            metrics[f"time_ms_{mode}_{depth}"] = statistics.median(times[mode])
        metrics[f"memory_ratio_{depth}"] = metrics[f"peak_mb_saving_{depth}"] / metrics[f"peak_mb_autograd_{depth}"]
        metrics[f"time_ratio_{depth}"] = statistics.median(ratios)
        metrics[f"time_ratio_{depth}_se"] = 1.2533 * statistics.stdev(ratios) / len(ratios) ** 0.5  # of a median
    metrics["saving_growth"] = metrics["peak_mb_saving_32"] / metrics["peak_mb_saving_4"]
    metrics["autograd_growth"] = metrics["peak_mb_autograd_32"] / metrics["peak_mb_autograd_4"]
    metrics["grad_max_rel_diff"], metrics["bn_stats_max_diff"] = _gradient_agreement(ctx.seed)
    rows = "; ".join(f"{d} blocks: {metrics[f'peak_mb_saving_{d}']:.1f} MB vs {metrics[f'peak_mb_autograd_{d}']:.1f}"
                     f" MB ({metrics[f'memory_ratio_{d}']:.2f}x), {metrics[f'time_ms_saving_{d}']:.0f} vs "
                     f"{metrics[f'time_ms_autograd_{d}']:.0f} ms ({metrics[f'time_ratio_{d}']:.2f}x)" for d in DEPTHS)
    flat = "stays flat" if metrics["saving_growth"] <= 1.25 else "grows"
    notes = (f"Peak memory and CPU time of one training step, memory saving vs autograd: {rows}. From 4 to 32 "
             f"blocks the memory-saving peak {flat} ({metrics['saving_growth']:.2f}x), the autograd peak grows "
             f"{metrics['autograd_growth']:.2f}x. Largest gradient difference (float64, relative) "
             f"{metrics['grad_max_rel_diff']:.1e}, largest running-statistics difference "
             f"{metrics['bn_stats_max_diff']:.1e}.")
    settings = {c: _setting(cfg) for c in ("memory-flat-in-depth", "saving-halves-memory", "time-within-2x")}
    return ExperimentResult(metrics, {"memory_vs_depth": _figure(metrics)}, notes, settings)
