"""The trained networks of sec. 6 of 002: one convolutional layer, a ReLU and one fully connected layer."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ._sampling import _size

__all__ = ["single_conv_net"]


def single_conv_net(size: int | tuple[int, int], filters: int, kernel: int, num_classes: int) -> nn.Sequential:
    """``conv`` (1 -> ``filters``, ``kernel x kernel``) -> ``relu`` -> ``flatten`` -> ``fc`` (to ``num_classes``).

    Sec. 6.1 of 002 uses one 2 x 2 filter and a 2 x 9 fully connected layer on 4 x 4 inputs; sec. 6.2 uses twelve
    5 x 5 filters on 40 x 40 inputs. Parameters keep PyTorch's default initialisation (seed it first).
    """
    m, n = _size(size)
    if kernel < 1 or kernel > min(m, n) or filters < 1 or num_classes < 1:
        raise ValueError(
            f"need 1 <= kernel <= {min(m, n)} (the input size), filters >= 1 and num_classes >= 1; received "
            f"kernel={kernel}, filters={filters}, num_classes={num_classes}."
        )
    features = filters * (m - kernel + 1) * (n - kernel + 1)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, filters, kernel), relu=nn.ReLU(), flatten=nn.Flatten(),
                                     fc=nn.Linear(features, num_classes)))
