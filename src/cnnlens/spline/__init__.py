"""The spline engine (000): exact affine maps, templates, partition codes and distances, region walks.

Every network built from piecewise-affine parts (Linear/Conv, ReLU-like activations, clamp, max/avg pooling,
batch-norm in eval mode, residual additions, concatenation, ...) is a composition of max-affine spline operators,
so conditioned on the region of its input it is an affine map ``f(x) = A[x] x + B[x]`` (eqs. 5-9 of 000).
The tie rule (ReLU(0) inactive, first index of a max-pool maximum) is documented in ``_capture``, the one place
in cnnlens that looks inside a model: :func:`activations` (the pre-activations whose signs are the codes of eq. 14)
is how the rest of cnnlens reads hidden units. What the engine knows about each operation is kept in one op-rule
registry; :func:`register_op` declares a user's own operation (linear, elementwise piecewise affine, a composite of
known operations, or not piecewise affine).
"""

from ._activations import Activations, activations
from ._affine import AffineMap, Chunking, Templates, affine_map, templates
from ._capture import ReplayDivergenceError
from ._codes import LayerCode, PartitionCodes, boundary_units, partition_codes
from ._distance import nearest_neighbors, partition_distance
from ._figures import (
    histogram_overlap,
    plot_bimodality,
    plot_lambda_sweep,
    plot_neighbor_grid,
    plot_region_slice,
    plot_templates,
    region_ids_from_codes,
)
from ._maso import MASO, ConvexityResult, is_globally_convex, maso
from ._ops import (
    Composite,
    ElementwisePiecewise,
    Linear,
    NotPiecewiseAffine,
    OpRule,
    Pieces,
    op_rule,
    register_op,
    unregister_op,
)
from ._orthogonal import orthogonal_penalty
from ._segment import SegmentRegions, regions_on_segment

__all__ = [
    "Activations",
    "AffineMap",
    "Chunking",
    "Composite",
    "ConvexityResult",
    "ElementwisePiecewise",
    "LayerCode",
    "Linear",
    "MASO",
    "NotPiecewiseAffine",
    "OpRule",
    "PartitionCodes",
    "Pieces",
    "ReplayDivergenceError",
    "SegmentRegions",
    "Templates",
    "activations",
    "affine_map",
    "boundary_units",
    "histogram_overlap",
    "is_globally_convex",
    "maso",
    "nearest_neighbors",
    "op_rule",
    "orthogonal_penalty",
    "partition_codes",
    "partition_distance",
    "plot_bimodality",
    "plot_lambda_sweep",
    "plot_neighbor_grid",
    "plot_region_slice",
    "plot_templates",
    "region_ids_from_codes",
    "register_op",
    "regions_on_segment",
    "templates",
    "unregister_op",
]
