"""Reference models: ``cnnlens.nn.models.lenet5`` etc. (see ``_models`` for the definitions)."""

from . import _models
from ._models import *  # noqa: F403 (the public names are those of _models.__all__)

__all__ = _models.__all__
