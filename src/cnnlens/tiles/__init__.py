"""The template-matching framework of 002 (*Revisiting the expressiveness of CNNs*), executable and constructive.

- The image model (Defs. 3.1-3.6): :class:`FeatureTile`, :class:`Image`, :class:`ImageClass`, membership tests
  (:func:`contains`, :func:`contains_image`, :func:`membership`, :func:`class_labels`, :func:`in_class`) and
  :func:`sample`, which draws labelled inputs of ``X^Ibar`` deterministically.
- The piecewise-linear detectors (Defs. 5.1-5.3): :func:`tile_distance`, :func:`distance_map` (``D_t``),
  :func:`phi_tile`, :func:`phi_image`, :func:`phi_class`, computed directly: the reference.
- The constructions: :func:`shallow_construction` (Thm. 1) and :func:`deep_construction` (Thm. 2), ordinary
  ``nn.Sequential`` networks with logits exactly ``phi_{I_j}``; :func:`describe_unit` names their hidden units.
- :func:`neuron_selectivity`: mono- vs polysemantic units of constructed and trained networks (sec. 6-7), and
  :func:`single_conv_net`, the trained networks of sec. 6.

>>> import numpy as np
>>> import torch
>>> from cnnlens.tiles import FeatureTile, Image, ImageClass, sample, shallow_construction
>>> white = FeatureTile(np.zeros((2, 2)), eps=0.5, mask=np.ones((2, 2), bool))
>>> black = FeatureTile(np.ones((2, 2)), eps=0.5)
>>> squares = ImageClass([Image([white], "white"), Image([black], "black")])
>>> data = sample(squares, 100, 4, seed=0)
>>> net = shallow_construction(squares, 4, dtype=torch.float64)
>>> bool((net(data.images.double()).argmax(1) == data.labels).all())
True
"""

from ._baseline import single_conv_net
from ._deep import DeepTileNet, deep_construction
from ._detectors import (
    class_labels,
    contains,
    contains_image,
    distance_map,
    in_class,
    membership,
    phi_class,
    phi_image,
    phi_tile,
    tile_distance,
)
from ._model import FeatureTile, Image, ImageClass
from ._network import TileNetwork, describe_unit, hidden_units
from ._sampling import TileDataset, plant, sample
from ._selectivity import Selectivity, neuron_selectivity
from ._shallow import ShallowTileNet, shallow_construction

__all__ = [
    "DeepTileNet",
    "FeatureTile",
    "Image",
    "ImageClass",
    "Selectivity",
    "ShallowTileNet",
    "TileDataset",
    "TileNetwork",
    "class_labels",
    "contains",
    "contains_image",
    "deep_construction",
    "describe_unit",
    "hidden_units",
    "distance_map",
    "in_class",
    "membership",
    "neuron_selectivity",
    "phi_class",
    "phi_image",
    "phi_tile",
    "plant",
    "sample",
    "shallow_construction",
    "single_conv_net",
    "tile_distance",
]
