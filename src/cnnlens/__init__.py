"""cnnlens: exact mathematical models of convolutional networks."""

from ._errors import CheckpointError, DataIntegrityError, DataUnavailableError, NotPiecewiseAffineError

__all__ = ["CheckpointError", "DataIntegrityError", "DataUnavailableError", "NotPiecewiseAffineError"]
__version__ = "0.1.0"
