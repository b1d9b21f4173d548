"""cnnlens: exact mathematical models of convolutional networks.

Look inside any trained piecewise-affine network (``cnnlens.spline``: the exact affine map A[x]x + B[x] of 000,
templates, partition codes and distances; ``cnnlens.recos``: anchor vectors of 003), build networks with known
structure (``cnnlens.tiles``: the zero-error constructions of 002; ``cnnlens.nn``), and reproduce the papers'
claims (``cnnlens run``); ``cnnlens.analysis`` measures what any network's layers separate, contract and keep (001
ch. 6). Data sets come from ``cnnlens.data``, training from ``cnnlens.train``.
"""

from . import analysis, data, nn, recos, spline, tiles, train
from ._errors import CheckpointError, DataIntegrityError, DataUnavailableError, ExactnessError, NotPiecewiseAffineError
from .data import list_datasets, load
from .spline import (
    affine_map,
    nearest_neighbors,
    orthogonal_penalty,
    partition_codes,
    partition_distance,
    regions_on_segment,
    templates,
)
from .train import evaluate, fit

__all__ = [
    "CheckpointError",
    "DataIntegrityError",
    "DataUnavailableError",
    "ExactnessError",
    "NotPiecewiseAffineError",
    "affine_map",
    "analysis",
    "data",
    "evaluate",
    "fit",
    "list_datasets",
    "load",
    "nearest_neighbors",
    "nn",
    "orthogonal_penalty",
    "partition_codes",
    "partition_distance",
    "recos",
    "regions_on_segment",
    "spline",
    "templates",
    "tiles",
    "train",
]
__version__ = "0.1.0"
