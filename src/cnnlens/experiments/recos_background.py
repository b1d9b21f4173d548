"""``recos-background``: MNIST digits on background scenes (003 sec. 3, Fig. 8): the background disturbs layer 1
and its impact diminishes at layer 2; a one-layer system vs the two-layer cascade with the same number of outputs.

LeNet-5 is trained on the composited digits ("mnist5k-scenes" of ``cnnlens.data``). For every test digit, shown
with and without its background, the relative change of the layer responses, ||f(x_bg) - f(x_clean)|| /
||f(x_clean)||, is measured after C1's ReLU (layer 1, 6 x 28 x 28) and after C3's ReLU (layer 2, 16 x 10 x 10).
The one-layer system of eq. 22 replaces C1 -> S2 -> C3 by one convolution with L = 16 anchors D of 13 x 13
pixels (the receptive field of C3, ``compound_anchors``) at stride 2, so that it has C3's 16 x 10 x 10 outputs;
both systems share the rest of LeNet-5 (max-pool, C5, F6, output) and the training budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from ..data import load, stratified_subset
from ..nn.models import lenet5
from ..recos import compound_anchors, plot_image_grid
from ..spline import activations
from ..train import evaluate, seed_everything
from ._claims import AtLeast, Binomial, Claim, Greater, MeanError
from ._recipes import train_sgd
from ._registry import ExperimentResult, RunContext, register_experiment

_N = Binomial("n_test")
_SETTING = ("mnist5k digits (4,000 training / 1,000 test) composited on 10 scikit-image scenes (x = d + (1 - d) b) "
            "for MNIST on the paper's unnamed scenes; the paper does not say how digits and scenes were combined")
_ONE_LAYER = "one-layer system: 16 anchors of 13 x 13 at stride 2 (C3's outputs), LeNet-5's head, same budget"


def _band(m: dict[str, float], key: str, n: int) -> str:
    """``mean +- 2 SE`` of a paired difference over ``n`` test digits, as text."""
    return f"{m[key]:+.3f} +- {2 * m[key + '_sd'] / n ** 0.5:.3f}"


def _direction(m: dict[str, float], key: str, n: int, positive: str, negative: str, neutral: str) -> str:
    """What the paired difference ``key`` shows: ``positive`` / ``negative`` when it is beyond two standard errors
    above / below zero, ``neutral`` otherwise."""
    se2 = 2 * m[key + "_sd"] / n ** 0.5
    if m[key] - se2 > 0:
        return positive
    if m[key] + se2 < 0:
        return negative
    return neutral


@dataclass(frozen=True)
class BackgroundConfig:
    """Training budget (SGD with momentum) for both systems; ``train_size`` composited digits (all 4,000 if None,
    else a class-stratified subset)."""

    epochs: int = 20
    train_size: int | None = None
    batch_size: int = 32
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4


class OneLayerSystem(nn.Module):
    """The one-layer system of eq. 22 of 003 in LeNet-5's frame: ``d1`` has 16 anchors of 13 x 13 pixels at stride 2
    (16 x 10 x 10 outputs, like C3), followed by LeNet-5's S4, C5, F6 and output layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.d1 = nn.Conv2d(1, 16, 13, stride=2)
        self.act1 = nn.ReLU()
        self.s4 = nn.MaxPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.act3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(120, 84)
        self.act4 = nn.ReLU()
        self.output = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s4(self.act1(self.d1(x)))
        return self.output(self.act4(self.f6(self.flatten(self.act3(self.c5(x))))))


def _responses(model: nn.Module, x: torch.Tensor, layers: tuple[str, ...] = ("act1", "act2")) -> list[torch.Tensor]:
    """The responses Rec(u) of ``model`` after each ReLU in ``layers``, read by the capture engine
    (``cnnlens.spline.activations`` gives the pre-activations u). For LeNet-5 the defaults are layer 1 (C1's ReLU,
    6 x 28 x 28) and layer 2 (C3's ReLU, 16 x 10 x 10)."""
    acts = activations(model.eval(), x, layers=list(layers))
    return [torch.relu(acts[name]) for name in layers]


def _relative_change(model: nn.Module, x_bg: torch.Tensor, x_clean: torch.Tensor,
                     layers: tuple[str, ...] = ("act1", "act2")) -> list[torch.Tensor]:
    """Per test digit, ||f_l(x_bg) - f_l(x_clean)|| / ||f_l(x_clean)|| for every layer l in ``layers``: how much
    the background changes the responses relative to the digit's own (a tensor of shape (N,) per layer)."""
    out = []
    for bg, clean in zip(_responses(model, x_bg, layers), _responses(model, x_clean, layers), strict=True):
        diff = (bg - clean).flatten(1).norm(dim=1)
        out.append(diff / clean.flatten(1).norm(dim=1).clamp_min(1e-12))
    return out


def _mean_sd(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """``{prefix: mean, prefix_sd: sample standard deviation}`` over the test digits."""
    return {prefix: float(values.mean()), f"{prefix}_sd": float(values.std())}


def _fig8(model: nn.Module, data, rows: int = 3) -> Figure:
    """Fig. 8 of 003: composited digits of the ten scenes (top two rows), then for three inputs the 6 layer-1 and
    the 16 layer-2 response maps."""
    def item(scene: int, label: int) -> int:
        hits = torch.nonzero((data.scene_index == scene) & (data.labels == label)).flatten()
        return int(hits[0]) if len(hits) else int(torch.nonzero(data.scene_index == scene)[0])

    fig = plt.figure(figsize=(13, 5.2))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.1])
    axes = top.subplots(2, 10)
    for s in range(10):
        i = item(s, s)
        for r, img in enumerate((data.images[i, 0], data.clean_images[i, 0])):
            axes[r, s].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, s].set_axis_off()
        axes[0, s].set_title(data.scene_names[s], fontsize=7)
    top.suptitle("digits on the ten background scenes (top) and the same digits without background", fontsize=9)
    top.subplots_adjust(top=0.8)
    picks = [item(s, label) for s, label in ((0, 2), (3, 5), (6, 8))][:rows]
    l1, l2 = _responses(model, data.images[picks])
    grid = bottom.subplots(rows, 1 + 6 + 16)
    for r, i in enumerate(picks):
        grid[r, 0].imshow(data.images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        for c in range(6):
            grid[r, 1 + c].imshow(l1[r, c].numpy(), cmap="magma")
        for c in range(16):
            grid[r, 7 + c].imshow(l2[r, c].numpy(), cmap="magma")
        for ax in grid[r]:
            ax.set_axis_off()
    grid[0, 0].set_title("input", fontsize=7)
    grid[0, 1].set_title("layer 1 (C1+ReLU): 6 channels", fontsize=7, loc="left")
    grid[0, 7].set_title("layer 2 (C3+ReLU): 16 channels", fontsize=7, loc="left")
    return fig


@register_experiment(
    "recos-background",
    title="MNIST digits on background scenes: the background's impact on layer 1 vs layer 2; cascade vs one layer.",
    paper="003 sec. 3, eqs. 16-23, Fig. 8",
    quick=BackgroundConfig(epochs=2, train_size=2000),
    full=BackgroundConfig(),
    metrics=("rel_change_l1", "rel_change_l2", "acc_one_layer", "acc_two_layer", "rel_change_l1_untrained",
             "rel_change_l2_untrained", "acc_two_layer_clean", "n_test", "rel_change_l1_sd", "rel_change_l2_sd",
             "rel_change_l1_minus_l2", "rel_change_l1_minus_l2_sd", "rel_change_one_layer",
             "rel_change_one_layer_sd", "rel_change_one_layer_minus_l2", "rel_change_one_layer_minus_l2_sd",
             "acc_one_layer_clean"),
    claims=(
        Claim("impact-diminishes", "003 sec. 3, Fig. 8",
              "The structured background has an impact on the 6 channel responses of the first layer, yet its "
              "impact on the 16 channel responses of the second layer diminishes (judged: the relative change "
              "of the responses by the background, ||f(x_bg) - f(x)|| / ||f(x)||, is smaller after C3's ReLU "
              "than after C1's, mean of the paired difference over test digits).",
              AtLeast("rel_change_l1_minus_l2", 0.0,
                      MeanError("rel_change_l1_minus_l2_sd", "n_test", "test digits (paired)"),
                      label="relative change by the background, layer 1 - layer 2"),
              setting=_SETTING),
        Claim("cascade-filters-background", "003 sec. 3, eqs. 16-23",
              "Background scenes, not consistent in space, are filtered out more easily by the second layer's "
              "anchors modulated by the first layer's anchor positions than by a one-layer system z = D^T x "
              "(judged: the background's relative change of the 16 x 10 x 10 responses is smaller for the "
              "cascade's layer 2 than for the one-layer system with the same outputs, paired over test digits).",
              AtLeast("rel_change_one_layer_minus_l2", 0.0,
                      MeanError("rel_change_one_layer_minus_l2_sd", "n_test", "test digits (paired)"),
                      label="relative change by the background, one-layer system - cascade's layer 2"),
              setting=_SETTING + "; " + _ONE_LAYER),
        Claim("cascade-beats-one-layer", "003 sec. 3, eqs. 16-23",
              "The two-layer cascade (anchors A then B) has an advantage over a one-layer system z = D^T x with "
              "the same number of outputs (judged: higher test accuracy on the composited digits).",
              Greater("acc_two_layer", "acc_one_layer", _N, _N, label="accuracy two-layer - one-layer"),
              setting=_SETTING + "; " + _ONE_LAYER),
    ),
)
def run(cfg: BackgroundConfig, ctx: RunContext) -> ExperimentResult:
    """Train LeNet-5 and the one-layer system on mnist5k-scenes; measure the layer responses' relative change."""
    train = load("mnist5k-scenes", "train", ctx.data_dir, transforms=("pad32",))
    train = stratified_subset(train, cfg.train_size, seed=ctx.seed)
    test = load("mnist5k-scenes", "test", ctx.data_dir, transforms=("pad32",))
    x_bg, x_clean = test.images, test.clean_images
    seed_everything(ctx.seed)
    two = lenet5().eval()
    m: dict[str, float] = {"n_test": float(len(test))}
    l1, l2 = _relative_change(two, x_bg, x_clean)
    m["rel_change_l1_untrained"], m["rel_change_l2_untrained"] = float(l1.mean()), float(l2.mean())
    two = train_sgd(ctx, "two-layer", two, train, cfg)
    seed_everything(ctx.seed)
    one = train_sgd(ctx, "one-layer", OneLayerSystem(), train, cfg)
    l1, l2 = _relative_change(two, x_bg, x_clean)
    (d1,) = _relative_change(one, x_bg, x_clean, layers=("act1",))
    for prefix, values in (("rel_change_l1", l1), ("rel_change_l2", l2), ("rel_change_l1_minus_l2", l1 - l2),
                           ("rel_change_one_layer", d1), ("rel_change_one_layer_minus_l2", d1 - l2)):
        m.update(_mean_sd(prefix, values))
    m["acc_two_layer"] = evaluate(two, test).accuracy
    m["acc_one_layer"] = evaluate(one, test).accuracy
    clean = torch.utils.data.TensorDataset(x_clean, test.labels)
    m["acc_two_layer_clean"] = evaluate(two, clean).accuracy
    m["acc_one_layer_clean"] = evaluate(one, clean).accuracy
    for key, value in m.items():
        ctx.log(f"{key} = {value:.6g}")
    compound = compound_anchors(two.c1, two.c3, pool=two.s2)
    figures = {
        "fig8_panel": _fig8(two, test),
        "compound_anchors_c3": plot_image_grid(compound.linear, ncols=8,
                                               title="C1 -> C3 compound anchors (13 x 13) trained on scenes"),
        "one_layer_anchors": plot_image_grid(one.d1.weight.detach(), ncols=8,
                                             title="one-layer system (eq. 22): 16 anchors of 13 x 13"),
    }
    n = len(test)
    budget = " (the quick budget: it exercises the code, it does not decide the claims)" if ctx.quick else ""
    notes = (
        f"Trained on {len(train):,} digits of mnist5k-scenes (mnist5k digits on 10 scikit-image scenes), "
        f"{cfg.epochs} epochs each{budget}. Relative change of the responses caused by the background, mean over "
        f"the {n:,} test digits: layer 1 {m['rel_change_l1']:.3f}, layer 2 {m['rel_change_l2']:.3f}; paired "
        f"difference {_band(m, 'rel_change_l1_minus_l2', n)}: the background's impact "
        + _direction(m, "rel_change_l1_minus_l2", n, "is smaller at layer 2 than at layer 1",
                     "is larger at layer 2 than at layer 1", "is the same at both layers within two standard errors")
        + f" (untrained LeNet-5: {m['rel_change_l1_untrained']:.3f} and {m['rel_change_l2_untrained']:.3f}, "
        f"layer 2 keeping {m['rel_change_l2_untrained'] / m['rel_change_l1_untrained']:.0%} of layer 1's relative "
        f"change, vs {m['rel_change_l2'] / m['rel_change_l1']:.0%} after training). The one-layer system of eq. 22 "
        f"(16 anchors of 13 x 13 at stride 2, the same 16 x 10 x 10 outputs as C3 and the same head) changes by "
        f"{m['rel_change_one_layer']:.3f}; one-layer minus cascade layer 2 "
        f"{_band(m, 'rel_change_one_layer_minus_l2', n)}: the cascade's responses "
        + _direction(m, "rel_change_one_layer_minus_l2", n, "are less disturbed by the background",
                     "are more disturbed by the background", "are as disturbed as the one-layer system's, within "
                     "two standard errors")
        + f". Accuracy on composited test digits: two-layer {m['acc_two_layer']:.2%}, one-layer "
        f"{m['acc_one_layer']:.2%} (on the same digits without background: {m['acc_two_layer_clean']:.2%} and "
        f"{m['acc_one_layer_clean']:.2%}). The paper gives no numbers for this experiment (only Fig. 8) and does "
        "not say how digits and scenes were combined; cnnlens overlays white digits with their intensity as "
        "opacity."
    )
    return ExperimentResult(m, figures, notes)
