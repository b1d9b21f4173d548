"""``spline-bimodality``: correct-class vs other-class template outputs (Prop. 5 and Fig. 2 of 000).

Prop. 5 of 000: an idealised network trained to its global optimum memorises collinear templates, ``+c x`` for the
correct class and ``-c' x`` for the others, so the template outputs ``<A[x]_c, x>`` split into two modes. Measured
here on a trained LeNet-5 (without batch-norm, which Fig. 2's caption says behaves alike; ``model="large-cnn"``
gives the paper's largeCNN with batch-norm before ReLU, about 40 CPU-minutes of training) for training digits (the
proposition's setting) and held-out digits: histograms of ``<A[x]_c, x>`` for correct vs other classes, their
overlap coefficient (0: two disjoint modes, 1: identical distributions), and the cosine between each template and
the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import stratified_subset
from ..spline import histogram_overlap, plot_bimodality, templates
from ._claims import AtMost, Claim
from ._recipes import AdamBudget, train_adam
from ._registry import ExperimentResult, RunContext, register_experiment


@dataclass(frozen=True)
class BimodalityConfig(AdamBudget):
    """Network, training budget (Adam) and how many digits per split enter the histograms."""

    model: str = "lenet5"
    analysed: int = 500
    bins: int = 60


def _template_statistics(model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inner products and cosines of every class template with its input, split into correct / other classes."""
    result = templates(model, images, chunk_size=100)
    flat_templates = result.templates.flatten(2)
    norms = flat_templates.norm(dim=2) * images.flatten(1).norm(dim=1, keepdim=True)
    cosine = result.inner_products / norms.clamp_min(torch.finfo(norms.dtype).tiny)
    correct = torch.zeros_like(cosine, dtype=torch.bool)
    correct[torch.arange(len(labels)), labels] = True
    return {
        "inner_correct": result.inner_products[correct], "inner_other": result.inner_products[~correct],
        "cos_correct": cosine[correct], "cos_other": cosine[~correct],
    }


@register_experiment(
    "spline-bimodality",
    title="Bimodality of the template outputs <A[x]_c, x> of a trained CNN (Prop. 5, Fig. 2).",
    paper="000 sec. 5.3, Prop. 5, Fig. 2",
    quick=BimodalityConfig(epochs=2, train_size=1500, batch_size=32, analysed=300),
    full=BimodalityConfig(),
    metrics=("cos_correct_mean", "cos_other_mean", "bimodality_overlap"),
    claims=(
        Claim("bimodal-mnist", "000 sec. 5.3, Prop. 5, Fig. 2(a)",
              "On MNIST the template outputs <A[x]_c, x> are bimodal: the correct class's (green) and the other "
              "classes' (red) histograms form two separate modes (judged: histogram overlap coefficient below "
              "0.2 on training digits).",
              AtMost("bimodality_overlap", 0.2, label="overlap of the correct / other histograms"),
              setting="LeNet-5 without batch-norm on mnist5k for the paper's largeCNN with batch-norm on MNIST"),
    ),
)
def run(cfg: BimodalityConfig, ctx: RunContext) -> ExperimentResult:
    """Train the network, then histogram correct/other template outputs on training and test digits."""
    trained = train_adam(ctx, cfg.model, cfg)
    model, train, test = trained.model, trained.digits.train, trained.digits.test
    metrics: dict[str, float] = {"test_acc": trained.test_acc}
    stats = {}
    for split, data in (("train", train), ("test", test)):
        part = stratified_subset(data, min(cfg.analysed, len(data)), seed=ctx.seed)
        stats[split] = _template_statistics(model, part.images, part.labels)
        s = stats[split]
        metrics[f"cos_correct_mean_{split}"] = float(s["cos_correct"].mean())
        metrics[f"cos_other_mean_{split}"] = float(s["cos_other"].mean())
        metrics[f"inner_correct_mean_{split}"] = float(s["inner_correct"].mean())
        metrics[f"inner_other_mean_{split}"] = float(s["inner_other"].mean())
        metrics[f"bimodality_overlap_{split}"] = histogram_overlap(s["inner_correct"], s["inner_other"], cfg.bins)
        metrics[f"cos_overlap_{split}"] = histogram_overlap(s["cos_correct"], s["cos_other"], cfg.bins)
    for key in ("cos_correct_mean", "cos_other_mean", "bimodality_overlap"):
        metrics[key] = metrics[f"{key}_train"]
    figures = {
        f"bimodality_{split}": plot_bimodality(
            {"<A[x]_c, x>": (stats[split]["inner_correct"], stats[split]["inner_other"]),
             "cos(A[x]_c, x)": (stats[split]["cos_correct"], stats[split]["cos_other"])},
            bins=cfg.bins, title=f"{cfg.model}, {cfg.analysed} {split} digits: correct (green) vs other classes (red)")
        for split in ("train", "test")
    }
    m = metrics
    notes = (
        f"{cfg.model} ({m['test_acc']:.1%} test accuracy). On training digits the correct-class outputs "
        f"<A[x]_y, x> average {m['inner_correct_mean_train']:.2f} against {m['inner_other_mean_train']:.2f} for the "
        f"other classes, and their histograms overlap by {m['bimodality_overlap_train']:.3f} (held-out digits: "
        f"{m['bimodality_overlap_test']:.3f}): "
        + ("two well separated modes, as Fig. 2 of 000 shows for MNIST. " if m["bimodality_overlap_train"] < 0.2
           else "the two modes are not cleanly separated at this training budget. ")
        + f"The templates are far from Prop. 5's collinear optimum (cosine +1 for the correct class, -1 for the "
        f"others): mean cos(A[x]_y, x) = {m['cos_correct_mean_train']:.3f} and {m['cos_other_mean_train']:.3f} for "
        "the other classes. The proposition assumes unlimited capacity, unit-norm inputs and a norm constraint on "
        "A[x]; a real CNN's templates also carry input-independent structure (edges, strokes of other digits). "
        + ("They lean towards +x / -x: the sign pattern of eq. 12 reproduces, the collinearity does not."
           if m["cos_correct_mean_train"] > 0 > m["cos_other_mean_train"]
           else "Not even the sign pattern of eq. 12 (correct cosine > 0 > other cosines) holds here.")
    )
    return ExperimentResult(metrics, figures, notes)
