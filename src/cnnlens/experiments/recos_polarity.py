"""``recos-polarity``: LeNet-5 on grey-scale-reversed digits, C1 negated (naive and exact), doubled C1 anchors.

003 sec. 2 / Fig. 5: LeNet-5 trained on MNIST scores 98.94% on the test set and 37.36% on its reversed version;
negating C1's weights swaps the two numbers; doubling C1's anchors should give a network that handles both.
This experiment measures each step, adds the exact transform of ``cnnlens.recos.polarity_transform`` (C1 -> -W,
b + sum(W)), which must give the original's accuracy on reversed digits with identical logits, and a control:
the plain LeNet-5 trained on the same two-polarity data as the doubled network.

"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from ..data import ArrayDataset, stratified_subset
from ..nn.models import lenet5
from ..recos import double_anchors, negate_first_layer, plot_image_grid, polarity_transform
from ..train import evaluate, seed_everything
from ._claims import Binomial, Claim, Close, Exact, Greater
from ._recipes import LeNetBudget, load_digits, train_sgd
from ._registry import ExperimentResult, RunContext, register_experiment

_N = Binomial("n_test")
_MNIST_SETTING = ("mnist5k (4,000 training / 1,000 test real MNIST digits) for MNIST's 60,000 / 10,000 when full "
                  "MNIST files are not in --data-dir")


@dataclass(frozen=True)
class PolarityConfig(LeNetBudget):
    """The polarity experiment's budget; ``both_size`` digits (all if None, a stratified subset otherwise) of the
    training set are used in both polarities for the doubled and the control network, trained for
    ``doubled_epochs``."""

    doubled_epochs: int = 10
    both_size: int | None = None


def _both_polarities(train: ArrayDataset) -> ArrayDataset:
    return ArrayDataset(torch.cat([train.images, 1.0 - train.images]), torch.cat([train.labels, train.labels]),
                        train.num_classes, f"{train.name} in both polarities", train.split)


def _logit_gap(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(max |T(model)(1 - x) - model(x)|, share of equal predictions), everything in ``dtype``: the model, the
    exact transform T (its bias b + sum(W)) and the reversal 1 - x."""
    a = copy.deepcopy(model).to(dtype)
    b = polarity_transform(a, layer="c1", offset=1.0)
    x = x.to(dtype)
    with torch.no_grad():
        original, swapped = a(x), b(1.0 - x)
    gap = float((original - swapped).abs().max())
    agree = float((original.argmax(1) == swapped.argmax(1)).double().mean())
    return gap, agree


def _accuracy_bars(metrics: dict[str, float]) -> Figure:
    groups = [("original", "acc_original", "acc_reversed"), ("C1 negated\n(weights only)", "acc_negated_original",
              "acc_negated_reversed"), ("C1 exact\ntransform", "acc_exact_original", "acc_exact_reversed"),
              ("doubled C1\n(both polarities)", "acc_doubled_original", "acc_doubled_reversed"),
              ("plain LeNet-5\n(both polarities)", "acc_mixed_original", "acc_mixed_reversed")]
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    for i, (_, orig, rev) in enumerate(groups):
        for j, (key, colour) in enumerate(((orig, "tab:blue"), (rev, "tab:orange"))):
            ax.bar(i + (j - 0.5) * 0.38, metrics[key], 0.36, color=colour,
                   label=("original test digits", "reversed test digits")[j] if i == 0 else None)
            ax.text(i + (j - 0.5) * 0.38, metrics[key] + 0.01, f"{metrics[key]:.1%}", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test accuracy")
    ax.axhline(0.9894, color="0.5", lw=0.8, ls="--")
    ax.axhline(0.3736, color="0.5", lw=0.8, ls=":")
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.set_title("LeNet-5 and grey-scale reversal (paper: 98.94% dashed, 37.36% dotted)", fontsize=9)
    fig.tight_layout()
    return fig


def _doubling_reading(m: dict[str, float], num_test: int) -> str:
    doubled = min(m["acc_doubled_original"], m["acc_doubled_reversed"])
    mixed = min(m["acc_mixed_original"], m["acc_mixed_reversed"])
    noise = 2.0 * (0.97 * 0.03 / num_test) ** 0.5  # about two standard errors of an accuracy near 97%
    if doubled >= mixed + noise:
        return (f"The doubled anchors help beyond the two-polarity data: worst polarity {doubled:.2%} vs "
                f"{mixed:.2%} for the plain network (more than two standard errors, {noise:.1%}, apart).")
    if mixed >= doubled + noise:
        return (f"The plain network does better on its worse polarity ({mixed:.2%} vs {doubled:.2%}): seeing both "
                "polarities in training is what matters here, not the doubled anchors.")
    return (f"Worst-polarity accuracies {doubled:.2%} (doubled) and {mixed:.2%} (plain) are within about two "
            f"standard errors ({noise:.1%} with {num_test:,} test digits): seeing both polarities in training is "
            "what makes the network handle both; the doubled anchors make the two polarities explicit in C1, with "
            "no accuracy gain that this test set can resolve.")


@register_experiment(
    "recos-polarity",
    title="LeNet-5 and grey-scale-reversed digits: the failure, the C1 negation that swaps it, doubled anchors.",
    paper="003 sec. 2, Fig. 5",
    quick=PolarityConfig(epochs=3, doubled_epochs=1, lr=0.05, both_size=2000, full_mnist=False),
    full=PolarityConfig(),
    metrics=("acc_original", "acc_reversed", "acc_negated_original", "acc_negated_reversed",
             "acc_doubled_original", "acc_doubled_reversed", "acc_exact_original", "acc_exact_reversed",
             "exact_max_logit_gap_float32", "exact_max_logit_gap_float64", "exact_prediction_agreement",
             "acc_mixed_original", "acc_mixed_reversed", "c1_filter_sum_mean_abs", "acc_reversed_before_pad",
             "acc_constant_transform_reversed_before_pad", "exact_mask_max_logit_gap_float64", "n_test",
             "acc_doubled_worst"),
    claims=(
        Claim("fails-on-reversed", "003 sec. 2, Fig. 5",
              "LeNet-5 trained on MNIST scores 98.94% on the test digits but only 37.36% on their grey-scale "
              "reversal: the drop is 61.58 points.",
              Greater("acc_original", "acc_reversed", _N, _N, margin=0.30,
                      label="accuracy drop, original - reversed"),
              paper_value=0.9894 - 0.3736, setting=_MNIST_SETTING, quick=True),
        Claim("negation-swaps", "003 sec. 2",
              "Negating all C1 weights (rest of the network unchanged) swaps the two accuracies: 98.94% on reversed "
              "digits and 37.36% on the original ones (judged: each negated accuracy within 2 points of the "
              "swapped original one).",
              Close("acc_negated_reversed", "acc_original", 0.02, _N, _N,
                    label="negated C1 on reversed - original net on original"),
              paper_value=0.0, setting=_MNIST_SETTING + "; inputs in [0, 1] as in Fig. 5 (reversal x -> 1 - x)"),
        Claim("exact-transform", "003 sec. 2 (derived in cnnlens.recos.polarity_transform)",
              "C1 -> (-W, b + sum W) maps the network on x exactly to a network on 1 - x: identical logits.",
              Exact("exact_max_logit_gap_float64", 1e-9, "float64 rounding of logits of size ~10",
                    label="max |logit difference| in float64"),
              paper_value=0.0, setting="beyond the paper: the exact form of the paper's negation", quick=True),
        Claim("doubled-handles-both", "003 sec. 2",
              "Doubling C1's anchors ([W; -W]) gives a network with a high recognition rate on both polarities "
              "(judged: its worse polarity within 2 points of the single-polarity network on original digits).",
              Greater("acc_doubled_worst", "acc_original", _N, _N, margin=-0.02,
                      label="doubled net's worse polarity - original net on original"),
              setting=_MNIST_SETTING),
    ),
)
def run(cfg: PolarityConfig, ctx: RunContext) -> ExperimentResult:
    """Train LeNet-5, test it on original and reversed digits, negate C1 (naive and exact), train doubled C1."""
    digits = load_digits(ctx, full_mnist=cfg.full_mnist, train_size=cfg.train_size)
    train, test, data_text = digits.train, digits.test, digits.description
    x, x_rev = test.images, 1.0 - test.images  # reversal of the padded 32x32 image: c = 1 everywhere
    reversed_test = TensorDataset(x_rev, test.labels)
    seed_everything(ctx.seed)
    base = train_sgd(ctx, "lenet5", lenet5(), train, cfg)
    m: dict[str, float] = {"n_test": float(len(test))}
    m["acc_original"] = evaluate(base, test).accuracy
    m["acc_reversed"] = evaluate(base, reversed_test).accuracy
    naive = negate_first_layer(base, layer="c1")
    m["acc_negated_original"] = evaluate(naive, test).accuracy
    m["acc_negated_reversed"] = evaluate(naive, reversed_test).accuracy
    exact = polarity_transform(base, layer="c1", offset=1.0)
    m["acc_exact_original"] = evaluate(exact, test).accuracy
    m["acc_exact_reversed"] = evaluate(exact, reversed_test).accuracy
    m["exact_max_logit_gap_float32"], _ = _logit_gap(base, x, torch.float32)
    m["exact_max_logit_gap_float64"], m["exact_prediction_agreement"] = _logit_gap(base, x, torch.float64)
    # Digits reversed before the zero padding (the border stays 0): reversed = mask - x with the interior mask.
    mask = torch.zeros(1, 32, 32)
    mask[:, 2:30, 2:30] = 1.0
    x_inner = mask - x
    m["acc_reversed_before_pad"] = evaluate(base, TensorDataset(x_inner, test.labels)).accuracy
    m["acc_constant_transform_reversed_before_pad"] = evaluate(exact, TensorDataset(x_inner, test.labels)).accuracy
    base64 = copy.deepcopy(base).double()
    masked = polarity_transform(base64, layer="c1", offset=mask.double())
    with torch.no_grad():
        m["exact_mask_max_logit_gap_float64"] = float((masked(mask.double() - x.double()) - base64(x.double()))
                                                      .abs().max())
    sums = base.c1.weight.detach().sum(dim=(1, 2, 3))
    m["c1_filter_sum_mean_abs"] = float(sums.abs().mean())
    ctx.log(f"C1 filter sums (the bias correction of the exact transform): {[round(float(s), 3) for s in sums]}")

    both = _both_polarities(stratified_subset(train, cfg.both_size, seed=ctx.seed))
    seed_everything(ctx.seed)
    doubled = train_sgd(ctx, "doubled", double_anchors(lenet5(), layer="c1", next_layer="c3"), both, cfg,
                        cfg.doubled_epochs)
    m["acc_doubled_original"] = evaluate(doubled, test).accuracy
    m["acc_doubled_reversed"] = evaluate(doubled, reversed_test).accuracy
    m["acc_doubled_worst"] = min(m["acc_doubled_original"], m["acc_doubled_reversed"])
    seed_everything(ctx.seed)
    mixed = train_sgd(ctx, "mixed", lenet5(), both, cfg, cfg.doubled_epochs)
    m["acc_mixed_original"] = evaluate(mixed, test).accuracy
    m["acc_mixed_reversed"] = evaluate(mixed, reversed_test).accuracy
    for key, value in m.items():
        ctx.log(f"{key} = {value:.6g}")

    samples = torch.cat([x[:8], x_rev[:8]])[:, 0]
    figures = {
        "fig5_samples": plot_image_grid(samples, ncols=8, signed=False,
                                        title="Fig. 5: test digits (top) and their grey-scale reversal (bottom)"),
        "accuracies": _accuracy_bars(m),
        "c1_anchors": plot_image_grid(base.c1.weight.detach(), title="C1 anchors of the trained LeNet-5",
                                      titles=[f"sum {float(s):+.2f}" for s in sums]),
        "doubled_c1_anchors": plot_image_grid(doubled.c1.weight.detach(), ncols=6,
                                              title="doubled C1 anchors [W; -W] (trained on both polarities)"),
    }
    swap_gap = abs(m["acc_negated_reversed"] - m["acc_original"]) + abs(m["acc_negated_original"] - m["acc_reversed"])
    notes = (
        f"Data: {data_text}; reversal x -> 1 - x of the zero-padded 32x32 image (as in Fig. 5, the padded border "
        f"turns white). Trained LeNet-5: {m['acc_original']:.2%} on test digits, {m['acc_reversed']:.2%} on "
        f"reversed ones (paper 98.94% / 37.36%"
        + ("" if cfg.train_size is None and cfg.epochs >= 10 else "; quick training budget here")
        + f"). Negating C1's weights as the paper does gives {m['acc_negated_original']:.2%} on original and "
        f"{m['acc_negated_reversed']:.2%} on reversed digits: "
        + ("the accuracies swap approximately, as the paper reports" if swap_gap < 0.05 else
           "the accuracies do NOT swap as the paper reports")
        + f" (sum of the two gaps {swap_gap:.2%}), because C1(1 - x; -W, b) = C1(x; W, b) - sum(W_k): every "
        f"channel is shifted by its "
        f"filter sum (mean |sum(W_k)| = {m['c1_filter_sum_mean_abs']:.3f}), the local-mean coordinate of the "
        f"augmented anchor (eq. 7). The exact transform (weights -W, bias b + sum(W)) gives "
        f"{m['acc_exact_reversed']:.2%} on reversed digits = the original's {m['acc_original']:.2%}, with "
        f"max |logit difference| {m['exact_max_logit_gap_float32']:.1e} in float32 and "
        f"{m['exact_max_logit_gap_float64']:.1e} in float64 and {m['exact_prediction_agreement']:.2%} identical "
        f"predictions. If the digits are reversed before the zero padding (the border stays black, reversal "
        f"image c = the 28x28 interior mask), the network scores {m['acc_reversed_before_pad']:.2%}; the "
        f"constant-bias transform, wrong only in the windows that touch the border, gives "
        f"{m['acc_constant_transform_reversed_before_pad']:.2%} on them, and the exact transform with the "
        f"position-dependent bias map b + W * c recovers the original logits to "
        f"{m['exact_mask_max_logit_gap_float64']:.1e} (float64). Doubled anchors [W; -W] (tied, 12 channels) "
        "trained on both polarities: "
        f"{m['acc_doubled_original']:.2%} / {m['acc_doubled_reversed']:.2%}; the control, the plain 6-anchor "
        f"LeNet-5 trained on the same data, reaches {m['acc_mixed_original']:.2%} / {m['acc_mixed_reversed']:.2%}. "
        + _doubling_reading(m, len(test))
    )
    return ExperimentResult(m, figures, notes)
