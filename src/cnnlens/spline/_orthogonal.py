"""The orthogonal-template penalty of eq. 13 of 000 (Balestriero, *A Spline Theory of Deep Networks*)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["orthogonal_penalty"]


def orthogonal_penalty(weight_or_linear: Tensor | nn.Module) -> Tensor:
    r"""Off-diagonal energy of the Gram matrix of the last layer's class templates (eq. 13 of 000).

    For the weight :math:`W \in \mathbb{R}^{C \times D}` of the final linear classifier, whose rows
    :math:`W_c` are the class-specific directions that every signal-dependent template
    :math:`A[x]_c = W_c A_{\mathrm{CNN}}[x]` shares (eqs. 8-9 of 000), the penalty is

    .. math::

        P(W) = \sum_{c_1 \neq c_2} \langle W_{c_1}, W_{c_2} \rangle^2
             = \lVert W W^\top \rVert_F^2 - \sum_c \lVert W_c \rVert_2^4 .

    It is zero exactly when the rows are pairwise orthogonal. It is computed through the
    :math:`C \times C` Gram matrix (one GEMM, :math:`O(C^2 D)`), never through a double loop over classes;
    the diagonal is masked out rather than subtracted, so no cancellation hides a small off-diagonal energy
    behind large row norms. It is differentiable, so ``lam * orthogonal_penalty(model.output)`` plugs into
    the extra-loss hook of :func:`cnnlens.train.fit` to give the loss :math:`L_{CE} + \lambda P(W)` of
    eq. 13.

    Parameters
    ----------
    weight_or_linear : Tensor or nn.Module
        Either the weight tensor itself, shape ``(C, ...)`` with the class index first (trailing dimensions
        are flattened, so a convolutional classifier ``(C, C_in, kh, kw)`` also works), or a module holding it
        as ``.weight`` (``nn.Linear``, ``nn.Conv2d``, ...). Pass the *last* linear layer of the model
        (e.g. ``model.output`` of :func:`cnnlens.nn.models.lenet5`), not the whole model.

    Returns
    -------
    Tensor
        0-dim tensor in the weight's dtype and device, with the autograd graph to the weight.

    Raises
    ------
    TypeError
        If the argument is neither a floating-point tensor nor a module with a tensor ``.weight``.
    ValueError
        If the weight has fewer than 2 dimensions or no rows.
    """
    weight = _weight_of(weight_or_linear)
    if weight.ndim < 2:
        raise ValueError(
            f"orthogonal_penalty needs a weight of shape (C, D) with one row per class; received a tensor of shape "
            f"{tuple(weight.shape)}. Pass the classifier weight (e.g. model.output.weight) or the nn.Linear itself."
        )
    if weight.shape[0] == 0:
        raise ValueError(
            f"orthogonal_penalty received a weight with no rows (shape {tuple(weight.shape)}); "
            "expected at least one class template row."
        )
    rows = weight.reshape(weight.shape[0], -1)
    gram = rows @ rows.T
    off_diagonal = gram.masked_fill(torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device), 0.0)
    return (off_diagonal * off_diagonal).sum()


def _weight_of(weight_or_linear: Tensor | nn.Module) -> Tensor:
    """Return the weight tensor of a tensor or a module with ``.weight``, with a clear error otherwise."""
    if isinstance(weight_or_linear, Tensor):
        weight = weight_or_linear
    elif isinstance(weight_or_linear, nn.Module):
        weight = getattr(weight_or_linear, "weight", None)
        if not isinstance(weight, Tensor):
            raise TypeError(
                f"orthogonal_penalty received a {type(weight_or_linear).__name__} without a tensor `.weight`; "
                "expected the last linear layer of the model (e.g. model.output), an nn.Linear or a weight "
                "tensor of shape (C, D)."
            )
    else:
        raise TypeError(
            f"orthogonal_penalty expects a weight Tensor of shape (C, D) or an nn.Module with `.weight`; "
            f"received {type(weight_or_linear).__name__}."
        )
    if not weight.is_floating_point():
        raise TypeError(
            f"orthogonal_penalty needs a floating-point weight; received dtype {weight.dtype}. "
            "Convert it with .float() or .double()."
        )
    return weight
