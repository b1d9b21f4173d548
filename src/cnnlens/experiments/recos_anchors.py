"""``recos-anchors``: a trained LeNet-5 read as RECOS units (003 secs. 2-3, Tables 1-2, Figs. 6-7, 9): the anchor
vectors of C1 and C3, the anchor-position vectors of C1, the compound anchors of the C1 -> C3 cascade stitched on
their 13 x 13 receptive field, how well C1's anchors act as cluster centroids of MNIST patches (the k-means link),
and Fig. 9(b): how the decision subnet lines up each class's output vectors with the Output layer's anchors, the
coordinate unit vectors (``unit_vector_alignment``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from ..data import ArrayDataset, stratified_subset
from ..nn.models import lenet5
from ..recos import (
    ClusterView,
    UnitVectorAlignment,
    alexnet_shaped,
    anchor_position_vectors,
    anchor_vectors,
    cluster_view,
    compound_anchors,
    extract_patches,
    plot_image_grid,
    plot_stitching,
    summary,
    unit_vector_alignment,
)
from ..spline import templates
from ..train import evaluate, seed_everything
from ._claims import AllOf, AtLeast, AtMost, Claim, Exact, MeanError, Near
from ._recipes import LeNetBudget, load_digits, train_sgd
from ._registry import ExperimentResult, RunContext, register_experiment


@dataclass(frozen=True)
class AnchorsConfig(LeNetBudget):
    """Training budget and the number of test digits whose patches are clustered."""

    cluster_digits: int = 1000
    realized_digits: int = 100


def _realized_vs_compound(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Compare the realised anchor of each image's most active C3 unit with the compound anchors (eqs. 16-17, 21).

    The realised anchor is the row of the exact input-dependent affine map of C1 -> ReLU -> S2 -> C3 (the spline
    engine's ``templates``): the paper's z'' with every rectification and max-pool choice of this input. Returns
    the metrics and the realised anchors cropped to the 14 x 14 window.
    """
    sub = nn.Sequential(model.c1, model.act1, model.s2, model.c3, nn.Flatten()).eval()
    linear = compound_anchors(model.c1, model.c3, pool=model.s2)  # 13 x 13, S2 as subsampling
    averaged = compound_anchors(model.c1, model.c3, pool=nn.AvgPool2d(2))  # 14 x 14, exact for average pooling
    with torch.no_grad():
        top = sub(x).argmax(dim=1)
    crops, outside = [], 0.0
    cosines: dict[str, list[float]] = {"linear": [], "rectified": [], "avgpool": []}
    for n in range(x.shape[0]):
        row = int(top[n])
        l, rest = divmod(row, 100)
        i, j = divmod(rest, 10)
        full = templates(sub, x[n:n + 1], classes=[row]).templates[0, 0, 0]
        crop = full[2 * i:2 * i + 14, 2 * j:2 * j + 14]
        rest_of_image = full.clone()
        rest_of_image[2 * i:2 * i + 14, 2 * j:2 * j + 14] = 0.0
        outside = max(outside, float(rest_of_image.abs().max()))
        crops.append(crop)
        refs = {"linear": F.pad(linear.linear[l, 0], (0, 1, 0, 1)),
                "rectified": F.pad(linear.rectified[l, 0], (0, 1, 0, 1)), "avgpool": averaged.linear[l, 0]}
        for key, ref in refs.items():
            cosines[key].append(float(F.cosine_similarity(crop.flatten(), ref.flatten(), dim=0)))
    metrics = {f"realized_cos_{key}": sum(v) / len(v) for key, v in cosines.items()}
    metrics["realized_max_outside_14x14"] = outside
    return metrics, torch.stack(crops)


def _position_figure(alpha: torch.Tensor) -> Figure:
    fig, ax = plt.subplots(figsize=(3.4, 5.2))
    lim = float(alpha.abs().max())
    ax.imshow(alpha.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set(xlabel="anchor k", ylabel="position n = 5 row + column", title="anchor-position vectors of C1 (eq. 15)")
    ax.set_xticks(range(alpha.shape[1]), [str(k + 1) for k in range(alpha.shape[1])])
    fig.tight_layout()
    return fig


def _cluster_figure(view: ClusterView, patches: torch.Tensor, anchors: torch.Tensor) -> Figure:
    k = view.share.shape[0]
    fig, axes = plt.subplots(k, 10, figsize=(8.2, 0.95 * k + 0.6))
    for j in range(k):
        members = torch.nonzero(view.assignment == j).flatten()
        order = members[torch.argsort(view.cosines[members, j], descending=True)][:8]
        axes[j, 0].text(0.0, 0.5, f"a{j + 1}: {float(view.share[j]):.1%}\nspread {float(view.angular_spread[j]):.0f}°",
                        fontsize=7, va="center")
        lim = float(anchors[j].abs().max()) or 1.0
        axes[j, 1].imshow(anchors[j].reshape(5, 5).numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        for c, idx in enumerate(order.tolist()):
            axes[j, 2 + c].imshow(patches[idx].reshape(5, 5).numpy(), cmap="gray", vmin=0, vmax=1)
        for ax in axes[j]:
            ax.set_axis_off()
    axes[0, 1].set_title("anchor", fontsize=7)
    fig.suptitle("C1 as cluster centroids: share of the non-blank patches, the anchor (pattern part) and its 8 "
                 "most correlated patches", fontsize=8)
    return fig


_CENTROID_SETTING = "C1 of LeNet-5 on test patches; the paper suggests the centroid reading without a measurement"
_FIG9_SETTING = ("LeNet-5's output vectors (logits) of the test digits, compared modulo the constant vector (which the "
                 "softmax ignores); the paper draws Fig. 9(b) without a measurement")
_COS45 = 1 / math.sqrt(2)  # cos 45 degrees: more than half of a vector's energy along the unit vector


def _outputs(model: nn.Module, data: ArrayDataset, batch: int = 1000) -> torch.Tensor:
    """The output vectors (logits: F6's features mapped by the Output layer) of every item of ``data``."""
    with torch.no_grad():
        return torch.cat([model(data.images[i:i + batch]) for i in range(0, len(data), batch)])


def _alignment_metrics(al: UnitVectorAlignment) -> dict[str, float]:
    own, other = al.own, al.nearest_other
    diag = al.centroid_cosines.diagonal()
    off = al.centroid_cosines.clone()
    off.fill_diagonal_(float("-inf"))
    return {"fig9_cos_own": float(own.mean()), "fig9_cos_own_sd": float(own.std()),
            "fig9_cos_other_max": float(other.mean()), "fig9_share_own_above_45deg": float((own > _COS45).double()
                                                                                           .mean()),
            "fig9_pairing_errors": float(al.pairing_errors), "fig9_centroid_cos_own_min": float(diag.min()),
            "fig9_centroid_cos_other_max": float(off.max())}


def _alignment_figure(al: UnitVectorAlignment) -> Figure:
    c = al.centroid_cosines.shape[0]
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(9.2, 3.8), width_ratios=[1.0, 1.25])
    image = ax_map.imshow(al.centroid_cosines.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), value in zip(torch.cartesian_prod(torch.arange(c), torch.arange(c)).tolist(),
                             al.centroid_cosines.flatten().tolist(), strict=True):
        ax_map.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5.5)
    ax_map.set(xlabel="unit vector e_j of the Output layer", ylabel="class c (mean output vector)",
               xticks=range(c), yticks=range(c), title="cos(class mean output, e_j)")
    ax_map.title.set_fontsize(8)
    fig.colorbar(image, ax=ax_map, fraction=0.046)
    ax_hist.hist(al.own.numpy(), bins=40, range=(-1, 1), alpha=0.7, label="own class's unit vector")
    ax_hist.hist(al.nearest_other.numpy(), bins=40, range=(-1, 1), alpha=0.7, label="nearest other unit vector")
    ax_hist.axvline(_COS45, color="0.3", lw=0.8, ls="--")
    ax_hist.set(xlabel="cosine of a test digit's output vector", ylabel="test digits")
    ax_hist.legend(fontsize=7)
    fig.suptitle("Fig. 9(b): output vectors of each class against the Output layer's coordinate unit vectors "
                 "(modulo the constant vector)", fontsize=8)
    fig.tight_layout()
    return fig


@register_experiment(
    "recos-anchors",
    title="A trained LeNet-5 read as RECOS units: anchor vectors, anchor-position vectors, compound anchors.",
    paper="003 secs. 2-3, eqs. 11-21, Tables 1-2, Figs. 6-7, 9",
    quick=AnchorsConfig(epochs=2, lr=0.05, train_size=2000, full_mnist=False, cluster_digits=100,
                        realized_digits=20),
    full=AnchorsConfig(),
    metrics=("acc_test", "n_test", "mean_angular_spread_deg", "max_anchor_share", "min_anchor_share",
             "unassigned_share", "mean_centroid_angle_deg", "mean_kmeans_angle_deg", "compound_receptive_field",
             "compound_composition_error", "compound_negative_share", "blank_patch_share", "realized_cos_linear",
             "realized_cos_rectified", "realized_cos_avgpool", "realized_max_outside_14x14", "fig9_cos_own",
             "fig9_cos_own_sd", "fig9_cos_other_max", "fig9_share_own_above_45deg", "fig9_pairing_errors",
             "fig9_centroid_cos_own_min", "fig9_centroid_cos_other_max", "fig9_cos_own_untrained"),
    claims=(
        Claim("compound-receptive-field", "003 sec. 3, Fig. 6",
              "The second-layer filter of LeNet-5 (C3) sees a 13 x 13 window of the input: 5 x 5 first-layer "
              "outputs of 5 x 5 patches at stride 2.",
              Near("compound_receptive_field", 13, 0, label="compound receptive field (pixels)"), paper_value=13,
              setting="as in the paper, with S2 read as subsampling (14 x 14 when the 2 x 2 pooling window is "
                      "counted)", quick=True),
        Claim("compound-composition", "003 sec. 3, eq. 21",
              "The correlations of the cascade C1 -> C3 equal one layer with the compound anchor matrix C = AB.",
              Exact("compound_composition_error", 1e-5, "float32 rounding (relative)",
                    label="relative error of C^T x against C3(C1(x))"),
              paper_value=0.0, setting="as in the paper, with S2 read as subsampling (its linear part)", quick=True),
        Claim("anchors-near-centroids", "003 sec. 2, after eq. 10",
              "An anchor vector sits at the centroid of a cluster of frequently occurring input patterns (judged: "
              "mean angle between each C1 anchor and the matched spherical k-means centroid of the non-blank 5 x 5 "
              "patches below 30 degrees).",
              AtMost("mean_kmeans_angle_deg", 30.0, label="mean anchor-to-centroid angle (degrees)"),
              setting=_CENTROID_SETTING),
        Claim("f6-aligns-classes", "003 sec. 3, Fig. 9(b)",
              "F6 adjusts the anchor vectors so that the feature cluster of every digit class is aligned with the "
              "coordinate unit vector of the same class, the Output layer's anchor, with correct feature/digit "
              "pairing (judged: every class's mean output vector is nearest its own unit vector, and the test "
              "digits' output vectors have a mean cosine of at least 1/sqrt(2) with their class's unit vector, "
              "i.e. more than half of their energy along it; vectors compared modulo the constant vector, which "
              "the softmax ignores).",
              AllOf((("pairing", AtMost("fig9_pairing_errors", 0.0,
                                        label="classes whose mean output vector is nearest another unit vector")),
                     ("alignment", AtLeast("fig9_cos_own", round(_COS45, 4),
                                           MeanError("fig9_cos_own_sd", "n_test", "test digits"),
                                           label="mean cosine of a test digit's output with its class's unit "
                                                 "vector")))),
              setting=_FIG9_SETTING),
    ),
)
def run(cfg: AnchorsConfig, ctx: RunContext) -> ExperimentResult:
    """Train LeNet-5 and draw its anchors, anchor-position vectors, compound anchors, cluster view and Fig. 9(b)."""
    digits = load_digits(ctx, full_mnist=cfg.full_mnist, train_size=cfg.train_size)
    train, test, data_text = digits.train, digits.test, digits.description
    seed_everything(ctx.seed)
    model = lenet5()
    untrained = unit_vector_alignment(_outputs(model.eval(), test), test.labels)
    model = train_sgd(ctx, "lenet5", model, train, cfg)
    m: dict[str, float] = {"acc_test": evaluate(model, test).accuracy, "n_test": float(len(test))}
    alignment = unit_vector_alignment(_outputs(model, test), test.labels)
    m.update(_alignment_metrics(alignment))
    m["fig9_cos_own_untrained"] = float(untrained.own.mean())

    compound = compound_anchors(model.c1, model.c3, pool=model.s2)
    x = stratified_subset(test, min(64, len(test)), seed=ctx.seed).images
    with torch.no_grad():  # composition check: C3 on the subsampled C1 map (the linear part) == one 13x13 conv
        direct = model.c3(model.c1(x)[:, :, ::2, ::2])
        composed = F.conv2d(x, compound.linear, compound.bias, stride=compound.stride)
    m["compound_receptive_field"] = float(compound.receptive_field[0])
    m["compound_composition_error"] = float((direct - composed).abs().max() / direct.abs().max())
    m["compound_negative_share"] = float((compound.matrix < 0).double().mean())
    realized_data = stratified_subset(test, min(cfg.realized_digits, len(test)), seed=ctx.seed)
    realized_metrics, realized = _realized_vs_compound(model, realized_data.images)
    m.update(realized_metrics)

    cluster_data = stratified_subset(test, min(cfg.cluster_digits, len(test)), seed=ctx.seed)
    patches, _ = extract_patches(cluster_data.images, model.c1)
    patches = patches.reshape(-1, 25)
    blank = patches.amax(dim=1) < 0.1  # background: no direction on the sphere, left out of the clustering
    m["blank_patch_share"] = float(blank.double().mean())
    patches = patches[~blank]
    view = cluster_view(model.c1, patches, augment_mean=True, kmeans=True, seed=ctx.seed)
    m["mean_angular_spread_deg"] = view.mean_angular_spread
    m["max_anchor_share"] = float(view.share.max())
    m["min_anchor_share"] = float(view.share.min())
    m["unassigned_share"] = view.unassigned_share
    m["mean_centroid_angle_deg"] = float(view.centroid_angle.nanmean())
    m["mean_kmeans_angle_deg"] = float(view.kmeans_angle.mean())
    for key, value in m.items():
        ctx.log(f"{key} = {value:.6g}")

    tables = (summary(model, (1, 32, 32)).table(), summary(alexnet_shaped(device="meta")).table())
    for table in tables:
        ctx.log(table)
    c3 = model.c3.weight.detach()
    figures = {
        "c1_anchors": plot_image_grid(model.c1.weight.detach(), title="C1 anchor vectors (6 of 5 x 5)"),
        "c3_anchors": plot_image_grid(c3.reshape(-1, 5, 5), ncols=6, cell=0.7,
                                      title="C3 anchor vectors: 16 rows x 6 input channels of 5 x 5"),
        "c1_anchor_positions": _position_figure(anchor_position_vectors(model.c1).vectors),
        "compound_anchors": plot_image_grid(compound.linear, ncols=8,
                                            title="compound anchors C = AB of C1 -> S2 -> C3, 13 x 13 (eq. 21)"),
        "compound_stitching": plot_stitching(compound, anchor=int(compound.linear.flatten(1).norm(dim=1).argmax())),
        "compound_anchors_rectified": plot_image_grid(compound.rectified, ncols=8,
                                                      title="rectified compound anchors C' (eq. 17 per entry)"),
        "realized_anchors": plot_image_grid(realized[:16], ncols=8, title="realised 14 x 14 anchors of the most "
                                            "active C3 unit of 16 test digits (exact affine map, spline engine)"),
        "c1_cluster_view": _cluster_figure(view, patches, anchor_vectors(model.c1, augment_mean=True).images()),
        "fig9_unit_vector_alignment": _alignment_figure(alignment),
    }
    field = int(m["compound_receptive_field"])
    budget = (f" (the quick budget: {len(train):,} digits, {cfg.epochs} epochs; it exercises the code, it does not "
              "decide the trained-network claims)" if ctx.quick else "")
    notes = (
        f"Data: {data_text}; LeNet-5 trained {cfg.epochs} epochs, {m['acc_test']:.2%} test accuracy{budget}. "
        f"Fig. 9(b), the Output layer's coordinate unit vectors as class anchors: a test digit's output vector has "
        f"mean cosine {m['fig9_cos_own']:.3f} (sd {m['fig9_cos_own_sd']:.3f}) with its own class's unit vector and "
        f"{m['fig9_cos_other_max']:.3f} with the nearest other one; {m['fig9_share_own_above_45deg']:.1%} of the "
        f"test digits lie within 45 degrees of their own unit vector (untrained network: mean cosine "
        f"{m['fig9_cos_own_untrained']:.3f}). The mean output vector of every class has cosine at least "
        f"{m['fig9_centroid_cos_own_min']:.3f} with its own unit vector and at most "
        f"{m['fig9_centroid_cos_other_max']:.3f} with another; {int(m['fig9_pairing_errors'])} of the 10 classes "
        "are nearer another class's unit vector (vectors compared modulo the constant vector, which the softmax "
        "ignores; two distinct unit vectors have cosine -1/9 there). "
        f"Cluster view of C1 on the {patches.shape[0]:,} non-blank 5x5 patches of {len(cluster_data)} test "
        f"digits (a class-stratified sample; {m['blank_patch_share']:.1%} of all patches are blank background, "
        f"max pixel < 0.1, and have no direction; mean-augmented vectors, eq. 7): {m['unassigned_share']:.1%} of "
        f"them correlate negatively with every anchor (rectified to zero by all); the others split over the 6 "
        f"anchors with shares {m['min_anchor_share']:.1%} to {m['max_anchor_share']:.1%}; mean angle to their "
        f"anchor {m['mean_angular_spread_deg']:.1f} degrees; the anchors lie {m['mean_centroid_angle_deg']:.1f} "
        f"degrees (mean) from their cluster's mean direction and {m['mean_kmeans_angle_deg']:.1f} degrees from the "
        "matched spherical k-means centroid of the same patches"
        + (", within the claim's 30 degrees." if m["mean_kmeans_angle_deg"] < 30 else
           ", farther than the claim's 30 degrees.")
        + f" Compound anchors of C1 -> S2 -> C3 with S2 read as subsampling: {field} x {field} receptive field "
        + ("(the paper's 13 x 13" if field == 13 else "(not the paper's 13 x 13")
        + "; 14 x 14 when the 2x2 pooling window is counted); composing C1 and C3 reproduces the cascade's linear "
        f"part to a relative {m['compound_composition_error']:.1e}; {m['compound_negative_share']:.1%} of the "
        "entries alpha_n^T b_l of C are negative and are clipped in C' (eq. 17). How close is the actual network "
        "(z'' of sec. 3, with its ReLUs and max-pool choices) to the compound anchors? For the most active C3 unit "
        f"of each of {len(realized_data)} test digits, the exact input-dependent anchor (row of the affine map of "
        f"C1 -> ReLU -> S2 -> C3, from the spline engine) has cosine {m['realized_cos_linear']:.2f} with C (eq. "
        f"21), {m['realized_cos_rectified']:.2f} with C' = Rec per entry (eq. 17) and "
        f"{m['realized_cos_avgpool']:.2f} with the average-pooling composition; its support stays inside the "
        f"14 x 14 window (largest entry outside: {m['realized_max_outside_14x14']:.1e}).\n\n" + "\n\n".join(tables)
    )
    settings = {"anchors-near-centroids": digits.setting(_CENTROID_SETTING),
                "f6-aligns-classes": digits.setting(_FIG9_SETTING)}
    return ExperimentResult(m, figures, notes, settings=settings)
