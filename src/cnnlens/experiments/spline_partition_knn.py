"""``spline-partition-knn``: the partition of each layer: its regions and nearest neighbours (000 sec. 7.2-7.3, Fig. 4).

The network is LeNet-5 without batch-norm: Fig. 4 of 000 uses a smallCNN trained *without* batch normalization and
shows six layers; LeNet-5 has six max-affine layers in forward order (act1 ReLU, s2 max-pool, act2 ReLU, s4 max-pool,
act3 ReLU, act4 ReLU), numbered l1..l6 here, while cnnlens's ``small-cnn`` has batch-norm and four. Every training
digit is encoded once (eq. 14 of 000).

* Sec. 7.2: "many partitions will be empty or contain only a single training data point". Measured: the share of
  training digits alone in their region (:func:`alone_share`: digits grouped by identical codes), per layer (that
  layer's code) and for the whole network (the codes of all six layers: the affine piece of the network).
* Sec. 7.3, Fig. 4: for each test query the 15 training digits nearest in the partition distance of eq. 15 are found
  exactly (:func:`cnnlens.spline.nearest_neighbors`). Per layer: how often a neighbour shares the query's class, and
  its mean Euclidean (pixel) distance to the query. Fig. 4's reading: deeper layers give neighbours that are farther
  in pixels but closer in class.
* Ties: a max-pool unit whose window attains its maximum more than once (a flat window, e.g. blank background) gets
  the first index by the tie rule for every digit, so all digits that are flat there agree on it
  (:func:`cnnlens.spline.boundary_units`). Reported: the share of tied units per layer, how many of the tied windows
  are constant, and the neighbours' same-class rates under eq. 15 restricted to units tied in neither code
  (:func:`untied_neighbours`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import stratified_subset
from ..nn.models import lenet5
from ..spline import (
    PartitionCodes,
    activations,
    boundary_units,
    nearest_neighbors,
    partition_codes,
    plot_neighbor_grid,
    region_ids_from_codes,
)
from ..train import evaluate, seed_everything
from ._claims import AtLeast, Binomial, Claim, Greater, MeanError
from ._recipes import AdamBudget, load_digits
from ._registry import ExperimentResult, RunContext, register_experiment

NUM_LAYERS = 6
_NET = ("LeNet-5 (no batch-norm, six max-affine layers like Fig. 4's six) for the paper's smallCNN trained without "
        "batch-norm (cnnlens's small-cnn has batch-norm and four max-affine layers)")


@dataclass(frozen=True)
class PartitionKnnConfig(AdamBudget):
    """LeNet-5 training budget (Adam), number of test queries and neighbours, encoding chunk size."""

    queries: int = 1000
    k: int = 15
    figure_queries: int = 3
    chunk_size: int = 500


def alone_share(codes: Sequence[Tensor]) -> tuple[float, int]:
    """Share of samples alone in their region, and the number of occupied regions (000 sec. 7.2).

    Two samples share a region when all their codes are equal (every tensor of ``codes``, e.g. one per layer:
    :attr:`cnnlens.spline.LayerCode.data`, packed or not, row ``n`` for sample ``n``).

    Returns
    -------
    share : float
        Fraction of the N samples whose code no other sample has.
    regions : int
        Number of distinct codes (occupied regions).
    """
    ids = region_ids_from_codes(list(codes))
    if ids.numel() == 0:
        raise ValueError("alone_share needs at least one sample; received codes of 0 samples.")
    counts = torch.bincount(ids)
    return float((counts[ids] == 1).double().mean()), int(counts.numel())


def untied_neighbours(query_states: Tensor, query_tied: Tensor, db_states: Tensor, db_tied: Tensor, num_states: int,
                      k: int, chunk_size: int = 250) -> tuple[Tensor, Tensor]:
    """Exact k nearest database samples under eq. 15 of 000 restricted to the units tied in neither code.

    .. math::

        d(x_1, x_2) = 1 - \\frac{\\#\\{u : u \\text{ untied in } x_1 \\text{ and } x_2,\\;
        t_u(x_1) = t_u(x_2)\\}}{\\#\\{u : u \\text{ untied in } x_1 \\text{ and } x_2\\}}

    (1 when no unit is untied in both). Order as :func:`cnnlens.spline.nearest_neighbors`: ascending distance, the
    lower database index first among equal distances. With no tied unit it equals eq. 15.

    Parameters
    ----------
    query_states, db_states : LongTensor (Nq, U), (Nd, U)
        Region states per unit (:meth:`cnnlens.spline.LayerCode.states`).
    query_tied, db_tied : BoolTensor (Nq, U), (Nd, U)
        Units on a region boundary (:func:`cnnlens.spline.boundary_units`, flattened).
    num_states : int
        States per unit (2 for ReLU, the window size for max-pooling).
    k : int
        Neighbours per query, ``1 <= k <= Nd``.
    chunk_size : int
        Queries per matrix product (does not change the result).

    Returns
    -------
    indices : LongTensor (Nq, k)
    distances : Tensor float64 (Nq, k)
    """
    if query_states.shape != query_tied.shape or db_states.shape != db_tied.shape or \
            query_states.shape[1] != db_states.shape[1]:
        raise ValueError(f"states and tie masks must be (N, U) with the same U; received {tuple(query_states.shape)}, "
                         f"{tuple(query_tied.shape)}, {tuple(db_states.shape)}, {tuple(db_tied.shape)}.")
    if not 1 <= k <= db_states.shape[0]:
        raise ValueError(f"k must lie in 1..{db_states.shape[0]} (the database size); received {k}.")

    def one_hot(states: Tensor, tied: Tensor) -> Tensor:
        hot = torch.nn.functional.one_hot(states.long(), num_states).float()
        return (hot * (~tied)[..., None].float()).flatten(1)

    db_hot, db_kept = one_hot(db_states, db_tied), (~db_tied).float()
    indices, distances = [], []
    for start in range(0, query_states.shape[0], chunk_size):
        stop = start + chunk_size
        matches = (one_hot(query_states[start:stop], query_tied[start:stop]) @ db_hot.T).double()
        common = ((~query_tied[start:stop]).float() @ db_kept.T).double()  # integer counts, exact in float32
        dist = torch.where(common > 0, 1 - matches / common.clamp_min(1), torch.ones_like(common))
        order = torch.sort(dist, dim=1, stable=True)
        indices.append(order.indices[:, :k])
        distances.append(order.values[:, :k])
    return torch.cat(indices), torch.cat(distances)


def _neighbour_stats(indices: Tensor, query_x: Tensor, query_y: Tensor, db_x: Tensor,
                     db_y: Tensor) -> tuple[float, float, float]:
    """Same-class rate, mean pixel-space Euclidean distance of the neighbours ``indices`` (Nq, k), and the standard
    deviation over queries of each query's mean neighbour distance."""
    same = (db_y[indices] == query_y[:, None]).double().mean()
    per_query = (db_x.flatten(1)[indices] - query_x.flatten(1)[:, None, :]).norm(dim=2).mean(dim=1)
    return float(same), float(per_query.mean()), float(per_query.std())


def _encode(ctx: RunContext, model: nn.Module, x: Tensor, chunk_size: int, what: str) -> PartitionCodes:
    """Partition codes of ``x`` in chunks, with a progress row."""
    chunks = [x[i:i + chunk_size] for i in range(0, len(x), chunk_size)]
    return PartitionCodes.cat([partition_codes(model, xb) for xb in ctx.track(chunks, f"partition codes ({what})")])


def _ties(model: nn.Module, x: Tensor, chunk_size: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Tied units per layer (N, U) (:func:`cnnlens.spline.boundary_units`), and for max-pool layers whether each
    window is constant (N, U)."""
    tied: dict[str, list[Tensor]] = {}
    flat: dict[str, list[Tensor]] = {}
    for start in range(0, len(x), chunk_size):
        xb = x[start:start + chunk_size]
        for name, mask in boundary_units(model, xb).items():
            tied.setdefault(name, []).append(mask.flatten(1))
        acts = activations(model, xb)
        for name, windows in acts.items():
            if acts.kinds[name] == "argmax":
                flat.setdefault(name, []).append((windows.amax(-1) == windows.amin(-1)).flatten(1))
    return ({n: torch.cat(v) for n, v in tied.items()}, {n: torch.cat(v) for n, v in flat.items()})


def _layer_profile(names: list[str], metrics: dict[str, float]) -> Figure:
    fig = Figure(figsize=(8.5, 3.0))
    ax_same, ax_dist = fig.subplots(1, 2)
    positions = np.arange(1, len(names) + 1)
    for prefix, style, label in (("", "o-", "trained"), ("untied_", "^-.", "trained, tied units left out"),
                                 ("init_", "s--", "at initialisation")):
        ax_same.plot(positions, [metrics[f"same_class_rate_{prefix}l{i}"] for i in positions], style, label=label)
        ax_dist.plot(positions, [metrics[f"euclid_{prefix}l{i}"] for i in positions], style, label=label)
    for ax, key, ylabel in ((ax_same, "same_class_rate_pixels", "same-class rate of the 15 neighbours"),
                            (ax_dist, "euclid_pixels", "mean pixel distance to the query")):
        ax.axhline(metrics[key], color="tab:gray", linestyle=":", label="Euclidean kNN in pixels")
        ax.set_xticks(positions, [f"l{i}\n{n}" for i, n in zip(positions, names, strict=True)])
        ax.set_ylabel(ylabel, fontsize=8)
    ax_dist.axhline(metrics["euclid_random"], color="tab:red", linestyle=":", label="random pairs")
    for ax in (ax_same, ax_dist):
        ax.legend(fontsize=7)
    fig.suptitle("LeNet-5 on mnist5k: partition-distance neighbours per layer (eq. 15 of 000)", fontsize=10)
    fig.tight_layout()
    return fig


@register_experiment(
    "spline-partition-knn",
    title="The partition of each layer: regions of single training digits (sec. 7.2) and nearest neighbours under "
          "the partition distance of eq. 15 (Fig. 4).",
    paper="000 sec. 7.2-7.3, eqs. 14-15, Fig. 4",
    quick=PartitionKnnConfig(epochs=2, train_size=1500, batch_size=32, queries=200),
    full=PartitionKnnConfig(),
    metrics=tuple(f"same_class_rate_l{i}" for i in range(1, NUM_LAYERS + 1))
    + tuple(f"same_class_rate_untied_l{i}" for i in range(1, NUM_LAYERS + 1))
    + tuple(f"euclid_l{i}" for i in range(1, NUM_LAYERS + 1))
    + tuple(f"tie_share_l{i}" for i in range(1, NUM_LAYERS + 1))
    + tuple(f"alone_share_l{i}" for i in range(1, NUM_LAYERS + 1))
    + ("alone_share_network", "regions_network", "n_train", "queries"),
    claims=(
        Claim("single-point-regions", "000 sec. 7.2",
              "Due to the very large number of possible regions and the limited amount of training data, many "
              "partitions will be empty or contain only a single training data point (judged: more than half of the "
              "training digits are alone in their region of the whole network, digits grouped by identical codes of "
              "all layers).",
              AtLeast("alone_share_network", 0.5, Binomial("n_train"),
                      label="share of training digits alone in their region"),
              setting=f"{_NET}; mnist5k's 4,000 training digits", quick=True),
        Claim("deeper-same-class", "000 sec. 7.3, Fig. 4",
              "Later layers' partition-distance neighbours mainly come from the same class as the query "
              "(pre-registered: same-class rate of the 15 neighbours at layer 6 above layer 1).",
              Greater("same_class_rate_l6", "same_class_rate_l1", Binomial("queries"), Binomial("queries"),
                      label="same-class rate, layer 6 - layer 1"),
              setting=f"{_NET}; mnist5k for CIFAR-10 and SVHN"),
        Claim("deeper-farther", "000 sec. 7.3, Fig. 4",
              "As we progress through the layers, the neighbours become further in Euclidean distance "
              "(pre-registered: mean pixel distance of the neighbours at layer 6 above layer 1).",
              Greater("euclid_l6", "euclid_l1", MeanError("euclid_sd_l6", "queries", "test queries"),
                      MeanError("euclid_sd_l1", "queries", "test queries"),
                      label="neighbour pixel distance, layer 6 - layer 1"),
              setting=f"{_NET}; mnist5k for CIFAR-10 and SVHN"),
    ),
)
def run(cfg: PartitionKnnConfig, ctx: RunContext) -> ExperimentResult:
    """Encode all training digits at every layer; regions of single digits, ties, and the k nearest per layer."""
    digits = load_digits(ctx)
    train, test = digits.train, digits.test
    query_set = stratified_subset(test, min(cfg.queries, len(test)), seed=ctx.seed)
    qx, qy = query_set.images, query_set.labels
    db_x, db_y = train.images, train.labels
    seed_everything(ctx.seed)
    model = lenet5(num_classes=10).eval()
    metrics: dict[str, float] = {"queries": float(len(qy)), "n_train": float(len(db_y))}
    neighbours: dict[str, Tensor] = {}
    names: list[str] = []
    kinds: list[str] = []
    for prefix in ("init_", ""):
        stage = "initial" if prefix else "trained"
        if not prefix:
            ctx.fit("lenet5", model, stratified_subset(train, cfg.train_size, seed=ctx.seed), epochs=cfg.epochs,
                    batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam")
            metrics["test_acc"] = evaluate(model, test).accuracy
        db_codes = _encode(ctx, model, db_x, cfg.chunk_size, f"{stage}, training digits")
        query_codes = _encode(ctx, model, qx, cfg.chunk_size, f"{stage}, queries")
        names = list(db_codes)
        kinds = [db_codes[name].kind for name in names]
        if len(names) != NUM_LAYERS:
            raise ValueError(f"LeNet-5 was expected to have {NUM_LAYERS} max-affine layers; found {names}.")
        metrics[f"alone_share_{prefix}network"], metrics[f"regions_{prefix}network"] = alone_share(
            [db_codes[name].data for name in names])
        if not prefix:
            db_tied, db_flat = _ties(model, db_x, cfg.chunk_size)
            q_tied, _ = _ties(model, qx, cfg.chunk_size)
        for i, name in enumerate(ctx.track(names, f"nearest neighbours ({stage})"), start=1):
            indices, _ = nearest_neighbors(query_codes, db_codes, cfg.k, name)
            same, euclid, euclid_sd = _neighbour_stats(indices, qx, qy, db_x, db_y)
            metrics[f"same_class_rate_{prefix}l{i}"] = same
            metrics[f"euclid_{prefix}l{i}"] = euclid
            metrics[f"euclid_sd_{prefix}l{i}"] = euclid_sd
            metrics[f"alone_share_{prefix}l{i}"], metrics[f"regions_{prefix}l{i}"] = alone_share(
                [db_codes[name].data])
            if prefix:
                continue
            neighbours[f"l{i} {name}"] = indices
            tied = db_tied[name]
            metrics[f"tie_share_l{i}"] = float(tied.double().mean())
            metrics[f"tie_share_queries_l{i}"] = float(q_tied[name].double().mean())
            if name in db_flat:
                metrics[f"tied_flat_share_l{i}"] = (float((db_flat[name] & tied).sum() / tied.sum())
                                                   if bool(tied.any()) else float("nan"))
            if bool(tied.any()) or bool(q_tied[name].any()):
                indices = untied_neighbours(query_codes[name].states(), q_tied[name], db_codes[name].states(),
                                            tied, db_codes[name].num_states, cfg.k)[0]
                same, euclid, _ = _neighbour_stats(indices, qx, qy, db_x, db_y)
            metrics[f"same_class_rate_untied_l{i}"] = same
            metrics[f"euclid_untied_l{i}"] = euclid
            ctx.log(f"layer {i} ({name}): same-class rate {metrics[f'same_class_rate_l{i}']:.3f} "
                    f"(tied units left out: {same:.3f}; tied share {metrics[f'tie_share_l{i}']:.3f}), pixel "
                    f"distance {metrics[f'euclid_l{i}']:.3f}, alone in region {metrics[f'alone_share_l{i}']:.3f}")
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
    return ExperimentResult(metrics, figures, _notes(cfg, metrics, names, kinds))


def _notes(cfg: PartitionKnnConfig, m: dict[str, float], names: list[str], kinds: list[str]) -> str:
    """The reading of the measured numbers, every outcome conditioned on them."""
    layers = range(1, len(names) + 1)
    rates = [m[f"same_class_rate_l{i}"] for i in layers]
    untied = [m[f"same_class_rate_untied_l{i}"] for i in layers]
    dists = [m[f"euclid_l{i}"] for i in layers]
    relu_rates = [r for r, kind in zip(rates, kinds, strict=True) if kind == "binary"]
    pools = [i for i, kind in zip(layers, kinds, strict=True) if kind == "argmax"]
    rising = all(b >= a - 0.01 for a, b in zip(rates, rates[1:], strict=False))
    relu_rising = all(b >= a - 0.01 for a, b in zip(relu_rates, relu_rates[1:], strict=False))
    text = (
        f"LeNet-5 ({m['test_acc']:.1%} test accuracy), {m['queries']:.0f} test queries against all "
        f"{m['n_train']:.0f} training digits, k={cfg.k}. Sec. 7.2: {m['alone_share_network']:.1%} of the training "
        f"digits are alone in their region of the whole network ({m['regions_network']:.0f} occupied regions; at "
        f"initialisation {m['alone_share_init_network']:.1%}); per layer l1..l{len(names)} ({', '.join(names)}): "
        + ", ".join(f"{m[f'alone_share_l{i}']:.1%}" for i in layers)
        + (". Most training digits are alone in their region, as sec. 7.2 expects. " if m["alone_share_network"] > 0.5
           else ". Fewer than half of the training digits are alone in their region. ")
        + "Fig. 4: same-class rate of the neighbours per layer: " + ", ".join(f"{r:.3f}" for r in rates)
        + "; mean pixel distance of the neighbours: " + ", ".join(f"{d:.2f}" for d in dists)
        + f" (Euclidean kNN in pixels: same-class {m['same_class_rate_pixels']:.3f} at distance "
        f"{m['euclid_pixels']:.2f}; random pairs {m['euclid_random']:.2f}; chance {m['chance_same_class_rate']:.3f}). "
        + ("The same-class rate rises with depth (within 0.01 per layer), Fig. 4's reading. " if rising else
           "Along the ReLU layers the same-class rate rises with depth (" + " -> ".join(f"{r:.3f}" for r in relu_rates)
           + "), while the max-pool layers' codes sit below the ReLU layer before them. " if relu_rising else
           "The same-class rate does not rise monotonically with depth here. ")
        + ("The deepest layer's neighbours are farther in pixels than the first layer's, the other half of Fig. 4's "
           "reading. " if dists[-1] > dists[0] else
           "Unlike Fig. 4's reading, the deepest layer's neighbours are not farther in pixels than the first layer's. ")
    )
    if pools:
        parts = []
        for i in pools:
            tied_share, flat = m[f"tie_share_l{i}"], m.get(f"tied_flat_share_l{i}", float("nan"))
            parts.append(f"at max-pool layer l{i} ({names[i - 1]}) {tied_share:.1%} of the codes over the training "
                         "digits are ties" + (f", {flat:.1%} of them on constant windows (blank background)"
                                              if flat == flat else "")
                         + f", and leaving tied units out of eq. 15 moves its same-class rate from {rates[i - 1]:.3f} "
                         f"to {untied[i - 1]:.3f}")
        text += ("Ties (a pooling window whose maximum is attained more than once: the tie rule gives it the first "
                 "index for every digit): " + "; ".join(parts) + ". ")
    other_ties = [i for i in layers if i not in pools and m[f"tie_share_l{i}"] > 0]
    if other_ties:
        text += "ReLU units exactly at 0 (ties) also occur at " + ", ".join(
            f"l{i} (share {m[f'tie_share_l{i}']:.2g})" for i in other_ties) + ". "
    text += ("At initialisation the same-class rates are "
             + ", ".join(f"{m[f'same_class_rate_init_l{i}']:.3f}" for i in layers)
             + (f"; training raises the deepest layer's from {m['same_class_rate_init_l6']:.3f} to {rates[-1]:.3f}."
                if rates[-1] > m["same_class_rate_init_l6"] + 0.05 else
                "; training changes the deepest layer's rate by less than 0.05."))
    return text
