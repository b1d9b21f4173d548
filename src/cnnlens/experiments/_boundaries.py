"""Boundary detection read-outs shared by the boundary experiments of 001 ch. 4 (Fig. 10, BSD500).

- :func:`gradient_magnitude` is the hand-made rule of Fig. 10's second column. It takes the largest response over
  rotations of the first-order Gaussian derivative, max_theta |cos theta G_x + sin theta G_y| * I, which is
  sqrt((G_x * I)^2 + (G_y * I)^2) (eq. 22's steering at first order).
- :func:`boundary_f_score` is the pixel-wise boundary F-score in the manner of the BSDS benchmark. A predicted
  pixel counts as correct when a true boundary pixel lies within ``tolerance`` pixels (chessboard distance), and a
  true pixel counts as found when a predicted one does. ODS is the best F over one threshold for the whole set; OIS
  takes the best threshold per image. This is the usual dilation approximation of BSDS's one-to-one matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..nn import gaussian_derivative_basis

__all__ = ["BoundaryScore", "boundary_f_score", "gradient_magnitude", "num_parameters"]


def num_parameters(model: torch.nn.Module) -> int:
    """Learned parameters of a network (fixed bases are buffers and do not count), the size the networks of the
    boundary experiments are matched and compared by."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gradient_magnitude(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """sqrt((G_x * I)^2 + (G_y * I)^2) at scale ``sigma`` for images (N, 1, H, W); zero padding at the border."""
    basis = gaussian_derivative_basis(1, sigma, dtype=images.dtype)
    first = basis.filters[1:3].flip((1, 2)).unsqueeze(1)  # G_x, G_y as convolution kernels
    responses = F.conv2d(images, first, padding=first.shape[-1] // 2)
    return responses.pow(2).sum(1, keepdim=True).sqrt()


@dataclass(frozen=True)
class BoundaryScore:
    """ODS and OIS F-scores, ODS's precision, recall and threshold (scores scaled to [0, 1] by the set's maximum)."""

    ods: float
    ois: float
    precision: float
    recall: float
    threshold: float
    ods_se: float = float("nan")


def _dilate(x: torch.Tensor, tolerance: int) -> torch.Tensor:
    if tolerance == 0:
        return x
    return F.max_pool2d(x.float(), 2 * tolerance + 1, stride=1, padding=tolerance) > 0


def _f(tp_p: np.ndarray, n_pred: np.ndarray, tp_r: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    precision = np.divide(tp_p, n_pred, out=np.zeros_like(tp_p, dtype=float), where=n_pred > 0)
    recall = np.divide(tp_r, n_true, out=np.zeros_like(tp_r, dtype=float), where=n_true > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def boundary_f_score(scores: torch.Tensor, targets: torch.Tensor, *, tolerance: int = 1,
                     thresholds: int = 49, resamples: int = 0, seed: int = 0) -> BoundaryScore:
    """ODS / OIS boundary F-score of ``scores`` (N, 1, H, W) against boolean ``targets`` of the same shape.

    ``resamples > 0`` adds ``ods_se``, the standard deviation of the ODS over bootstrap resamples of the images.
    """
    if scores.shape != targets.shape or scores.dim() != 4:
        raise ValueError(f"scores and targets must both have shape (N, 1, H, W); got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values; check the model's output")
    top = float(scores.max())
    scaled = scores / top if top > 0 else scores
    true = targets.bool()
    near_true = _dilate(true, tolerance)
    levels = np.linspace(0, 1, thresholds + 2)[1:-1]
    counts = np.zeros((4, len(levels), len(scores)))  # tp_p, n_pred, tp_r, n_true per threshold and image
    for i, level in enumerate(levels):
        pred = scaled >= level
        counts[0, i] = (pred & near_true).sum((1, 2, 3)).numpy()
        counts[1, i] = pred.sum((1, 2, 3)).numpy()
        counts[2, i] = (true & _dilate(pred, tolerance)).sum((1, 2, 3)).numpy()
        counts[3, i] = true.sum((1, 2, 3)).numpy()
    ods_f = _f(*counts.sum(2))
    best = int(np.argmax(ods_f))
    per_image = _f(*counts)  # (thresholds, N)
    choice = per_image.argmax(0)
    chosen = counts[:, choice, np.arange(len(scores))].sum(1)
    tp_p, n_pred, tp_r, n_true = counts[:, best].sum(1)
    rng = np.random.default_rng(seed)
    boots = [_f(*counts[:, :, rng.integers(0, len(scores), len(scores))].sum(2)).max() for _ in range(resamples)]
    return BoundaryScore(float(ods_f[best]), float(_f(*chosen)), float(tp_p / n_pred) if n_pred else 0.0,
                         float(tp_r / n_true) if n_true else 0.0, float(levels[best]),
                         float(np.std(boots, ddof=1)) if resamples > 1 else float("nan"))
