"""Reference models: shapes, registry, and LeNet-5's layout as in 003 (Table 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.nn.models import get_model, lenet5, list_models, register_model

#: the ImageNet-scale models, narrow and on one channel (their defaults: 3 channels, 1000 classes)
_SMALL = {"resnet18": {"width": 8}, "vgg11-bn": {"width": 8, "hidden": 16}, "mobilenet-v1": {"width": 8}}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [28, 32])
def test_every_model_maps_images_to_logits(name: str, size: int) -> None:
    config = {**_SMALL[name], "in_channels": 1} if name in _SMALL else {}
    model = get_model(name, num_classes=7, **config).eval()
    if name in ("lenet5", "vgg11-bn") and size == 28:
        with pytest.raises(ValueError, match="pad32" if name == "lenet5" else "H, W >= 32"):
            model(torch.zeros(2, 1, size, size))
        return
    out = model(torch.randn(3, 1, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_lenet5_layout_matches_the_recos_table() -> None:
    model = lenet5()
    assert [m.out_channels for m in (model.c1, model.c3, model.c5)] == [6, 16, 120]
    assert model.c1.kernel_size == model.c3.kernel_size == model.c5.kernel_size == (5, 5)
    assert (model.f6.in_features, model.f6.out_features, model.output.out_features) == (120, 84, 10)
    x = torch.randn(2, 1, 32, 32)
    assert model.c1(x).shape[-2:] == (28, 28)


def test_lenet5_without_activation_is_linear() -> None:
    torch.manual_seed(0)
    model = lenet5(activation="none").double().eval()
    for module in model.modules():  # max-pool is still nonlinear: replace it to test the linear conv/FC part
        if isinstance(module, nn.MaxPool2d):
            module.forward = nn.AvgPool2d(2).forward  # type: ignore[method-assign]
    x, y = torch.randn(1, 1, 32, 32, dtype=torch.float64), torch.randn(1, 1, 32, 32, dtype=torch.float64)
    zero = model(torch.zeros_like(x))
    torch.testing.assert_close(model(x + y) - zero, (model(x) - zero) + (model(y) - zero))


def test_activation_is_validated_and_registry_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="activation must be"):
        lenet5(activation="tanh")
    assert isinstance(lenet5(activation=nn.LeakyReLU).act1, nn.LeakyReLU)
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet5")(lenet5)
    with pytest.raises(ValueError, match="available models"):
        get_model("vgg")
