"""``spline-regions`` (beyond 000): how many affine regions a straight path between two digits crosses.

000 sec. 7 describes the input-space partition a network induces but never counts it on data. Here the exact walk
:func:`cnnlens.spline.regions_on_segment` (float64, every ReLU sign flip and max-pool argmax switch of every layer of
LeNet-5) counts the regions crossed by the segment between two test digits of the same class and of different
classes, with the network at initialisation and after training. The digits come from a class-stratified sample of
the test split (``pool`` digits, seeded): pair ``p`` joins two digits of class ``p mod 10`` (same class) or a digit of
class ``p mod 10`` and one of the next class (different classes). A 2D slice of input space through three digits of
the same sample (a '0', a '1' and a '7'), coloured by region (the full code of all six layers, eq. 14), shows the
same partition in the plane.

The walk costs one forward-mode pass per region (about 40 ms on a 2-core CPU), and a whole segment between two
digits crosses 1,000-2,000 regions of a trained LeNet-5, so the configurations walk the middle ``segment_fraction``
of each segment (the part between the two digits, away from both): the full one the middle 10% of 10 segments per
kind (about 5 minutes; whole segments of 5 pairs took about 25), the quick one the middle 1% of 2. Metrics are region
counts on the walked part (``segment_fraction`` is reported with them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import stratified_subset
from ..nn.models import lenet5
from ..spline import PartitionCodes, partition_codes, plot_region_slice, region_ids_from_codes, regions_on_segment
from ..train import evaluate, seed_everything
from ._claims import Claim, Greater, MeanError
from ._recipes import AdamBudget, load_digits
from ._registry import ExperimentResult, RunContext, register_experiment


@dataclass(frozen=True)
class RegionsConfig(AdamBudget):
    """Training budget (Adam), digit pairs per kind, size of the stratified test sample they are drawn from,
    walked fraction and slice resolution."""

    pairs: int = 5
    pool: int = 100
    segment_fraction: float = 1.0
    slice_resolution: int = 200
    slice_margin: float = 0.25


def _pairs(labels: Tensor, count: int) -> dict[str, list[tuple[int, int]]]:
    """Digit pairs by rule: pair ``p`` is two digits of class ``c = p mod 10`` (same) or one of ``c`` and one of
    ``c + 1 mod 10`` (different), the ``(p // 10)``-th digits of those classes in ``labels``' order."""
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(10)]
    if count < 1:
        raise ValueError(f"pairs must be a positive number of digit pairs per kind; received {count}.")
    need = (count - 1) // 10 + 2
    if min(len(b) for b in by_class) < need:
        raise ValueError(f"{count} pairs per kind need at least {need} digits of every class; the sample holds "
                         f"{[len(b) for b in by_class]} per class. Raise `pool` or lower `pairs`.")
    same = [(by_class[p % 10][p // 10], by_class[p % 10][p // 10 + 1]) for p in range(count)]
    different = [(by_class[p % 10][p // 10], by_class[(p + 1) % 10][p // 10]) for p in range(count)]
    return {"same": same, "diff": different}


def _walk(model: nn.Module, x0: Tensor, x1: Tensor, fraction: float) -> int:
    """Number of regions crossed by the middle ``fraction`` of the segment x0 -> x1 (exact walk)."""
    start = x0 + (0.5 - fraction / 2) * (x1 - x0)
    end = x0 + (0.5 + fraction / 2) * (x1 - x0)
    return regions_on_segment(model, start, end).num_regions


def _slice_ids(ctx: RunContext, model: nn.Module, anchors: Tensor, resolution: int, margin: float, stage: str
               ) -> dict[str, np.ndarray]:
    """Region index of every point ``a + u (b - a) + v (c - a)`` of a grid over [-margin, 1 + margin]^2.

    Returns one ``(resolution, resolution)`` index map per layer (that layer's code alone) and one for the whole
    network (``"all layers"``: the codes of every layer together, i.e. the affine piece of the network).
    """
    a, b, c = anchors.double()
    grid = torch.linspace(-margin, 1 + margin, resolution, dtype=torch.float64)
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    points = (a + u.reshape(-1, 1, 1, 1) * (b - a) + v.reshape(-1, 1, 1, 1) * (c - a)).to(
        next(model.parameters()).dtype)
    chunks = [points[i:i + 2048] for i in range(0, len(points), 2048)]
    codes = PartitionCodes.cat([partition_codes(model, chunk, batch_size=1024)
                                for chunk in ctx.track(chunks, f"partition codes (slice, {stage})")])
    maps = {name: region_ids_from_codes([codes[name].data]) for name in codes}
    maps["all layers"] = region_ids_from_codes([codes[name].data for name in codes])
    return {name: ids.reshape(resolution, resolution).numpy() for name, ids in maps.items()}


def _walked(fraction: float) -> str:
    """'the whole of' or 'the middle 2% of': the walked part of each segment."""
    return "the whole of" if fraction == 1 else f"the middle {fraction:.0%} of"


def _density_reading(diff: float, same: float) -> str:
    """How the region densities (regions per unit length) of different- and same-class paths compare."""
    if diff > 1.1 * same:
        return ": different-class paths cut through a denser part of the partition, not only a longer one. "
    if diff < same / 1.1:
        return ": per unit length, different-class paths cross a sparser part of the partition. "
    return ": the densities agree within 10%, so a difference in counts comes from the path lengths. "


def _counts_figure(counts: dict[str, list[int]], fraction: float) -> Figure:
    fig = Figure(figsize=(5.2, 3.2))
    ax = fig.subplots()
    names = list(counts)
    ax.boxplot([counts[n] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("regions crossed (exact)")
    ax.set_title(f"LeNet-5: regions on {_walked(fraction)} digit-to-digit segments", fontsize=9)
    fig.tight_layout()
    return fig


def _setting(cfg: RegionsConfig) -> str:
    """The claim's setting for configuration ``cfg``."""
    return (f"beyond the paper: LeNet-5 trained on mnist5k, {cfg.pairs} pairs of test digits per kind from a "
            f"class-stratified sample of {cfg.pool}, {_walked(cfg.segment_fraction)} each segment walked exactly in "
            "float64")


FULL = RegionsConfig(pairs=10, segment_fraction=0.1)


@register_experiment(
    "spline-regions",
    title="(beyond 000) Exact counts of the affine regions crossed by straight paths between digits.",
    paper="000 sec. 7 (partition, eq. 14); beyond the paper",
    quick=RegionsConfig(epochs=2, train_size=1500, batch_size=32, pairs=2, segment_fraction=0.01,
                        slice_resolution=48),
    full=FULL,
    metrics=("regions_same_init", "regions_diff_init", "regions_same_trained", "regions_diff_trained",
             "slice_regions_init", "slice_regions_trained", "pairs"),
    claims=(
        Claim("between-classes-denser", "beyond 000 (sec. 7, eq. 14)",
              "After training, a straight path between digits of different classes crosses more affine regions than "
              "one between digits of the same class (a claim of cnnlens, not of the paper; judged on the mean count "
              "over the digit pairs of each kind, on the walked middle part of each segment).",
              Greater("regions_diff_trained", "regions_same_trained",
                      MeanError("regions_sd_diff_trained", "pairs", "digit pairs"),
                      MeanError("regions_sd_same_trained", "pairs", "digit pairs"),
                      label="regions crossed, different - same class"),
              setting=_setting(FULL)),
    ),
)
def run(cfg: RegionsConfig, ctx: RunContext) -> ExperimentResult:
    """Count regions on digit-to-digit segments and in a 2D slice, at initialisation and after training."""
    if not 0 < cfg.segment_fraction <= 1:
        raise ValueError(f"segment_fraction must lie in (0, 1]; received {cfg.segment_fraction}.")
    digits = load_digits(ctx)
    train = digits.train
    sample = stratified_subset(digits.test, min(cfg.pool, len(digits.test)), seed=ctx.seed)
    pairs = _pairs(sample.labels, cfg.pairs)
    first_of = [int(torch.nonzero(sample.labels == c)[0]) for c in (0, 1, 7)]
    anchors = sample.images[first_of]
    seed_everything(ctx.seed)
    model = lenet5(num_classes=10).eval()
    metrics: dict[str, float] = {"segment_fraction": cfg.segment_fraction, "pairs": float(cfg.pairs)}
    counts: dict[str, list[int]] = {}
    figures: dict[str, Figure] = {}
    for stage in ("init", "trained"):
        if stage == "trained":
            ctx.fit("lenet5", model, stratified_subset(train, cfg.train_size, seed=ctx.seed), epochs=cfg.epochs,
                    batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam")
            metrics["test_acc"] = evaluate(model, digits.test).accuracy
        for kind, index_pairs in pairs.items():
            found = [_walk(model, sample.images[i], sample.images[j], cfg.segment_fraction)
                     for i, j in ctx.track(index_pairs, f"region walk ({stage}, {kind}-class pairs)")]
            counts[f"{kind}_{stage}"] = found
            metrics[f"regions_{kind}_{stage}"] = float(np.mean(found))
            metrics[f"regions_sd_{kind}_{stage}"] = float(np.std(found, ddof=1)) if len(found) > 1 else float("nan")
            lengths = [cfg.segment_fraction * float((sample.images[i] - sample.images[j]).norm())
                       for i, j in index_pairs]
            metrics[f"regions_per_pixel_unit_{kind}_{stage}"] = float(np.mean(np.divide(found, lengths)))
            ctx.log(f"{stage}, {kind}-class pairs: regions crossed {found} over lengths "
                    f"{[round(v, 2) for v in lengths]}")
        maps = _slice_ids(ctx, model, anchors, cfg.slice_resolution, cfg.slice_margin, stage)
        extent = (-cfg.slice_margin, 1 + cfg.slice_margin, -cfg.slice_margin, 1 + cfg.slice_margin)
        for name, ids in maps.items():
            key = "" if name == "all layers" else f"_{name}"
            metrics[f"slice_regions_{stage}{key}"] = float(len(np.unique(ids)))
        for name in list(maps)[-3:-1]:  # the two deepest layers: coarse enough to see single regions
            figures[f"slice_{stage}_{name}"] = plot_region_slice(
                maps[name], extent=extent, anchors={"'0'": (0.0, 0.0), "'1'": (1.0, 0.0), "'7'": (0.0, 1.0)},
                boundaries=cfg.slice_resolution >= 150,
                title=f"LeNet-5 ({stage}), layer {name}: {len(np.unique(maps[name]))} regions on a "
                f"{cfg.slice_resolution}^2 grid through three test digits")
    figures["segment_regions"] = _counts_figure(counts, cfg.segment_fraction)
    m = metrics
    last = list(maps)[-2]
    growth = (m["regions_same_trained"] + m["regions_diff_trained"]) / (m["regions_same_init"]
                                                                        + m["regions_diff_init"])
    notes = (
        f"Exact region counts on {_walked(cfg.segment_fraction)} {cfg.pairs} same-class and {cfg.pairs} "
        f"different-class test-digit segments (LeNet-5, {m['test_acc']:.1%} test accuracy after training). "
        f"At initialisation: {m['regions_same_init']:.0f} (same class) vs {m['regions_diff_init']:.0f} (different); "
        f"after training: {m['regions_same_trained']:.0f} vs {m['regions_diff_trained']:.0f}. "
        + f"Training changes the regions crossed by a factor {growth:.2f} "
        + ("(the learned partition is finer along paths between digits). " if growth > 1.2 else
           "(the learned partition is coarser along paths between digits). " if growth < 1 / 1.2 else
           "(within 20%: the partition does not become markedly finer or coarser along these paths). ")
        + ("Different-class segments cross more regions than same-class ones after training"
           if m["regions_diff_trained"] > m["regions_same_trained"] else
           "Same-class segments cross at least as many regions as different-class ones after training")
        + f"; per unit of Euclidean length the densities are {m['regions_per_pixel_unit_same_trained']:.1f} "
        f"(same) vs {m['regions_per_pixel_unit_diff_trained']:.1f} (different) regions"
        + _density_reading(m["regions_per_pixel_unit_diff_trained"], m["regions_per_pixel_unit_same_trained"])
        + (f"(With {cfg.pairs} pairs per kind these comparisons are indicative only.) " if cfg.pairs < 5 else "")
        + f"In the 2D slice through digits '0', '1', '7' ({cfg.slice_resolution}^2 grid, a lower bound: regions "
        f"thinner than the grid step are missed) the whole network's partition has {m['slice_regions_init']:.0f} "
        f"regions at initialisation and {m['slice_regions_trained']:.0f} after training"
        + (" - nearly every grid point lies in a region of its own, so the figures show single layers' partitions "
           f"(layer {last}: {m[f'slice_regions_init_{last}']:.0f} -> {m[f'slice_regions_trained_{last}']:.0f} "
           "regions). " if m["slice_regions_trained"] >= 0.95 * cfg.slice_resolution**2 else
           f" (layer {last} alone: {m[f'slice_regions_init_{last}']:.0f} -> "
           f"{m[f'slice_regions_trained_{last}']:.0f}). ")
    )
    return ExperimentResult(metrics, figures, notes, settings={"between-classes-denser": _setting(cfg)})
