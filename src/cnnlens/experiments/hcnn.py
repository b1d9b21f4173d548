"""``hcnn``: Hierarchical Attribute CNNs against a plain CNN, accuracy and parameters (001 sec. 5.5, Tables 7-8).

A CPU-sized Hierarchical CNN (K = 8) and its (+) variant are trained next to a family of plain CNNs of the same
depth at several widths (the text's All-CNN comparison: "similar to our hierarchical architecture, but it has much
more parameters because filters are not translation invariant along v"), every network with its learning rate
chosen on held-out images. The plain CNN "of similar accuracy" is read off the family's accuracy-vs-parameters
curve: the parameters it needs to reach the HCNN's accuracy, interpolated in log-parameters. The paper's CIFAR-10
and CIFAR-100 networks are constructed and their parameters counted from their layers; a CIFAR-100 arm runs when
the data folder has CIFAR-100.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from ..nn import HierarchicalCNN
from ..nn.models import PlainCNN
from ..train import evaluate
from ._claims import AllOf, AtLeast, Binomial, Claim, Estimated, Greater, Near
from ._hcnn import HCNNArch, HCNNData, hcnn_cifar100, hcnn_data, train_test
from ._receptive import RFBudget, tune_lr
from ._registry import ExperimentResult, RunContext, register_experiment


@dataclass(frozen=True)
class HCNNConfig:
    """Training and held-out images, the HCNN's architecture, the plain CNN family's widths, the training budget
    (its ``lr_grid`` is searched per network on the held-out images with ``tune_images`` images seen per rate) and
    the CIFAR-100 arm's training images (used only when the data folder has CIFAR-100)."""

    train_size: int = 2000
    validation: int = 1000
    arch: HCNNArch = field(default_factory=HCNNArch)
    cnn_widths: tuple[int, ...] = (4, 8, 16, 32, 64)
    budget: RFBudget = RFBudget(images=20_000, min_epochs=4, max_epochs=30, lr=1e-2,
                                lr_grid=(3e-3, 1e-2, 3e-2, 1e-1))
    tune_images: int = 4_000
    cifar100_size: int = 5_000


def _plain_cnn(width: int, data: HCNNData) -> PlainCNN:
    """The plain CNN of the HCNN's depth (five 3x3 conv + BN + ReLU layers in three stages), ``width`` channels."""
    return PlainCNN([[width], [width, width], [width, width]], data.classes, data.channels)


def _parameters(arm: str, model: nn.Module) -> float:
    """The count the comparison uses: the HCNN's free w, the (+) variant's h and g, every parameter of a CNN."""
    if isinstance(model, HierarchicalCNN):
        counts = model.parameter_counts()
        return float(counts.factorised if arm.startswith("hcnn_plus") else counts.free)
    return float(sum(p.numel() for p in model.parameters()))


def _train_arm(ctx: RunContext, arm: str, build: Callable[[], nn.Module], data: HCNNData, cfg: HCNNConfig,
               lr: float | None = None, tag: str = "") -> dict[str, float]:
    """Choose the learning rate of ``cfg.budget.lr_grid`` on the held-out images (``tune_lr``, ``tune_images`` seen
    per rate; ``lr`` given: no search), train on ``data.train`` within ``cfg.budget`` and return the arm's
    test accuracy, parameters, rate and final training loss / accuracy (convergence). ``tag`` keeps the training
    runs (and their checkpoints) of another data set apart."""
    if lr is None:
        if data.val is None:
            raise ValueError(f"the {arm} arm tunes its learning rate on held-out images; build its data with "
                             "validation > 0")
        trial = replace(cfg.budget, images=cfg.tune_images, min_epochs=1)
        lr = tune_lr(ctx, f"{arm}{tag}-tune", build, data.train, data.val, trial, ctx.seed)[0].lr
    acc, model = train_test(ctx, f"{arm}{tag}", build, data, replace(cfg.budget, lr=lr), ctx.seed)
    seen = evaluate(model, data.train)
    return {f"acc_{arm}": acc, f"params_{arm}": _parameters(arm, model), f"lr_{arm}": lr,
            f"train_loss_{arm}": seen.loss, f"train_acc_{arm}": seen.accuracy}


def _to_match(curve: list[tuple[float, float]], target: float, n_test: float) -> tuple[float, float | None, int]:
    """The parameters a plain CNN needs for accuracy ``target``, interpolated linearly in log10(parameters) between
    the two widths of ``curve`` ((parameters, accuracy), any order) whose accuracies bracket it: the first width
    that reaches ``target`` and the one before. Returns (parameters, standard error of their log10, bracket):
    bracket 0 when bracketed, -1 when even the narrowest CNN reaches ``target`` (the count is then the narrowest's,
    an upper bound), +1 when none does (the widest's, a lower bound). The standard error carries the binomial
    errors of the HCNN's and the interpolated CNN's accuracies (each on ``n_test`` items) through the segment's
    slope d log10(parameters) / d accuracy; None when that slope is not positive."""
    points = sorted(curve)
    reached = [i for i, (_, acc) in enumerate(points) if acc >= target]
    first = reached[0] if reached else len(points)
    bracket = -1 if first == 0 else (1 if first == len(points) else 0)
    lo, hi = ((0, 1) if bracket == -1 else (len(points) - 2, len(points) - 1) if bracket == 1 else (first - 1, first))
    (p_lo, a_lo), (p_hi, a_hi) = points[lo], points[hi]
    if bracket == 0:
        log_p = math.log10(p_lo) + (target - a_lo) / (a_hi - a_lo) * (math.log10(p_hi) - math.log10(p_lo))
    else:
        log_p = math.log10(points[0][0] if bracket == -1 else points[-1][0])
    se_acc = Binomial(int(n_test)).se(target, {})
    slope = (math.log10(p_hi) - math.log10(p_lo)) / (a_hi - a_lo) if a_hi > a_lo else None
    se = None if slope is None or se_acc is None else slope * math.sqrt(2.0) * se_acc
    return 10.0 ** log_p, se, bracket


def _figure(metrics: dict[str, float], widths: tuple[int, ...]) -> Figure:
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    params = [metrics[f"params_cnn_w{w}"] for w in widths]
    accs = [metrics[f"acc_cnn_w{w}"] * 100 for w in widths]
    ax.plot(params, accs, "o-", color="0.4", label="plain CNN family")
    for w, x, y in zip(widths, params, accs, strict=True):
        ax.annotate(f"{w} ch.", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for key, label, marker in (("hcnn", "HCNN (free w)", "s"), ("hcnn_plus", "HCNN (+) (h, g)", "D")):
        ax.scatter(metrics[f"params_{key}"], metrics[f"acc_{key}"] * 100, s=50, marker=marker, zorder=3, label=label)
    ax.axhline(metrics["acc_hcnn"] * 100, color="C0", lw=0.8, ls="--")
    ax.axvline(metrics["params_cnn_to_match"], color="C0", lw=0.8, ls=":",
               label=f"CNN at the HCNN's accuracy ({metrics['param_ratio']:.1f}x)")
    ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy (%)",
           title="Tables 7-8 of 001, CPU-sized: accuracy vs parameters")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


_PAPER_COUNTS = ("the paper's CIFAR-10 / CIFAR-100 networks constructed as described in sec. 5.4.2 (J = 12, K = 16, "
                 "s_5 = s_9 = 1, 3x3 spatial, 7 x 11 / 11 x 11 attribute supports, Q = 32); counted from their "
                 "layers, not trained")


_CIFAR100 = ("acc_hcnn_cifar100", "params_hcnn_cifar100", "acc_hcnn_plus_cifar100", "params_hcnn_plus_cifar100",
             "acc_cnn_cifar100", "params_cnn_cifar100")
_WIDTHS = (4, 8, 16, 32, 64)


@register_experiment(
    "hcnn",
    title="Hierarchical Attribute CNNs reach a plain CNN's accuracy with an order of magnitude fewer parameters.",
    paper="001 sec. 5.5.1-5.5.2, Tables 7-8",
    quick=HCNNConfig(train_size=60, validation=30, arch=HCNNArch(width=4, depth=4, downsample=(2,),
                                                                 attribute_kernel=(1, 3), q=2),
                     cnn_widths=(4, 8), budget=RFBudget(images=60, min_epochs=1, max_epochs=1, lr=3e-3,
                                                        lr_grid=(3e-3, 1e-2)),
                     tune_images=60),
    full=HCNNConfig(),
    metrics=("acc_hcnn", "params_hcnn", "acc_hcnn_plus", "params_hcnn_plus", "acc_cnn", "params_cnn",
             "params_paper_cifar10", "params_paper_cifar100", "params_paper_cifar10_plus",
             "params_paper_cifar100_plus", "params_cnn_to_match", "param_ratio", "log10_param_ratio",
             "log10_param_ratio_se", "match_bracket", "cnn_width", "n_test",
             *(f"{k}_cnn_w{w}" for w in _WIDTHS for k in ("acc", "params")), *_CIFAR100),
    claims=(
        Claim("comparable-accuracy-fewer-parameters", "001 sec. 5.5.1-5.5.2, Tables 7-8",
              "Hierarchical CNNs have accuracies comparable to state-of-the-art architectures with an order of "
              "magnitude fewer parameters (CIFAR-10: 0.098M / 91.43% against All-CNN's 1.3M / 92.75%; judged: a "
              "plain CNN of the same depth needs at least 10x the HCNN's free parameters to reach the HCNN's "
              "accuracy, params_cnn_to_match / params_hcnn >= 10, the parameters interpolated in log10 along a "
              "family of CNN widths).",
              AtLeast("log10_param_ratio", 1.0,
                      Estimated("log10_param_ratio_se", "binomial errors of the HCNN's and the interpolated CNN's "
                                                        "test accuracies through the CNN curve's log10-parameter "
                                                        "slope between the bracketing widths"),
                      label="log10(params_cnn_to_match / params_hcnn)"),
              paper_value="0.098M / 91.43% vs 1.3M / 92.75%"),
        Claim("plus-variant-more-accurate", "001 sec. 5.4.2, Tables 7-8",
              "The (+) variant, with an intermediate nonlinearity, is more accurate than the HCNN (92.50% against "
              "91.43% on CIFAR-10, 63.19% against 62.01% on CIFAR-100).",
              Greater("acc_hcnn_plus", "acc_hcnn", Binomial("n_test"), Binomial("n_test"),
                      label="(+) - HCNN accuracy"), paper_value=0.0107),
        Claim("free-parameters-cifar10", "001 sec. 5.4.2",
              "The CIFAR-10 network has approximately 0.098M free parameters (the filters w of every layer, the 10 "
              "filters of the last layer included).",
              Near("params_paper_cifar10", 98_000, 500, label="free parameters, CIFAR-10 network"),
              paper_value=98_000, setting=_PAPER_COUNTS, quick=True),
        Claim("free-parameters-cifar100", "001 sec. 5.4.2",
              "With 11 x 11 attribute supports and 100 classes the CIFAR-100 network has approximately 0.25M free "
              "parameters.",
              Near("params_paper_cifar100", 250_000, 5_000, label="free parameters, CIFAR-100 network"),
              paper_value=250_000, setting=_PAPER_COUNTS, quick=True),
        Claim("plus-parameters", "001 sec. 5.4.2",
              "The (+) implementation's Q = 32 spatial filters h (3x3) and Q K filters g (7 x 11) per layer need "
              "approximately 0.34M coefficients on CIFAR-10 and 0.89M on CIFAR-100 (judged on the layers 2 < j < J "
              "the sentence describes; the count with layers 1-2 is reported as well).",
              AllOf((("CIFAR-10", Near("params_paper_cifar10_plus", 340_000, 5_000, label="h and g, CIFAR-10")),
                     ("CIFAR-100", Near("params_paper_cifar100_plus", 890_000, 5_000,
                                        label="h and g, CIFAR-100")))),
              paper_value="0.34M, 0.89M", setting=_PAPER_COUNTS, quick=True),
    ),
)
def run(cfg: HCNNConfig, ctx: RunContext) -> ExperimentResult:
    """Count the paper's networks; train the HCNN, the HCNN (+) and a family of plain CNN widths on the same images
    (each with its learning rate chosen on held-out images); find the parameters a plain CNN needs to reach the
    HCNN's accuracy; repeat the HCNN / CNN pair on CIFAR-100 when the data folder has it."""
    if tuple(sorted(cfg.cnn_widths)) != tuple(cfg.cnn_widths) or len(cfg.cnn_widths) < 2:
        raise ValueError(f"cnn_widths must list at least two increasing widths; received {cfg.cnn_widths}")
    metrics: dict[str, float] = {}
    for name, build in (("cifar10", HierarchicalCNN.cifar10), ("cifar100", HierarchicalCNN.cifar100)):
        counts = build().parameter_counts()
        metrics[f"params_paper_{name}"] = float(counts.free)
        metrics[f"params_paper_{name}_plus"] = float(counts.factorised_deep)
        metrics[f"params_paper_{name}_plus_all_layers"] = float(counts.factorised)
        ctx.log(f"paper's {name} network: {counts}")
    data = hcnn_data(ctx, cfg.train_size, "the HCNN and the plain CNNs train on mnist5k", validation=cfg.validation)
    metrics["n_test"] = float(len(data.test))
    metrics |= _train_arm(ctx, "hcnn", lambda: cfg.arch.build(data), data, cfg)
    metrics |= _train_arm(ctx, "hcnn_plus", lambda: cfg.arch.build(data, plus=True), data, cfg)
    for width in cfg.cnn_widths:
        metrics |= _train_arm(ctx, f"cnn_w{width}", lambda width=width: _plain_cnn(width, data), data, cfg)
    target = metrics["acc_hcnn"]
    reaching = [w for w in cfg.cnn_widths if metrics[f"acc_cnn_w{w}"] >= target]
    width = reaching[0] if reaching else min(cfg.cnn_widths, key=lambda w: abs(metrics[f"acc_cnn_w{w}"] - target))
    metrics |= {"cnn_width": float(width), "acc_cnn": metrics[f"acc_cnn_w{width}"],
                "params_cnn": metrics[f"params_cnn_w{width}"]}
    curve = [(metrics[f"params_cnn_w{w}"], metrics[f"acc_cnn_w{w}"]) for w in cfg.cnn_widths]
    to_match, log_se, bracket = _to_match(curve, target, metrics["n_test"])
    metrics |= {"params_cnn_to_match": to_match, "param_ratio": to_match / metrics["params_hcnn"],
                "log10_param_ratio": math.log10(to_match / metrics["params_hcnn"]), "match_bracket": float(bracket)}
    if log_se is not None:
        metrics["log10_param_ratio_se"] = log_se
    unmeasured = {} if log_se is not None else {
        "log10_param_ratio_se": "the CNN curve's accuracy does not rise across the widths the crossing uses"}
    cifar100 = hcnn_cifar100(ctx, cfg.cifar100_size)
    if isinstance(cifar100, str):
        unmeasured |= dict.fromkeys(_CIFAR100, cifar100)
    else:
        for arm, build in (("hcnn", lambda: cfg.arch.build(cifar100)),
                           ("hcnn_plus", lambda: cfg.arch.build(cifar100, plus=True)),
                           ("cnn", lambda: _plain_cnn(width, cifar100))):
            lr = metrics[f"lr_{arm}" if arm != "cnn" else f"lr_cnn_w{width}"]
            metrics |= {f"{k}_cifar100": v
                        for k, v in _train_arm(ctx, arm, build, cifar100, cfg, lr=lr, tag="-cifar100").items()}
    side = {-1: "even the narrowest plain CNN reaches the HCNN's accuracy: the count is an upper bound",
            0: "interpolated between the two bracketing widths",
            1: "no plain CNN of the family reaches the HCNN's accuracy: the count is a lower bound"}[bracket]
    setting = (f"{data.description}; HCNN {cfg.arch.describe()} (paper: K = 16, J = 12, 7 x 11, Q = 32); plain CNNs "
               f"of the HCNN's depth (five 3x3 conv + BN + ReLU) at widths {', '.join(map(str, cfg.cnn_widths))} "
               f"instead of All-CNN (1.3M); Adam with a cosine decay for about {cfg.budget.images:,} training "
               f"images seen, the learning rate of each network chosen from {list(cfg.budget.lr_grid)} on the "
               f"held-out images with {cfg.tune_images:,} images seen per rate (paper: SGD, 240 epochs, "
               f"augmentation); one seed, {len(data.test):,} test images")
    notes = (f"HCNN {metrics['acc_hcnn']:.2%} with {metrics['params_hcnn']:.0f} free parameters (lr "
             f"{metrics['lr_hcnn']:g}), (+) {metrics['acc_hcnn_plus']:.2%} with {metrics['params_hcnn_plus']:.0f} h "
             f"and g coefficients (lr {metrics['lr_hcnn_plus']:g}). Plain CNNs: "
             + ", ".join(f"{w} ch. {metrics[f'acc_cnn_w{w}']:.2%} / {metrics[f'params_cnn_w{w}']:.0f}"
                         for w in cfg.cnn_widths)
             + f". A plain CNN needs about {to_match:,.0f} parameters to reach the HCNN's accuracy ({side}), "
             f"{metrics['param_ratio']:.1f}x the HCNN's free parameters. The paper's networks, counted from their "
             f"layers: CIFAR-10 {metrics['params_paper_cifar10']:.0f} free parameters, CIFAR-100 "
             f"{metrics['params_paper_cifar100']:.0f}; (+) h and g of the layers 2 < j < J "
             f"{metrics['params_paper_cifar10_plus']:.0f} and {metrics['params_paper_cifar100_plus']:.0f}, with "
             f"layers 1-2 {metrics['params_paper_cifar10_plus_all_layers']:.0f} and "
             f"{metrics['params_paper_cifar100_plus_all_layers']:.0f}.")
    for width in set(_WIDTHS) - set(cfg.cnn_widths):
        unmeasured |= dict.fromkeys((f"acc_cnn_w{width}", f"params_cnn_w{width}"),
                                    f"this configuration trains the widths {cfg.cnn_widths} only")
    metrics |= {key: math.nan for key in unmeasured}
    return ExperimentResult(metrics, {"accuracy_vs_parameters": _figure(metrics, cfg.cnn_widths)}, notes,
                            unmeasured=unmeasured,
                            settings={"comparable-accuracy-fewer-parameters": setting,
                                      "plus-variant-more-accurate": setting})
