"""Reference models: ``cnnlens.nn.models.lenet5`` etc. (see ``_models`` for the definitions)."""

from ._models import (
    LeNet5,
    PlainCNN,
    SmallResNet,
    get_model,
    large_cnn,
    lenet5,
    list_models,
    register_model,
    small_cnn,
    small_resnet,
)

__all__ = [
    "LeNet5",
    "PlainCNN",
    "SmallResNet",
    "get_model",
    "large_cnn",
    "lenet5",
    "list_models",
    "register_model",
    "small_cnn",
    "small_resnet",
]
