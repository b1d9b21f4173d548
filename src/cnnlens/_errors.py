"""Exceptions shared by every part of cnnlens."""

from __future__ import annotations


class NotPiecewiseAffineError(TypeError):
    """A model contains an operation that is not piecewise affine (e.g. sigmoid, tanh, GELU).

    The spline view of 000 (eqs. 5-9) only holds for networks built from max-affine spline
    operators. Pass ``approximate=True`` where offered to get the local linearisation instead.
    """


class DataUnavailableError(FileNotFoundError):
    """A data set's files are missing and cannot be downloaded; the message says where to put them."""


class DataIntegrityError(ValueError):
    """A data file is corrupt, truncated or does not match its published checksum."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupt file, or saved from a different model/optimiser."""


class ExactnessError(RuntimeError):
    """An affine map failed its independent check ``A[x] x + B[x] == f(x)`` (eq. 9 of 000).

    ``B`` is propagated through the masked network at input 0, independently of ``A`` and ``f(x)``, so a mismatch
    means that the capture did not see everything the model computes (an operation outside Python torch calls, a
    random or stateful model, a precision too low for the model's depth). The message says which, when it can tell.
    """
