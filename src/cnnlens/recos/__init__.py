"""RECOS (003, Kuo): a trained CNN as REctified COrrelations on a Sphere.

Every conv or linear layer is read as a RECOS unit whose filters are anchor vectors: ``anchor_vectors``,
``rectified_correlations`` (eqs. 1-10), ``anchor_position_vectors`` and ``compound_anchors`` of cascaded layers
(eqs. 11-21), the RECOS specification of a network (``summary``, Tables 1-2), anchors as cluster centroids
(``cluster_view``), the output layer's class unit vectors (``unit_vector_alignment``, Fig. 9), and the polarity
experiment's network transforms (``polarity_transform``, ``negate_first_layer``, ``double_anchors``).
"""

from ._anchors import AnchorVectors, RectifiedCorrelations, anchor_vectors, augment_patches, rectified_correlations
from ._cascade import AnchorPositionVectors, CompoundAnchors, anchor_position_vectors, compound_anchors
from ._clusters import ClusterView, UnitVectorAlignment, cluster_view, unit_vector_alignment
from ._figures import plot_image_grid, plot_stitching, plot_unit_circle
from ._layers import anchor_matrix, extract_patches
from ._polarity import ReversedInputConv2d, double_anchors, negate_first_layer, polarity_transform
from ._summary import AlexNetShaped, RecosSummary, RecosUnit, alexnet_shaped, summary

__all__ = [
    "AlexNetShaped",
    "AnchorPositionVectors",
    "AnchorVectors",
    "ClusterView",
    "CompoundAnchors",
    "RecosSummary",
    "RecosUnit",
    "RectifiedCorrelations",
    "ReversedInputConv2d",
    "UnitVectorAlignment",
    "alexnet_shaped",
    "anchor_matrix",
    "anchor_position_vectors",
    "anchor_vectors",
    "augment_patches",
    "cluster_view",
    "compound_anchors",
    "double_anchors",
    "extract_patches",
    "negate_first_layer",
    "plot_image_grid",
    "plot_stitching",
    "plot_unit_circle",
    "polarity_transform",
    "rectified_correlations",
    "summary",
    "unit_vector_alignment",
]
