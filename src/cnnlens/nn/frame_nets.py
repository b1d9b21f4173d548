"""The frame variant of the small ResNet: Table 6 of 001 (sec. 4.4.1) at CPU size.

Every 3x3 convolution of :class:`~cnnlens.nn.models.SmallResNet` (the stem, then conv1 and conv2 of each residual
block, in the order of the forward pass) learns its filters over the frame that
:func:`~cnnlens.nn.frames.frame_schedule` gives its layer (eq. 24 of 001); the 1x1 projections of the shortcuts
stay plain. ``frames="image"`` is Table 6's "Image Frame" (Gaussian derivatives and framelets alternating by layer),
``"naive"`` the x^p y^q frame and ``"pixel"`` the baseline: a plain ``nn.Conv2d``, the pixel basis itself.

Every arm draws its initial weights alike: ``FrameConv2d`` draws its coefficients alpha ~ N(0, s^2) with the He
variance of the effective filter (:meth:`~cnnlens.nn.rfconv._BasisConvNd.reset_parameters`), and the pixel arm's
``nn.Conv2d`` is He-initialised (Kaiming normal, fan-in), which for the pixel basis is the same distribution. Both
draw out x in x 9 standard normals per layer, so one seed gives every arm the same random numbers and the arms
differ by the frame only. ``export()`` turns a trained frame network into the equal plain SmallResNet.
"""

from __future__ import annotations

from torch import nn

from ._models import SmallResNet, register_model
from .frames import FrameConv2d, frame_schedule

__all__ = ["FRAME_ARMS", "frame_resnet", "num_conv3x3"]

#: the three arms of Table 6: frame schedule name -> the table's row
FRAME_ARMS = {"pixel": "Pixel Basis", "image": "Image Frame", "naive": "Naive Frame"}


def num_conv3x3(blocks: int = 1) -> int:
    """The 3x3 convolutions of a SmallResNet with ``blocks`` blocks per stage: the stem and two per block."""
    return 1 + 3 * 2 * blocks


def _pixel_conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """A plain 3x3 convolution (the pixel basis), He-initialised without touching the random stream first."""
    conv = nn.utils.skip_init(nn.Conv2d, cin, cout, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


@register_model("frame-resnet")
def frame_resnet(*, frames: str = "image", num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 blocks: int = 1, normalize: bool = False) -> SmallResNet:
    """The small ResNet with every 3x3 convolution over the frame of its layer (Table 6 of 001; see the module
    docstring). ``frames`` is a schedule of :func:`~cnnlens.nn.frames.frame_schedule`: ``"pixel"``, ``"image"``,
    ``"naive"`` (or ``"gaussian"`` / ``"framelet"`` throughout). Each frame layer records its ``frame_name``.
    ``normalize=True`` scales every frame filter to unit norm (FrameConv2d's option): the frames' overall scale
    (vector frame bounds 0.004-0.25 for the Gaussian derivatives, 0.19-21 for the naive frame at 3x3) then no
    longer acts as a per-layer learning-rate factor on the effective filters."""
    schedule = iter(frame_schedule(frames, num_conv3x3(blocks)))

    def conv(cin: int, cout: int, stride: int) -> nn.Module:
        name = next(schedule)
        if name == "pixel":
            return _pixel_conv(cin, cout, stride)
        return FrameConv2d(cin, cout, name, 3, stride=stride, padding=1, bias=False, normalize=normalize)

    return SmallResNet(num_classes, in_channels, width, blocks, conv)
