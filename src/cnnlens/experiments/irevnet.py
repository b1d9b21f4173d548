"""``irevnet``: a bijective i-RevNet beside a non-invertible ResNet of the same size, and the layer-wise analysis of
001 ch. 6 (Table 9, Figs. 18-22, eqs. 16-17).

Both networks are trained with the one training loop (:func:`cnnlens.train.fit`, Adam with a cosine decay) on
mnist5k digits padded to 32 x 32 (CIFAR-10 when the data folder has it, full configuration only). The i-RevNet is
:class:`cnnlens.nn.IRevNet`, bijective (model (b) of sec. 6.3.2 at CPU size: S~ down-samples by 2, then S_j by 2 at
the first block of stages 2-4, every layer of dimension D = C x 32 x 32); the ResNet is
:class:`cnnlens.nn.models.SmallResNet` whose width gives the closest parameter count (as
:func:`cnnlens.nn.irevnet.comparable_resnet`). Then,
with :mod:`cnnlens.analysis`:

- eps(X) of sec. 6.4.2 on uniform noises and on the test set (the exact inverse: holds at any budget);
- the singular values of dPhi at test inputs (full Jacobian, Fig. 19) and the fractions of D holding 80% / 97% of
  the energy;
- a linear SVM and a 1-NN on the spatially averaged, standardised output of every block of both networks (Fig. 21);
- the intra / inter-class distance ratio of eqs. 16-17 per block;
- the SVM and 1-NN accuracy after projecting the final spatially averaged Phi on d principal components (Fig. 22);
- the training-loss curves (Fig. 18) and the interpolations Phi^-1(t Phi x0 + (1 - t) Phi x1) (Fig. 20).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from ..analysis import (
    Contraction,
    PCASeparability,
    Separability,
    contraction,
    interpolate,
    jacobian_spectrum,
    layerwise_separability,
    paired_se,
    pca_separability,
    reconstruction_error,
    spatial_features,
    uniform_noise,
)
from ..data import ArrayDataset, stratified_subset
from ..nn import IRevNet, comparable_resnet
from ..train import FitResult, evaluate, seed_everything
from ._claims import AllOf, AtMost, Binomial, Claim, Close, Estimated, Exact, Greater, MeanError
from ._receptive import mean_sd
from ._recipes import load_cifar10, load_digits
from ._registry import ExperimentResult, RunContext, register_experiment

#: i-RevNet blocks per stage and down-sampling factor of each stage's first block (S~ adds a factor 2)
BLOCKS = (2, 2, 2, 2)
STRIDES = (1, 2, 2, 2)
RESNET_BLOCKS = 2  # per stage of the small ResNet (three stages)
N_IREV = sum(BLOCKS)
N_RES = 3 * RESNET_BLOCKS
PCA_DIMS = (2, 5, 10, 20, 50, 100, 200)
#: Table 9 of 001 (ILSVRC-2012 top-1 error, %)
TABLE9 = {"ResNet": 24.7, "RevNet": 25.2, "i-RevNet (a)": 24.7, "i-RevNet (b)": 26.7}
_EPS_TOLERANCE = 1e-5  # about 80 float32 ulps (1.19e-7); the paper's 5e-6 and 3e-6 lie below it


@dataclass(frozen=True)
class IRevNetConfig:
    """Data sizes (None: all), training budget (both networks), and the analysis sizes."""

    train_size: int | None = None
    test_size: int | None = None
    cifar_train_size: int = 5000
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    noise: int = 10_000
    jacobian_inputs: int = 6
    contraction_size: int = 500
    cv_size: int = 1000
    folds: int = 3
    interpolation_pairs: int = 3
    steps: int = 8


def _loss_figure(curves: dict[str, FitResult]) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, result in curves.items():
        ax.plot([h["epoch"] for h in result.history], [h["train_loss"] for h in result.history], marker="o",
                label=name)
    ax.set(xlabel="epoch", ylabel="training cross-entropy (epoch mean)", yscale="log",
           title="Fig. 18 of 001: training loss, i-RevNet (b) and ResNet")
    ax.legend()
    fig.tight_layout()
    return fig


def _spectrum_figure(values: list[np.ndarray], k80: list[int | None], k97: list[int | None], dim: int) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, s in enumerate(values):
        ax.plot(np.arange(1, len(s) + 1), s / s[0], lw=1, label="test inputs" if i == 0 else None, color="C0",
                alpha=0.6)
    for counts, share, color in ((k80, "80%", "C1"), (k97, "97%", "C2")):
        known = [c for c in counts if c is not None]
        if known:
            ax.axvline(float(np.mean(known)), color=color, ls="--", label=f"{share} of the energy (mean)")
    ax.set(xscale="log", yscale="log", xlabel=f"index (D = {dim})", ylabel="singular value / largest",
           title="Fig. 19 of 001: normalised sorted singular values of dPhi_x")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _interpolation_figure(rows: list[tuple[torch.Tensor, torch.Tensor]], t: np.ndarray) -> Figure:
    fig, axes = plt.subplots(2 * len(rows), len(t), figsize=(1.2 * len(t), 2.6 * len(rows)), squeeze=False)
    for r, (images, pixels) in enumerate(rows):
        for c in range(len(t)):
            for k, (batch, label) in enumerate(((images, "Phi^-1 path"), (pixels, "pixel path"))):
                ax = axes[2 * r + k, c]
                img = batch[c].detach().double().numpy()
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0).clip(0, 1), cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(label, fontsize=7)
                if r == 0 and k == 0:
                    ax.set_title(f"t={t[c]:.2f}", fontsize=7)
    fig.suptitle("Fig. 20 of 001: x_t = Phi^-1(t Phi x0 + (1 - t) Phi x1), x0 left, x1 right")
    fig.tight_layout()
    return fig


def _separability_figure(rev: Separability, res: Separability) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, result, name in ((axes[0], res, "(a) ResNet"), (axes[1], rev, "(b) i-RevNet")):
        depth = np.arange(1, len(result.layers) + 1)
        ax.plot(depth, result.linear_acc, marker="o", label="linear SVM")
        ax.plot(depth, result.nn_acc, marker="s", label="1-NN")
        ax.set(xlabel="block j", title=name)
    axes[0].set_ylabel("test accuracy on spatially averaged Phi_j")
    axes[0].legend()
    fig.suptitle("Fig. 21 of 001: accuracy at depth j")
    fig.tight_layout()
    return fig


def _pca_figure(pca: PCASeparability) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(pca.dims, pca.linear_acc, marker="o", label="linear SVM")
    ax.plot(pca.dims, pca.nn_acc, marker="s", label="1-NN")
    ax.axhline(pca.full_linear_acc, color="C0", ls=":", label="SVM, all components")
    ax.axhline(pca.full_nn_acc, color="C1", ls=":", label="1-NN, all components")
    ax.set(xscale="log", xlabel="principal components d", ylabel="test accuracy",
           title="Fig. 22 of 001: accuracy on pi_d Phi (i-RevNet)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _contraction_figure(rev: Contraction, res: Contraction) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for result, name in ((rev, "i-RevNet"), (res, "ResNet")):
        ax.plot(np.arange(0, len(result.layers) + 1), (result.input_ratio, *result.ratio), marker="o", label=name)
    ax.set(xlabel="block j (0: input)", ylabel="mean intra / inter-class distance",
           title="eqs. 16-17 of 001: contraction per depth")
    ax.legend()
    fig.tight_layout()
    return fig


def _PAIRED(key: str) -> Estimated:  # noqa: N802 - reads like the noise classes
    return Estimated(key, "paired over the same test items: sd of the per-item difference / sqrt(n)")


def _greater(a: str, b: str, label: str, margin: float = 0.0) -> Greater:
    return Greater(a, b, Binomial("n_test"), Binomial("n_test"), margin=margin, label=label)


_SETTING = ("mnist5k digits padded to 32 x 32 (4,000 / 1,000) for ILSVRC-2012; a bijective i-RevNet of "
            f"{N_IREV} blocks (S~ by 2, S_j by 2 at blocks 3, 5, 7) and a small ResNet of {N_RES} blocks of about the "
            "same parameter count instead of model (b) (100 blocks, 29M parameters) and ResNet-50; Adam with a "
            "cosine decay, 20 epochs, no augmentation")


def _claims() -> tuple[Claim, ...]:
    last, res_last = f"block{N_IREV}", f"block{N_RES}"
    return (
        Claim("exact-inverse", "001 sec. 6.4.2",
              "The inverse Phi^-1 does not suffer from significant round-off errors: the mean relative "
              "reconstruction error eps(X) is close to the machine error on 10^4 uniform noises and on the test set "
              f"(judged: both below {_EPS_TOLERANCE:g} in float32).",
              AllOf((("noise", Exact("eps_noise", _EPS_TOLERANCE, "float32 rounding through the network",
                                     label="eps(uniform noise)")),
                     ("data", Exact("eps_data", _EPS_TOLERANCE, "float32 rounding through the network",
                                    label="eps(test set)")))),
              paper_value="5e-6, 3e-6", setting=_SETTING, quick=True),
        Claim("same-accuracy", "001 sec. 6.3.2, Table 9",
              "An i-RevNet reaches about the accuracy of a non-invertible ResNet of similar size: the bijective model "
              "(b) is 2 points behind on ImageNet (26.7 against 24.7 top-1 error) (judged: test accuracies within "
              "0.02).",
              Close("acc_irevnet", "acc_resnet", 0.02, _PAIRED("acc_gap_se"), label="accuracy i-RevNet - ResNet"),
              paper_value="top-1 error 26.7 (b) / 24.7 (a) vs ResNet 24.7", setting=_SETTING),
        Claim("ill-conditioned", "001 sec. 6.4.1, Fig. 19",
              "The singular values of dPhi_x decay fast: 80% and 97% of the energy are held by 10^3 and 10^4 of the "
              "D = 150,528 singular values, a considerably smaller space than the input dimension (judged: "
              "k80 / D <= 0.25 and k97 / D <= 0.5).",
              AllOf((("k80", AtMost("k80_fraction", 0.25, MeanError("k80_fraction_sd", "jacobian_inputs",
                                                                      "test inputs"), label="k80 / D")),
                     ("k97", AtMost("k97_fraction", 0.5, MeanError("k97_fraction_sd", "jacobian_inputs",
                                                                     "test inputs"), label="k97 / D")))),
              paper_value="0.0066, 0.066", setting=_SETTING),
        Claim("separation-rises", "001 sec. 6.5.1, Fig. 21",
              "Both a ResNet and an i-RevNet build a progressively more linearly separable representation: the "
              "linear-SVM and 1-NN accuracy on the spatially averaged Phi_j rise with depth (judged: the last "
              "block's accuracy above the first block's, both classifiers, both networks).",
              AllOf(tuple((f"{clf} {net}", _greater(f"{prefix}{clf}_acc_{blk}", f"{prefix}{clf}_acc_block1",
                                                    f"{net} {clf} accuracy, last - first block"))
                          for net, prefix, blk in (("i-RevNet", "", last), ("ResNet", "resnet_", res_last))
                          for clf in ("linear", "nn"))),
              paper_value="Fig. 21: rising with depth, a jump over the last 3 blocks", setting=_SETTING),
        Claim("svm-above-nn", "001 sec. 6.5.1, Fig. 21",
              "The linear SVM performs slightly better than the nearest-neighbour classifier (judged: at the last "
              "block of both networks).",
              AllOf(tuple((net, Greater(f"{prefix}linear_acc_{blk}", f"{prefix}nn_acc_{blk}",
                                        _PAIRED(f"{prefix}svm_nn_se_{blk}"),
                                        label=f"{net} SVM - 1-NN accuracy, last block"))
                          for net, prefix, blk in (("i-RevNet", "", last), ("ResNet", "resnet_", res_last)))),
              paper_value="Fig. 21", setting=_SETTING),
        Claim("contraction", "001 sec. 6.5.1, eqs. 16-17",
              "Both networks progressively contract the classes while keeping them apart, although the i-RevNet "
              "discards no information (judged: the mean intra / inter-class distance ratio at the last block "
              "below the input's).",
              AllOf(tuple((net, Greater("contraction_input", f"{prefix}contraction_{blk}",
                                        label=f"ratio at the input - at the last block, {net}"))
                          for net, prefix, blk in (("i-RevNet", "", last), ("ResNet", "resnet_", res_last)))),
              setting=_SETTING + "; distances over all pairs of a class-stratified subset of 500 test digits"),
        Claim("pca-small-d", "001 sec. 6.5.2, Fig. 22",
              "A PCA keeps the information needed for classification in a small subspace: the accuracy on the "
              "projection pi_d Phi only falls significantly for small d (d <= 200 of 3,072 on ImageNet) (judged: "
              "the SVM at d = 50 within 0.02 of all 256 components, and d = 2 more than 0.05 below).",
              AllOf((("d = 50", Close("pca_acc_d50", "pca_acc_full", 0.02, _PAIRED("pca_se_d50"),
                                      label="SVM accuracy, d = 50 - all")),
                     ("d = 2", Greater("pca_acc_full", "pca_acc_d2", _PAIRED("pca_se_d2"), margin=0.05,
                                       label="SVM accuracy, all - d = 2")))),
              paper_value="falls for d <= 200 of 3,072", setting=_SETTING),
    )


def _metric_keys() -> tuple[str, ...]:
    keys = ["acc_irevnet", "acc_resnet", "params_irevnet", "params_resnet", "n_test", "eps_noise", "eps_data",
            "k80_fraction", "k97_fraction", "contraction_input", "pca_acc_full", "pca_nn_acc_full"]
    for prefix, n in (("", N_IREV), ("resnet_", N_RES)):
        for i in range(1, n + 1):
            keys += [f"{prefix}linear_acc_block{i}", f"{prefix}nn_acc_block{i}", f"{prefix}contraction_block{i}"]
    keys += [f"pca_acc_d{d}" for d in PCA_DIMS] + [f"pca_nn_acc_d{d}" for d in PCA_DIMS]
    return tuple(keys)


def _data(cfg: IRevNetConfig, ctx: RunContext) -> tuple[ArrayDataset, ArrayDataset, str]:
    cifar = load_cifar10(ctx, "this run trains on mnist5k digits")
    if isinstance(cifar, tuple):
        train, test = cifar
        size = min(cfg.cifar_train_size, cfg.train_size or cfg.cifar_train_size)
        train = stratified_subset(train, size, seed=ctx.seed) if size < len(train) else train
        setting = f"CIFAR-10 ({len(train):,} training images"
    else:
        digits = load_digits(ctx, train_size=cfg.train_size, transforms=("pad32",))
        train, test = digits.train, digits.test
        setting = f"{digits.description}, padded to 32 x 32 ({cifar}"
    if cfg.test_size is not None and cfg.test_size < len(test):
        test = stratified_subset(test, cfg.test_size, seed=ctx.seed)
    return train, test, f"{setting}; {len(test):,} test images)"


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _train(ctx: RunContext, name: str, model: nn.Module, train: ArrayDataset, cfg: IRevNetConfig) -> FitResult:
    return ctx.fit(name, model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam",
                   lr_schedule="cosine")


def _pairs(test: ArrayDataset, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` pairs of test indices of different classes (class-stratified choice of the first of each)."""
    firsts = stratified_subset(test, min(2 * count, len(test)), seed=seed).labels
    rng = np.random.default_rng(seed)
    labels = test.labels.numpy()
    pairs = []
    for c in firsts.tolist()[:count]:
        i = int(rng.choice(np.nonzero(labels == c)[0]))
        j = int(rng.choice(np.nonzero(labels != c)[0]))
        pairs.append((i, j))
    return pairs


@register_experiment(
    "irevnet",
    title="A bijective i-RevNet classifies like a ResNet of its size while keeping all information; both separate "
          "and contract the classes progressively.",
    paper="001 ch. 6: Table 9, Figs. 18-22, eqs. 16-17",
    quick=IRevNetConfig(train_size=200, test_size=100, epochs=1, noise=100, jacobian_inputs=1, contraction_size=60,
                        cv_size=100, folds=1, interpolation_pairs=1, steps=4),
    full=IRevNetConfig(),
    metrics=_metric_keys(),
    claims=_claims(),
)
def run(cfg: IRevNetConfig, ctx: RunContext) -> ExperimentResult:
    """Train both networks, then measure the inverse, the spectrum, the separability, the contraction and the PCA
    curve with :mod:`cnnlens.analysis`."""
    torch.set_num_threads(1)
    train, test, data_text = _data(cfg, ctx)
    channels = int(train.images.shape[1])
    seed_everything(ctx.seed)
    rev = IRevNet(channels, 10, blocks=BLOCKS, strides=STRIDES, return_phi=False)
    seed_everything(ctx.seed)
    res = comparable_resnet(rev, blocks=RESNET_BLOCKS)
    curves = {"i-RevNet": _train(ctx, "irevnet", rev, train, cfg), "ResNet": _train(ctx, "resnet", res, train, cfg)}
    rev.eval()
    res.eval()
    ev_rev, ev_res = evaluate(rev, test), evaluate(res, test)
    metrics: dict[str, float] = {
        "acc_irevnet": ev_rev.accuracy, "acc_resnet": ev_res.accuracy,
        "acc_gap_se": paired_se((ev_rev.predictions == test.labels).numpy(),
                                (ev_res.predictions == test.labels).numpy()),
        "params_irevnet": float(_parameters(rev)), "params_resnet": float(_parameters(res)),
        "n_test": float(len(test))}
    rev.return_phi = True  # the analysis reads (logits, Phi)

    noise = reconstruction_error(rev, uniform_noise(cfg.noise, tuple(test.images.shape[1:]), seed=ctx.seed))
    data = reconstruction_error(rev, test)
    metrics.update(eps_noise=noise.eps, eps_data=data.eps, eps_noise_max=noise.max_error,
                   eps_data_max=data.max_error, n_noise=float(noise.n))

    inputs = stratified_subset(test, cfg.jacobian_inputs, seed=ctx.seed).images
    spectra = [jacobian_spectrum(rev, x, method="full") for x in inputs]
    for key in ("k80", "k97"):
        fractions = [getattr(s, f"{key}_fraction") for s in spectra]
        metrics[f"{key}_fraction"], metrics[f"{key}_fraction_sd"] = mean_sd(fractions)
        metrics[key] = float(np.mean([getattr(s, key) for s in spectra]))
    metrics.update(jacobian_inputs=float(len(spectra)), dim=float(spectra[0].dim_in))

    rev_layers = [f"blocks.{i}" for i in range(N_IREV)]
    res_layers = [f"stages.{i}" for i in range(N_RES)]
    svm = {"cv_size": cfg.cv_size, "folds": cfg.folds, "seed": ctx.seed}
    rev_sep = layerwise_separability(rev, train, rev_layers, test_data=test, **svm)
    res_sep = layerwise_separability(res, train, res_layers, test_data=test, **svm)
    pairs_set = stratified_subset(test, min(cfg.contraction_size, len(test)), seed=ctx.seed)
    rev_con = contraction(rev, pairs_set, rev_layers)
    res_con = contraction(res, pairs_set, res_layers)
    metrics["contraction_input"] = rev_con.input_ratio
    for prefix, sep, con in (("", rev_sep, rev_con), ("resnet_", res_sep, res_con)):
        for i in range(len(sep.layers)):
            metrics[f"{prefix}linear_acc_block{i + 1}"] = sep.linear_acc[i]
            metrics[f"{prefix}nn_acc_block{i + 1}"] = sep.nn_acc[i]
            metrics[f"{prefix}svm_nn_se_block{i + 1}"] = sep.difference_se[i]
            metrics[f"{prefix}contraction_block{i + 1}"] = con.ratio[i]
            metrics[f"{prefix}eq16_fraction_block{i + 1}"] = con.eq16_fraction[i]

    final = spatial_features(rev, train, [rev_layers[-1]], test_data=test)[rev_layers[-1]]
    dims = [d for d in PCA_DIMS if d <= min(final.dim, len(train))]
    pca = pca_separability(final, dims, **svm)
    metrics.update(pca_acc_full=pca.full_linear_acc, pca_nn_acc_full=pca.full_nn_acc, phi_channels=float(final.dim))
    for d, lin, nn_acc, se in zip(pca.dims, pca.linear_acc, pca.nn_acc, pca.difference_se, strict=True):
        metrics[f"pca_acc_d{d}"], metrics[f"pca_nn_acc_d{d}"], metrics[f"pca_se_d{d}"] = lin, nn_acc, se
    unmeasured = {key: f"d = {d} exceeds the {final.dim} channels of Phi or the {len(train)} training samples"
                  for d in PCA_DIMS if d not in dims for key in (f"pca_acc_d{d}", f"pca_nn_acc_d{d}", f"pca_se_d{d}")}

    paths = [interpolate(rev, test.images[i], test.images[j], cfg.steps)
             for i, j in _pairs(test, cfg.interpolation_pairs, ctx.seed)]
    figures = {"fig18_training_loss": _loss_figure(curves),
               "fig19_singular_values": _spectrum_figure([s.singular_values for s in spectra],
                                                         [s.k80 for s in spectra], [s.k97 for s in spectra],
                                                         spectra[0].dim_in),
               "fig20_interpolation": _interpolation_figure([(p.images, p.pixel_path) for p in paths], paths[0].t),
               "fig21_separability": _separability_figure(rev_sep, res_sep), "fig22_pca": _pca_figure(pca),
               "contraction": _contraction_figure(rev_con, res_con)}
    setting = (f"{data_text}; a bijective i-RevNet of {N_IREV} blocks ({int(metrics['params_irevnet']):,} "
               f"parameters) and a small ResNet of {N_RES} blocks ({int(metrics['params_resnet']):,}) for model (b) "
               f"and ResNet-50; Adam with a cosine decay, {cfg.epochs} epochs, no augmentation; Fig. 18's loss per "
               "epoch (the mean over its iterations) instead of a moving average over 100 iterations")
    settings = {c.id: setting for c in _claims()}
    notes = _notes(metrics, rev_sep, res_sep)
    return ExperimentResult(metrics, figures, notes, settings, unmeasured)


def _notes(m: dict[str, float], rev: Separability, res: Separability) -> str:
    gap = m["acc_irevnet"] - m["acc_resnet"]
    rises = all(s.linear_acc[-1] > s.linear_acc[0] for s in (rev, res))
    return (f"Test accuracy: i-RevNet {m['acc_irevnet']:.4f} ({int(m['params_irevnet']):,} parameters), ResNet "
            f"{m['acc_resnet']:.4f} ({int(m['params_resnet']):,}); the i-RevNet is {abs(gap):.4f} "
            f"{'above' if gap >= 0 else 'below'} (Table 9: model (b) 2.0 points below on ImageNet). "
            f"eps(X) = {m['eps_noise']:.2g} on {int(m['n_noise']):,} uniform noises and {m['eps_data']:.2g} on the "
            f"test set (paper: 5e-6 and 3e-6). 80% / 97% of the energy of dPhi_x are held by "
            f"{m['k80_fraction']:.1%} / {m['k97_fraction']:.1%} of the D = {int(m['dim'])} singular values (paper: "
            f"0.66% / 6.6%). Linear-SVM accuracy from the first to the last block: i-RevNet "
            f"{rev.linear_acc[0]:.3f} -> {rev.linear_acc[-1]:.3f}, ResNet {res.linear_acc[0]:.3f} -> "
            f"{res.linear_acc[-1]:.3f} ({'rising in both' if rises else 'not rising in both'}); the intra / "
            f"inter-class distance ratio goes from {m['contraction_input']:.3f} at the input to "
            f"{m[f'contraction_block{N_IREV}']:.3f} (i-RevNet) and {m[f'resnet_contraction_block{N_RES}']:.3f} "
            f"(ResNet) at the last block. PCA on the final spatially averaged Phi: SVM accuracy "
            f"{m.get('pca_acc_d2', float('nan')):.3f} at d = 2, {m.get('pca_acc_d50', float('nan')):.3f} at d = 50, "
            f"{m['pca_acc_full']:.3f} on all {int(m['phi_channels'])} components.")
