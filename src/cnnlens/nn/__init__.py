"""Structured layers and reference models, one module per concept (names re-exported here).

- :mod:`~cnnlens.nn.bases`: the Gaussian-derivative basis (the N-jet) of structured receptive fields (001, ch. 3).
- :mod:`~cnnlens.nn.rfconv`: ``RFConv2d`` / ``RFConv3d``, convolutions over a fixed basis (eq. 23 of 001).
- :mod:`~cnnlens.nn.frames`: the frames of Fig. 9 of 001, their bounds (eq. 7) and ``FrameConv2d`` (eq. 24).
- :mod:`~cnnlens.nn.frame_nets`: the small ResNet over a frame per layer (Table 6 of 001), ``frame_resnet``.
- :mod:`~cnnlens.nn.steering`: rotating Gaussian-derivative filters by their coefficients (eq. 22 of 001).
- :mod:`~cnnlens.nn.dynamic`: dynamic steerable two-factor blocks and static residual blocks (eq. 29 of 001).
- :mod:`~cnnlens.nn.irevnet`: the i-RevNet, its invertible down-sampling and exact inverse (eq. 39 of 001, ch. 6).
- :mod:`~cnnlens.nn.rfnets`: the RFNN, its plain twin CNN-B and the RFNiN (sec. 3.3.4 and 3.4 of 001).
- :mod:`~cnnlens.nn.models`: the reference CNNs (LeNet-5, plain CNNs, ResNets, VGG, MobileNet) and the registry.
"""

from . import bases, dynamic, frame_nets, frames, irevnet, models, rfconv, rfnets, steering
from .bases import GaussianBasis, basis_count, gaussian_derivative_basis, kernel_size, scale_schedule
from .dynamic import BasisConv2d, DynamicSteerableBlock, DynResNet, StaticResidualBlock
from .frame_nets import FRAME_ARMS, frame_resnet
from .frames import FRAMES, Bounds, Frame, FrameBounds, FrameConv2d, frame, frame_bounds, frame_schedule
from .irevnet import (
    InvertibleDownsampling,
    IRevBlock,
    IRevNet,
    SplittingOperator,
    comparable_resnet,
    depth_to_space,
    space_to_depth,
)
from .models import get_model, list_models
from .rfconv import RFConv2d, RFConv3d, export
from .rfnets import RFNN, RFNiN, cnn_b, num_2d_filters, rfnin, rfnn
from .steering import ScaleSteering, steer, steer_filter, steer_scale

__all__ = [
    "BasisConv2d",
    "Bounds",
    "DynResNet",
    "DynamicSteerableBlock",
    "FRAMES",
    "FRAME_ARMS",
    "Frame",
    "FrameBounds",
    "FrameConv2d",
    "GaussianBasis",
    "IRevBlock",
    "IRevNet",
    "InvertibleDownsampling",
    "RFConv2d",
    "RFConv3d",
    "RFNN",
    "RFNiN",
    "ScaleSteering",
    "SplittingOperator",
    "StaticResidualBlock",
    "bases",
    "basis_count",
    "cnn_b",
    "comparable_resnet",
    "depth_to_space",
    "dynamic",
    "export",
    "frame",
    "frame_bounds",
    "frame_nets",
    "frame_resnet",
    "frame_schedule",
    "frames",
    "gaussian_derivative_basis",
    "get_model",
    "irevnet",
    "kernel_size",
    "list_models",
    "models",
    "num_2d_filters",
    "rfconv",
    "rfnets",
    "rfnin",
    "rfnn",
    "scale_schedule",
    "space_to_depth",
    "steer",
    "steer_filter",
    "steer_scale",
    "steering",
]
