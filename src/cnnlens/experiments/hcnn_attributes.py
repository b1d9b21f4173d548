"""``hcnn-attributes``: translations along learned attributes (001 sec. 5.3 Prop. 5.3.1, sec. 5.5.3, Figs. 14-15).

A Hierarchical CNN with periodic boundaries (as the text's, "to avoid border effects") is trained; its logits are
checked to be exactly invariant to translations of hidden layers along (u, v) by multiples of the accumulated
subsampling (Prop. 5.3.1), and a per-position mean array is shown to break that. For test inputs the invariant
attribute array of eq. 38 at each depth is translated by tau = 1..7 along v_{j-1}, and the nearest training image
is looked up (:func:`cnnlens.nn.attribute_translation_neighbors`): the text sees these neighbours belong to the
input's class more often as the depth grows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..data import stratified_indices
from ..nn import FactorisedAttributeConv, HierarchicalCNN, attribute_translation_neighbors
from ._claims import AtLeast, Binomial, Claim, Exact, Greater
from ._hcnn import HCNNArch, HCNNData, hcnn_data, train_test
from ._receptive import RFBudget
from ._registry import ExperimentResult, RunContext, register_experiment

DEPTH = 8  #: J of this experiment's network (depths 3 .. J - 1 = 7 have eq. 38 arrays)
DEPTHS = tuple(range(3, DEPTH))
TAUS = tuple(range(1, 8))


@dataclass(frozen=True)
class AttributesConfig:
    """Training images, the architecture (periodic, J = 8), budget, queried test inputs, database size."""

    train_size: int = 2000
    arch: HCNNArch = field(default_factory=lambda: HCNNArch(width=8, depth=DEPTH, downsample=(2, 4)))
    budget: RFBudget = RFBudget(images=12_000, min_epochs=4, max_epochs=30, lr=3e-3)
    queries: int = 200
    shown: int = 4


def invariance_errors(model: HierarchicalCNN, x: torch.Tensor, seed: int) -> tuple[float, float]:
    """Prop. 5.3.1 on a float64 copy of ``model``: the max relative change of the logits when ``x_j`` is rolled
    along every axis by random multiples of :meth:`HierarchicalCNN.invariant_shifts`, over depths 1 .. J - 2; and
    the change when the intermediate normalisation of layer j + 1 subtracts a non-constant mean array instead."""
    net = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return _invariance(net, x.double(), gen)


def _invariance(net: HierarchicalCNN, x: torch.Tensor, gen: torch.Generator) -> tuple[float, float]:
    layers = net.hidden_layers(x)
    worst = 0.0
    for depth in range(1, net.depth - 1):
        h = layers[depth - 1]
        steps = net.invariant_shifts(depth)
        dims = tuple(range(1, h.ndim - 2)) + (h.ndim - 2, h.ndim - 1)
        shifts = [int(torch.randint(1, 4, (1,), generator=gen)) * step for step in steps[:-1] + steps[-1:] * 2]
        base = net.forward_from(h, depth)
        moved = net.forward_from(h.roll(shifts, dims), depth)
        worst = max(worst, float((moved - base).abs().max() / base.abs().max()))
    broken = _position_mean_change(net, layers, gen)
    return worst, broken


def _position_mean_change(net: HierarchicalCNN, layers: list[torch.Tensor], gen: torch.Generator) -> float:
    """Replace layer 4's normalisation by a random per-position mean array and measure the logit change under an
    allowed translation of ``x_3`` along u (the mean array stays put while the responses move)."""
    depth = 3
    layer = net.layers[depth - 1]  # the layer computing x_4
    assert isinstance(layer, FactorisedAttributeConv)
    position = FactorisedAttributeConv(layer.in_attributes, layer.out_features, layer.attribute_kernel, q=layer.q,
                                       spatial_kernel=layer.spatial_kernel, spatial_stride=layer.spatial_stride,
                                       marginal=layer.marginal, boundary=layer.boundary, bias=False,
                                       intermediate="position").double()
    with torch.no_grad():
        position.h.copy_(layer.h)
        position.g.copy_(layer.g)
    h = layers[depth - 1]
    position.train()(h)  # a training pass shapes the mean array
    position.eval()
    mean = position.norm.running_mean
    position.norm.running_mean = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
    net.layers[depth - 1] = position
    step = net.invariant_shifts(depth)[-1]
    base = net.forward_from(h, depth)
    moved = net.forward_from(h.roll((step, step), (-2, -1)), depth)
    net.layers[depth - 1] = layer
    return float((moved - base).abs().max() / base.abs().max())


def _one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """Positions of the first query of each of the first ``count`` classes present (one input per class)."""
    first = {int(c): i for i, c in reversed(list(enumerate(labels.tolist())))}
    return [first[c] for c in sorted(first)][:count]


def _figure(data: HCNNData, queries: torch.Tensor, found: dict[int, torch.Tensor], shown: list[int]) -> Figure:
    """Fig. 15: per input and depth (rows) the input and the nearest database image for tau = 1..7 (columns)."""
    rows = len(DEPTHS) * len(shown)
    fig, axes = plt.subplots(rows, len(TAUS) + 1, figsize=(1.1 * (len(TAUS) + 1), 1.1 * rows), squeeze=False)
    for i, query in enumerate(shown):
        for r, depth in enumerate(DEPTHS):
            row = axes[i * len(DEPTHS) + r]
            images = [data.test.images[queries[query]]] + [data.train.images[j]
                                                            for j in found[depth][query].tolist()]
            for c, (ax, img) in enumerate(zip(row, images, strict=True)):
                arr = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
                ax.imshow((arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-9), cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"j={depth}", fontsize=7)
                if i == 0 and r == 0:
                    ax.set_title("input" if c == 0 else f"tau={c}", fontsize=7)
    fig.suptitle("Fig. 15 of 001: nearest images to translated attribute arrays", fontsize=8)
    fig.tight_layout()
    return fig


def _rate_figure(metrics: dict[str, float]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.3))
    ax.plot(DEPTHS, [metrics[f"same_class_rate_depth{d}"] * 100 for d in DEPTHS], marker="o")
    ax.axhline(10, color="gray", ls=":", label="chance (10 classes)")
    ax.set(xlabel="depth j", ylabel="neighbours of the input's class (%)", xticks=DEPTHS,
           title="Translations along v_(j-1) (eq. 38)")
    ax.legend()
    fig.tight_layout()
    return fig


@register_experiment(
    "hcnn-attributes",
    title="Translating deep attribute arrays finds images of the input's class more often than shallow ones.",
    paper="001 sec. 5.3 (Prop. 5.3.1), sec. 5.5.3, Figs. 14-15",
    quick=AttributesConfig(train_size=60, arch=HCNNArch(width=4, depth=DEPTH, downsample=(2,),
                                                        attribute_kernel=(1, 3), q=2),
                           budget=RFBudget(images=60, min_epochs=1, max_epochs=1, lr=3e-3), queries=10, shown=1),
    full=AttributesConfig(),
    metrics=tuple(f"same_class_rate_depth{d}" for d in DEPTHS) + ("invariance_error", "position_mean_change",
                                                                 "n_queries", "acc_hcnn"),
    claims=(
        Claim("same-class-rises-with-depth", "001 sec. 5.5.3, Fig. 15",
              "At deep layers, translations of the invariant attribute array define images with a progressively "
              "higher probability to belong to the input's class (judged: share of same-class nearest images, "
              "tau = 1..7, higher at depth J - 1 than at depth 3).",
              Greater(f"same_class_rate_depth{DEPTHS[-1]}", "same_class_rate_depth3", Binomial("n_queries"),
                      Binomial("n_queries"), label=f"same-class share depth {DEPTHS[-1]} - depth 3")),
        Claim("invariance-exact", "001 sec. 5.3, Prop. 5.3.1",
              "The last layer x_J is invariant to translations of x_j along (u, v_1, ..., v_j) for any j < J - 1 "
              "(periodic boundaries, shifts multiples of the accumulated subsampling, normalisations constant "
              "along (u, v)).",
              Exact("invariance_error", 1e-10, "float64 rounding (relative 1e-10)",
                    label="max relative logit change"),
              setting="the trained network in float64, eval mode, random allowed shifts at every depth 1..J-2",
              quick=True),
        Claim("position-mean-breaks-invariance", "001 sec. 5.4.2 (the mean array m_{j,q})",
              "A normalisation that subtracts a mean array varying along (u, v) is not covariant: the invariance "
              "of Prop. 5.3.1 fails (judged: relative logit change >= 1e-3 under an allowed translation).",
              AtLeast("position_mean_change", 1e-3, label="relative logit change with a position mean array"),
              setting="layer 4's normalisation replaced by a random per-position mean array, float64", quick=True),
    ),
)
def run(cfg: AttributesConfig, ctx: RunContext) -> ExperimentResult:
    """Train the periodic network, check Prop. 5.3.1, then look up the translated arrays' nearest training images."""
    data = hcnn_data(ctx, cfg.train_size, "the attribute translations use mnist5k")
    acc, model = train_test(ctx, "hcnn-periodic", lambda: cfg.arch.build(data, boundary="periodic"), data,
                            cfg.budget, ctx.seed)
    assert isinstance(model, HierarchicalCNN)
    model.eval()
    queries = stratified_indices(data.test.labels, cfg.queries, ctx.seed)
    x = data.test.images[queries]
    invariance, broken = invariance_errors(model, x[:4], ctx.seed)
    metrics: dict[str, float] = {"acc_hcnn": acc, "invariance_error": invariance, "position_mean_change": broken,
                                 "n_queries": float(len(queries))}
    found = {}
    labels = data.test.labels[queries]
    period = cfg.arch.width // 2  # v_{j-1} has K/2 values: a roll by a multiple of it is no translation
    moved = [t for t, tau in enumerate(TAUS) if tau % period]
    for depth in DEPTHS:
        result = attribute_translation_neighbors(model, x, depth, TAUS, data.train.images)
        found[depth] = result.indices
        same = data.train.labels[result.indices[:, moved]] == labels[:, None]
        metrics[f"same_class_rate_depth{depth}"] = float(same.double().mean())
    rates = ", ".join(f"j={d}: {metrics[f'same_class_rate_depth{d}']:.1%}" for d in DEPTHS)
    rising = bool(np.all(np.diff([metrics[f"same_class_rate_depth{d}"] for d in DEPTHS]) > 0))
    trend = "rising at every depth" if rising else "not monotone in depth"
    notes = (f"Test accuracy {acc:.2%}. Share of nearest training images of the input's class over tau in "
             f"{[TAUS[t] for t in moved]} "
             f"({len(queries)} test inputs): {rates} (chance 10%; {trend}). "
             f"Prop. 5.3.1: max relative logit change {invariance:.1e} under allowed translations; with a "
             f"per-position mean array {broken:.1e}.")
    setting = (f"{data.description}; {cfg.arch.describe()}, periodic boundaries (paper: CIFAR-10, J = 12, K = 16); "
               f"v_(j-1) has K/2 = {period} values, so tau = 1..7 are periodic with period {period} and the rate "
               f"counts the {len(moved)} shifts that are not multiples of it; "
               f"database: the {len(data.train):,} training images; eq. 38 arrays smoothed by a 3-tap box along "
               "v_(j-1); Adam, about "
               f"{cfg.budget.images:,} training images seen")
    shown = _one_per_class(labels, cfg.shown)
    return ExperimentResult(metrics, {"same_class_vs_depth": _rate_figure(metrics),
                                      "fig15_grid": _figure(data, queries, found, shown)}, notes,
                            settings={"same-class-rises-with-depth": setting})
