"""Layer-wise analysis of any network (001 ch. 6): what each depth keeps, separates and contracts.

- ``features``: spatially averaged features per depth, streamed by batches through the capture
  engine (``spatial_features``), and the representation Phi of a model.
- ``separability``: linear-SVM and 1-NN accuracy per depth (sec. 6.5.1, Fig. 21).
- ``pca``: accuracy after a projection on d principal components (sec. 6.5.2, Fig. 22).
- ``contraction``: intra- and inter-class distances per depth (eqs. 16-17).
- ``jacobian``: singular values of dPhi at x, the counts holding 80% / 97% of the energy
  (sec. 6.4.1, Fig. 19).
- ``reconstruction``: the reconstruction error eps(X) of an invertible network (sec. 6.4.2).
- ``interpolation``: Phi^-1(t Phi x0 + (1 - t) Phi x1) (Fig. 20).
"""

from ._contraction import Contraction, contraction
from ._features import Features, representation, spatial_features
from ._interpolation import Interpolation, interpolate
from ._jacobian import Spectrum, energy_count, jacobian_spectrum
from ._pca import PCASeparability, pca_separability
from ._reconstruction import Reconstruction, reconstruction_error, uniform_noise
from ._separability import Scores, Separability, layerwise_separability, linear_and_nn_accuracy, paired_se

__all__ = [
    "Contraction",
    "Features",
    "Interpolation",
    "PCASeparability",
    "Reconstruction",
    "Scores",
    "Separability",
    "Spectrum",
    "contraction",
    "energy_count",
    "interpolate",
    "jacobian_spectrum",
    "layerwise_separability",
    "linear_and_nn_accuracy",
    "paired_se",
    "pca_separability",
    "reconstruction_error",
    "representation",
    "spatial_features",
    "uniform_noise",
]
