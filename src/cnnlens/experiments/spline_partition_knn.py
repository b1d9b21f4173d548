"""``spline-partition-knn``: nearest neighbours under the partition distance of each layer (000 sec. 7.3, Fig. 4).

LeNet-5 has six max-affine layers in forward order (act1 ReLU, s2 max-pool, act2 ReLU, s4 max-pool, act3 ReLU,
act4 ReLU), numbered l1..l6 like the six layers of Fig. 4. Every training digit is encoded once (eq. 14 of 000); for
each test query the 15 training digits nearest in the partition distance of eq. 15 are found exactly
(:func:`cnnlens.spline.nearest_neighbors`). Per layer: how often a neighbour shares the query's class, and its
mean Euclidean (pixel) distance to the query. Fig. 4's reading: deeper layers give neighbours that are farther in
pixels but closer in class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data import stratified_subset
from ..nn.models import lenet5
from ..spline import nearest_neighbors, partition_codes, plot_neighbor_grid
from ..train import evaluate, seed_everything
from ._claims import Binomial, Claim, Greater, MeanError
from ._recipes import AdamBudget, load_digits
from ._registry import ExperimentResult, RunContext, register_experiment

NUM_LAYERS = 6


@dataclass(frozen=True)
class PartitionKnnConfig(AdamBudget):
    """LeNet-5 training budget (Adam), number of test queries and neighbours."""

    queries: int = 1000
    k: int = 15
    figure_queries: int = 3


def _neighbour_stats(indices: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, db_x: torch.Tensor,
                     db_y: torch.Tensor) -> tuple[float, float, float]:
    """Same-class rate, mean pixel-space Euclidean distance of the neighbours ``indices`` (Nq, k), and the standard
    deviation over queries of each query's mean neighbour distance."""
    same = (db_y[indices] == query_y[:, None]).double().mean()
    per_query = (db_x.flatten(1)[indices] - query_x.flatten(1)[:, None, :]).norm(dim=2).mean(dim=1)
    return float(same), float(per_query.mean()), float(per_query.std())


def _layer_profile(names: list[str], metrics: dict[str, float]) -> Figure:
    fig = Figure(figsize=(8.5, 3.0))
    ax_same, ax_dist = fig.subplots(1, 2)
    positions = np.arange(1, len(names) + 1)
    for prefix, style, label in (("", "o-", "trained"), ("init_", "s--", "at initialisation")):
        ax_same.plot(positions, [metrics[f"same_class_rate_{prefix}l{i}"] for i in positions], style, label=label)
        ax_dist.plot(positions, [metrics[f"euclid_{prefix}l{i}"] for i in positions], style, label=label)
    for ax, key, ylabel in ((ax_same, "same_class_rate_pixels", "same-class rate of the 15 neighbours"),
                            (ax_dist, "euclid_pixels", "mean pixel distance to the query")):
        ax.axhline(metrics[key], color="tab:gray", linestyle=":", label="Euclidean kNN in pixels")
        ax.set_xticks(positions, [f"l{i}\n{n}" for i, n in zip(positions, names, strict=True)])
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)
    ax_dist.axhline(metrics["euclid_random"], color="tab:red", linestyle=":", label="random pairs")
    ax_dist.legend(fontsize=7)
    fig.suptitle("LeNet-5 on mnist5k: partition-distance neighbours per layer (eq. 15 of 000)", fontsize=10)
    fig.tight_layout()
    return fig


@register_experiment(
    "spline-partition-knn",
    title="Nearest neighbours under the partition distance of eq. 15, layer by layer (Fig. 4).",
    paper="000 sec. 7.2-7.3, eqs. 14-15, Fig. 4",
    quick=PartitionKnnConfig(epochs=2, train_size=1500, batch_size=32, queries=200),
    full=PartitionKnnConfig(),
    metrics=tuple(f"same_class_rate_l{i}" for i in range(1, NUM_LAYERS + 1))
    + tuple(f"euclid_l{i}" for i in range(1, NUM_LAYERS + 1)) + ("queries",),
    claims=(
        Claim("deeper-same-class", "000 sec. 7.3, Fig. 4",
              "Later layers' partition-distance neighbours mainly come from the same class as the query "
              "(pre-registered: same-class rate of the 15 neighbours at layer 6 above layer 1).",
              Greater("same_class_rate_l6", "same_class_rate_l1", Binomial("queries"), Binomial("queries"),
                      label="same-class rate, layer 6 - layer 1"),
              setting="LeNet-5 (its six max-affine layers) on mnist5k for the paper's smallCNN without batch-norm "
                      "on CIFAR-10 and SVHN"),
        Claim("deeper-farther", "000 sec. 7.3, Fig. 4",
              "As we progress through the layers, the neighbours become further in Euclidean distance "
              "(pre-registered: mean pixel distance of the neighbours at layer 6 above layer 1).",
              Greater("euclid_l6", "euclid_l1", MeanError("euclid_sd_l6", "queries", "test queries"),
                      MeanError("euclid_sd_l1", "queries", "test queries"),
                      label="neighbour pixel distance, layer 6 - layer 1"),
              setting="LeNet-5 on mnist5k for the paper's smallCNN on CIFAR-10 and SVHN"),
    ),
)
def run(cfg: PartitionKnnConfig, ctx: RunContext) -> ExperimentResult:
    """Encode all training digits at every layer and search the k nearest of each test query, per layer."""
    digits = load_digits(ctx)
    train, test = digits.train, digits.test
    query_set = stratified_subset(test, min(cfg.queries, len(test)), seed=ctx.seed)
    qx, qy = query_set.images, query_set.labels
    db_x, db_y = train.images, train.labels
    seed_everything(ctx.seed)
    model = lenet5(num_classes=10).eval()
    metrics: dict[str, float] = {"queries": float(len(qy))}
    neighbours: dict[str, torch.Tensor] = {}
    names: list[str] = []
    for prefix in ("init_", ""):
        if not prefix:
            ctx.fit("lenet5", model, stratified_subset(train, cfg.train_size, seed=ctx.seed), epochs=cfg.epochs,
                    batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam")
            metrics["test_acc"] = evaluate(model, test).accuracy
        db_codes = partition_codes(model, db_x)
        query_codes = partition_codes(model, qx)
        names = list(db_codes)
        kinds = [db_codes[name].kind for name in names]
        for i, name in enumerate(names, start=1):
            indices, _ = nearest_neighbors(query_codes, db_codes, cfg.k, name)
            same, euclid, euclid_sd = _neighbour_stats(indices, qx, qy, db_x, db_y)
            metrics[f"same_class_rate_{prefix}l{i}"] = same
            metrics[f"euclid_{prefix}l{i}"] = euclid
            metrics[f"euclid_sd_{prefix}l{i}"] = euclid_sd
            if not prefix:
                neighbours[f"l{i} {name}"] = indices
            ctx.log(f"{prefix or 'trained '}layer {i} ({name}): same-class rate {same:.3f}, "
                    f"pixel distance {euclid:.3f}")
    pixel = torch.cdist(qx.flatten(1), db_x.flatten(1))
    pixel_nn = torch.sort(pixel, dim=1, stable=True).indices[:, : cfg.k]
    metrics["same_class_rate_pixels"], metrics["euclid_pixels"], _ = _neighbour_stats(pixel_nn, qx, qy, db_x, db_y)
    metrics["euclid_random"] = float(pixel.mean())
    metrics["chance_same_class_rate"] = float(((torch.bincount(db_y, minlength=10) / len(db_y))[qy]).mean())

    shown = torch.tensor([int(torch.nonzero(qy == c)[0]) for c in torch.unique(qy)[: cfg.figure_queries]])
    grid_images = {"pixels": db_x[pixel_nn[shown]]} | {n: db_x[ix[shown]] for n, ix in neighbours.items()}
    grid_labels = {"pixels": db_y[pixel_nn[shown]]} | {n: db_y[ix[shown]] for n, ix in neighbours.items()}
    figures = {
        "neighbors": plot_neighbor_grid(
            qx[shown], grid_images, query_labels=qy[shown], neighbor_labels=grid_labels,
            title="query (black frame) and its 15 nearest training digits per layer (green: same class)"),
        "layer_profile": _layer_profile(names, metrics),
    }
    rates = [metrics[f"same_class_rate_l{i}"] for i in range(1, len(names) + 1)]
    dists = [metrics[f"euclid_l{i}"] for i in range(1, len(names) + 1)]
    rising = all(b >= a - 0.01 for a, b in zip(rates, rates[1:], strict=False))
    relu_rates = [r for r, kind in zip(rates, kinds, strict=True) if kind == "binary"]
    relu_rising = all(b >= a - 0.01 for a, b in zip(relu_rates, relu_rates[1:], strict=False))
    notes = (
        f"LeNet-5 ({metrics['test_acc']:.1%} test accuracy), {len(qy)} test queries against all {len(db_y)} training "
        f"digits, k={cfg.k}. Same-class rate per layer l1..l{len(names)} ({', '.join(names)}): "
        + ", ".join(f"{r:.3f}" for r in rates)
        + "; mean pixel distance of the neighbours: " + ", ".join(f"{d:.2f}" for d in dists)
        + f" (Euclidean kNN in pixels: same-class {metrics['same_class_rate_pixels']:.3f} at distance "
        f"{metrics['euclid_pixels']:.2f}; random pairs {metrics['euclid_random']:.2f}; chance "
        f"{metrics['chance_same_class_rate']:.3f}). "
        + ("The same-class rate rises with depth, as Fig. 4 of 000 shows. " if rising else
           "Along the ReLU layers the same-class rate rises with depth, as Fig. 4 of 000 shows ("
           + " -> ".join(f"{r:.3f}" for r in relu_rates) + "), while the max-pool layers' argmax codes sit below "
           "the ReLU layer before them. " if relu_rising else
           "The same-class rate does not rise monotonically with depth here. ")
        + ("Neighbours also drift away in pixel distance with depth, the other half of Fig. 4's reading. "
           if dists[-1] > dists[0] else
           "Unlike Fig. 4, the deepest layer's neighbours are not farther in pixels than the first layer's. ")
        + "At initialisation the same-class rates are "
        + ", ".join(f"{metrics[f'same_class_rate_init_l{i}']:.3f}" for i in range(1, len(names) + 1))
        + ": the early layers' partitions of a random network already group images that are close in pixels, "
        + (f"while training adds class structure to the deepest layer's codes ({metrics['same_class_rate_init_l6']:.3f}"
           f" -> {rates[-1]:.3f}). " if rates[-1] > metrics["same_class_rate_init_l6"] + 0.05 else
           "and training changes the deepest layer's neighbours little at this budget. ")
        + "Pooling layers' codes (argmax positions) are dominated by flat background windows, where the tie rule "
        "picks the first index for every digit."
    )
    return ExperimentResult(metrics, figures, notes)
