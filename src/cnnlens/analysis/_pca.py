"""Dimensionality of the discriminative part of a representation: classification after a PCA projection
(001 sec. 6.5.2, Fig. 22).

The features {Phi x_n} are spatially averaged and standardised on the training set; pi_d projects them on their
first d principal components (fitted on the training set); a linear SVM and a 1-NN classifier are trained on
{pi_d Phi x_n} and measured on held-out data, for every d.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ._features import Features
from ._separability import linear_and_nn_accuracy, paired_se

__all__ = ["PCASeparability", "pca_separability"]


@dataclass(frozen=True)
class PCASeparability:
    """SVM and 1-NN test accuracy against the number d of principal components kept (Fig. 22 of 001), the share of
    the training variance those components explain, and the accuracies on all components (d = dim);
    ``difference_se`` is the paired standard error (same test items) of SVM accuracy at d minus on all components."""

    layer: str
    dims: tuple[int, ...]
    linear_acc: tuple[float, ...]
    nn_acc: tuple[float, ...]
    difference_se: tuple[float, ...]
    explained_variance: tuple[float, ...]
    full_linear_acc: float
    full_nn_acc: float


def pca_separability(features: Features, dims: Sequence[int], *, cv_size: int = 1000, folds: int = 3,
                     seed: int = 0) -> PCASeparability:
    """Accuracy of a linear SVM and a 1-NN classifier on pi_d Phi x for each d in ``dims`` (001 sec. 6.5.2).

    ``features`` are one layer's spatially averaged features (:func:`cnnlens.analysis.spatial_features`); they
    are standardised on the training rows before the PCA, as in the text. Each d must lie in
    [1, min(dim, n_train)].
    """
    from sklearn.decomposition import PCA  # on use: scikit-learn slows `import cnnlens`
    from sklearn.preprocessing import StandardScaler

    if not isinstance(features, Features):
        raise TypeError(f"features must be cnnlens.analysis.Features (from spatial_features); received "
                        f"{type(features).__name__}.")
    dims = [dims] if isinstance(dims, int) else list(dims)
    limit = min(features.dim, len(features.train_labels))
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int | np.integer) or not 1 <= d <= limit]
    if not dims or bad:
        raise ValueError(f"dims must be ints in [1, {limit}] (the feature dimension {features.dim} and the "
                         f"{len(features.train_labels)} training samples bound the PCA); received {bad or dims}.")
    scaler = StandardScaler().fit(features.train)
    train, test = scaler.transform(features.train), scaler.transform(features.test)
    pca = PCA(n_components=max(dims), random_state=seed).fit(train)
    z_train, z_test = pca.transform(train), pca.transform(test)
    ratios = np.cumsum(pca.explained_variance_ratio_)
    full = linear_and_nn_accuracy(features, cv_size=cv_size, folds=folds, seed=seed)
    scores = [linear_and_nn_accuracy(replace(features, train=z_train[:, :d], test=z_test[:, :d]), standardise=False,
                                     svm_c=full.svm_c) for d in dims]
    return PCASeparability(features.layer, tuple(int(d) for d in dims), tuple(s.linear_acc for s in scores),
                           tuple(s.nn_acc for s in scores),
                           tuple(paired_se(s.linear_correct, full.linear_correct) for s in scores),
                           tuple(float(ratios[d - 1]) for d in dims), full.linear_acc, full.nn_acc)
