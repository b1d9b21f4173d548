"""Progressive linear separation: a linear SVM and a 1-nearest-neighbour classifier at every depth (001 sec. 6.5.1,
Fig. 21).

Protocol of the text: at each depth j the features {Phi_j x_n} of the training set are spatially averaged and
standardised (on the training set) "to avoid any ill-conditioning effects"; the SVM's parameter C is
cross-validated on a small subset of the training set, then both classifiers are trained on the whole training set
and their accuracy is measured on held-out data. The 1-NN is "a localized classifier that indicates that the l2
metric is progressively more important", the SVM "measures the linear separation of the different classes".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import stratified_indices
from ._features import Data, Features, spatial_features

__all__ = ["C_GRID", "Scores", "Separability", "cross_validated_c", "layerwise_separability", "linear_and_nn_accuracy",
           "paired_se"]

#: the SVM's regularisation constants tried by the cross-validation
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class Separability:
    """Test accuracy of a linear SVM and a 1-NN classifier on the spatially averaged, standardised features of each
    layer (Fig. 21 of 001), the paired standard error of their difference (same test items), the C the
    cross-validation chose and the feature dimension per layer."""

    layers: tuple[str, ...]
    linear_acc: tuple[float, ...]
    nn_acc: tuple[float, ...]
    difference_se: tuple[float, ...]
    svm_c: tuple[float, ...]
    dims: tuple[int, ...]
    n_train: int
    n_test: int


def cross_validated_c(x: np.ndarray, y: np.ndarray, cv_size: int, folds: int, seed: int) -> float:
    """The C of :data:`C_GRID` with the best ``folds``-fold (stratified) cross-validated accuracy of a LinearSVC on
    a class-stratified subset of ``cv_size`` training rows (1.0 when a class has too few rows to cross-validate)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold  # on use: scikit-learn slows `import cnnlens`
    from sklearn.svm import LinearSVC

    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"the training labels hold one class ({classes.tolist()}); a classifier needs two or more.")
    sub = stratified_indices(torch.as_tensor(y), min(cv_size, len(y)), seed=seed).numpy()
    folds = min(folds, int(np.unique(y[sub], return_counts=True)[1].min()))
    if folds < 2:
        return 1.0
    search = GridSearchCV(LinearSVC(dual="auto", max_iter=5000), {"C": list(C_GRID)},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    search.fit(x[sub], y[sub])
    return float(search.best_params_["C"])


@dataclass(frozen=True)
class Scores:
    """Which test items a linear SVM and a 1-NN classify correctly (bool per item) and the SVM's C."""

    linear_correct: np.ndarray
    nn_correct: np.ndarray
    svm_c: float

    @property
    def linear_acc(self) -> float:
        return float(np.mean(self.linear_correct))

    @property
    def nn_acc(self) -> float:
        return float(np.mean(self.nn_correct))


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the difference of two accuracies measured on the same test items (per-item correctness
    a, b): the sample deviation of a - b over sqrt(n), the paired error (0 for a single item)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0


def linear_and_nn_accuracy(features: Features, *, cv_size: int = 1000, folds: int = 3, seed: int = 0,
                           standardise: bool = True, svm_c: float | None = None) -> Scores:
    """A linear SVM and a 1-NN trained on one layer's training rows and scored on its test rows, standardised on
    the training rows unless ``standardise=False`` (features already standardised, e.g. projected on principal
    components). C is cross-validated (:func:`cross_validated_c`) unless ``svm_c`` is given."""
    from sklearn.neighbors import KNeighborsClassifier  # on use: scikit-learn slows `import cnnlens`
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    train, test = features.train, features.test
    if standardise:
        scaler = StandardScaler().fit(train)
        train, test = scaler.transform(train), scaler.transform(test)
    c = cross_validated_c(train, features.train_labels, cv_size, folds, seed) if svm_c is None else svm_c
    svm = LinearSVC(C=c, dual="auto", max_iter=5000).fit(train, features.train_labels)
    knn = KNeighborsClassifier(n_neighbors=1).fit(train, features.train_labels)
    return Scores(svm.predict(test) == features.test_labels, knn.predict(test) == features.test_labels, c)


def layerwise_separability(model: nn.Module, data: Data, layers: Sequence[str], *, test_data: Data | None = None,
                           held_out: float = 0.25, cv_size: int = 1000, folds: int = 3, seed: int = 0,
                           batch_size: int = 256) -> Separability:
    """Linear-SVM and 1-NN accuracy per depth on spatially averaged, standardised features (001 sec. 6.5.1, Fig. 21).

    Parameters
    ----------
    model : nn.Module
        Any network; its layers are read in eval mode.
    data : Dataset or (images, labels)
        Training set of the classifiers.
    layers : sequence of str
        Module paths (``model.named_modules()``) in depth order: Phi_j is the output of ``layers[j]``.
    test_data : optional
        Where the accuracy is measured; default a class-stratified ``held_out`` share of ``data``.
    cv_size, folds : int
        C of the linear SVM is chosen among :data:`C_GRID` by ``folds``-fold cross-validation on a class-stratified
        subset of ``cv_size`` training samples ("cross-validated on a small subset of the training set").
    seed : int
        Seeds the subsets and the folds.
    """
    feats = spatial_features(model, data, layers, test_data=test_data, held_out=held_out, seed=seed,
                             batch_size=batch_size)
    scores = [linear_and_nn_accuracy(f, cv_size=cv_size, folds=folds, seed=seed) for f in feats.values()]
    first = next(iter(feats.values()))
    return Separability(tuple(feats), tuple(s.linear_acc for s in scores), tuple(s.nn_acc for s in scores),
                        tuple(paired_se(s.linear_correct, s.nn_correct) for s in scores),
                        tuple(s.svm_c for s in scores), tuple(f.dim for f in feats.values()), len(first.train_labels),
                        len(first.test_labels))
