"""The frame variant of the small ResNet (Table 6 of 001, sec. 4.4.1): its frames per layer follow the schedule,
``export()`` gives the equal plain SmallResNet (eq. 24: a frame only changes the parametrisation), and one seed gives
every arm the same random numbers (the pairing of the ``frames-compare`` experiment)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from cnnlens.data import ArrayDataset
from cnnlens.experiments import RunContext, get_experiment
from cnnlens.experiments.frames_compare import CropFlip
from cnnlens.nn import FrameConv2d, export, frame_resnet, frame_schedule, get_model
from cnnlens.nn.frame_nets import num_conv3x3
from cnnlens.train import seed_everything

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-11, torch.float32: 1e-4}


def _conv3x3(model: nn.Module) -> list[nn.Module]:
    """The 3x3 convolutions in the order of the forward pass (stem, then conv1 and conv2 of each block)."""
    return [m for m in model.modules() if isinstance(m, FrameConv2d | nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("kind", ["pixel", "image", "naive"])
def test_frames_per_layer_follow_the_schedule(kind: str, blocks: int) -> None:
    model = get_model("frame-resnet", frames=kind, width=4, blocks=blocks)
    layers = _conv3x3(model)
    assert len(layers) == num_conv3x3(blocks) == 1 + 6 * blocks
    found = tuple(m.frame_name if isinstance(m, FrameConv2d) else "pixel" for m in layers)
    assert found == frame_schedule(kind, len(layers))
    if kind == "image":
        assert found[:3] == ("gaussian", "framelet", "gaussian")
    if kind == "pixel":  # the baseline is plain PyTorch, not a FrameConv2d over the identity
        assert all(type(m) is nn.Conv2d for m in layers)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["pixel", "image", "naive"])
def test_export_gives_an_equal_plain_model(kind: str, dtype: torch.dtype, normalize: bool) -> None:
    torch.manual_seed(0)
    model = frame_resnet(frames=kind, width=4, in_channels=3, num_classes=5, normalize=normalize).to(dtype)
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    plain = export(model).eval()
    assert not any(isinstance(m, FrameConv2d) for m in plain.modules())
    assert len(_conv3x3(plain)) == num_conv3x3()
    x = torch.randn(6, 3, 20, 20, dtype=dtype)
    with torch.no_grad():
        out, ref = plain(x), model(x)
    assert out.shape == (6, 5)
    assert (out - ref).abs().max() <= TOL[dtype] * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("normalize", [False, True])
def test_one_seed_gives_every_arm_the_same_random_numbers(normalize: bool) -> None:
    nets = {}
    for kind in ("pixel", "image", "naive"):
        seed_everything(3)
        nets[kind] = frame_resnet(frames=kind, width=4, normalize=normalize)
    pixel = _conv3x3(nets["pixel"])
    for kind in ("image", "naive"):
        for plain, framed in zip(pixel, _conv3x3(nets[kind]), strict=True):
            # alpha ~ N(0, 2 / (fan-in F mean||phi||^2)) and He's N(0, 2 / (fan-in k^2)): the same normals scaled
            energy = framed.basis.flatten(1).pow(2).sum(1).mean()
            scale = (framed.num_basis * energy / 9).sqrt()
            torch.testing.assert_close(framed.alpha * scale, plain.weight.flatten(2))
        torch.testing.assert_close(nets[kind].output.weight, nets["pixel"].output.weight)


def test_crop_flip_crops_the_padded_image_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    augment = CropFlip(pad=2)
    out, padded = augment(x), nn.functional.pad(x, (2,) * 4)
    for n in range(len(x)):
        crops = [padded[n, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[n], c) or torch.equal(out[n], c.flip(2)) for c in crops)
    assert torch.equal(augment.eval()(x), x)


def test_frames_compare_trains_on_cifar10_when_present(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CIFAR-10+ branch (crops and flips, three channels), on a CIFAR-shaped stand-in for the data folder."""
    from cnnlens.experiments import frames_compare

    gen = torch.Generator().manual_seed(0)

    def split(n: int, name: str) -> ArrayDataset:
        return ArrayDataset(torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % 10, 10, "cifar10", name)

    monkeypatch.setattr(frames_compare, "load_cifar10", lambda ctx, purpose, transforms=(): (split(60, "train"),
                                                                                           split(20, "test")))
    quick = get_experiment("frames-compare").quick
    result = frames_compare.run(replace(quick, seeds=2, cifar_train_size=40),
                                RunContext(tmp_path, progress=False))
    assert result.metrics["n_test"] == 20 and result.metrics["n_seeds"] == 2
    assert all(s.startswith("CIFAR-10+ (crops and flips") for s in result.settings.values())
