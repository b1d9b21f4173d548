"""The training loop: determinism, resume after interruption, checkpoint errors, extra losses, evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cnnlens import CheckpointError
from cnnlens.train import Penalty, evaluate, fit, seed_everything


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].sum((1, 2)) > 0).long()
    return TensorDataset(x, y)


def _model(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 4))


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_gives_identical_metrics_and_weights() -> None:
    runs = []
    for _ in range(2):
        model = _model(3)
        result = fit(model, _data(), epochs=3, batch_size=16, lr=0.05, seed=3, eval_data=_data(40, 1), progress=False)
        runs.append((result.history, _params(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)
    other = _model(3)
    history = fit(other, _data(), epochs=3, batch_size=16, lr=0.05, seed=4, progress=False).history
    assert history[-1]["train_loss"] != runs[0][0][-1]["train_loss"]


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path) -> None:
    reference = _model(1)
    ref_result = fit(reference, _data(), epochs=4, batch_size=16, lr=0.05, seed=1, progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_two(record: dict[str, float]) -> None:
        if record["epoch"] == 2:
            raise Interrupt

    interrupted = _model(1)
    with pytest.raises(Interrupt):
        fit(interrupted, _data(), epochs=4, batch_size=16, lr=0.05, seed=1, checkpoint_dir=tmp_path,
            progress=False, on_epoch_end=stop_after_two)
    torch.manual_seed(12345)  # the RNG state must come from the checkpoint, not from whatever ran in between
    resumed = _model(99)  # fresh weights: everything must come from the checkpoint
    result = fit(resumed, _data(), epochs=4, batch_size=16, lr=0.05, seed=1, checkpoint_dir=tmp_path,
                 progress=False)
    assert result.resumed_from_epoch == 2
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in ref_result.history]
    for a, b in zip(_params(reference), _params(resumed), strict=True):
        assert torch.equal(a, b)


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    model = _model()
    fit(model, _data(), epochs=1, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.01, this call 0.5"):
        fit(_model(), _data(), epochs=2, batch_size=16, lr=0.5, seed=0, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="training data: a different data set"):
        fit(_model(), _data(seed=5), epochs=2, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(CheckpointError, match="the model's parameters"):
        fit(other, _data(), epochs=2, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        fit(_model(), _data(), epochs=2, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)


def _l2_last(m: nn.Module) -> torch.Tensor:
    return m[-1].weight.pow(2).sum()


def test_extra_losses_are_added_and_logged() -> None:
    model = _model()
    penalty = {"l2_last": Penalty(_l2_last, weight=0.1)}
    result = fit(model, _data(), epochs=2, batch_size=16, seed=0, extra_losses=penalty, progress=False)
    assert all(h["l2_last"] > 0 for h in result.history)
    # a huge penalty on the last layer's weights drives them to (almost) zero
    strong = _model()
    fit(strong, _data(), epochs=3, batch_size=16, lr=0.05, momentum=0.0, seed=0,
        extra_losses={"l2": Penalty(_l2_last, weight=5.0)}, progress=False)
    assert strong[-1].weight.abs().max() < 0.5 * model[-1].weight.abs().max()
    with pytest.raises(TypeError, match="Penalty"):
        fit(_model(), _data(), epochs=1, extra_losses={"l2": lambda m: 0.1 * _l2_last(m)}, progress=False)


def test_resuming_with_another_penalty_weight_is_a_checkpoint_error(tmp_path) -> None:
    """The weight of an extra loss is part of the checkpoint: another weight never resumes the old run."""
    fit(_model(), _data(), epochs=2, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False,
        extra_losses={"l2": Penalty(_l2_last, weight=0.1)})
    with pytest.raises(CheckpointError, match=r"extra_losses: checkpoint .*0\.1.*this call .*1\.0"):
        fit(_model(), _data(), epochs=3, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False,
            extra_losses={"l2": Penalty(_l2_last, weight=1.0)})
    with pytest.raises(CheckpointError, match="extra_losses"):
        fit(_model(), _data(), epochs=3, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    resumed = fit(_model(), _data(), epochs=3, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False,
                  extra_losses={"l2": Penalty(_l2_last, weight=0.1)})
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == 3


def test_a_checkpoint_further_along_than_asked_is_a_checkpoint_error(tmp_path) -> None:
    fit(_model(), _data(), epochs=5, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="holds epoch 5, this call asks for epochs=1"):
        fit(_model(), _data(), epochs=1, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    again = fit(_model(), _data(), epochs=5, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from_epoch == 5 and len(again.history) == 5


def test_evaluate_reports_accuracy_and_per_class_accuracy() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3, 4))
        model[1].bias.zero_()
    x = torch.tensor([[9.0, 0, 0, 0], [0, 9, 0, 0], [0, 0, 9, 0], [9, 0, 0, 0]]).reshape(4, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 2])
    ev = evaluate(model, TensorDataset(x, y))
    assert ev.accuracy == 0.75
    assert ev.per_class_accuracy == [1.0, 1.0, 0.5]
    assert ev.predictions.tolist() == [0, 1, 2, 0]
    assert model.training  # the mode is restored


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), _data(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="optimizer must be"):
        fit(_model(), _data(), epochs=1, optimizer="lbfgs", progress=False)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(_model(), _data(), epochs=1, extra_losses={"nan": Penalty(lambda m: torch.tensor(float("nan")))},
            progress=False)


def test_exponential_schedule_equals_torch_exponential_lr() -> None:
    """lr_schedule="exponential": epoch e trains at lr * lr_decay ** e, checked against torch's ExponentialLR on a
    full-batch SGD run (one step per epoch, so the data order cannot matter), in float64."""
    data = _data(48)
    x, y = data.tensors[0].double(), data.tensors[1]
    seed_everything(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double()
    reference = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double()
    reference.load_state_dict(model.state_dict())
    result = fit(model, TensorDataset(x, y), epochs=4, batch_size=48, lr=0.5, momentum=0.0, seed=0,
                 lr_schedule="exponential", lr_decay=0.5, progress=False)
    assert [h["lr"] for h in result.history] == [0.5, 0.25, 0.125, 0.0625]
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
        schedule.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    constant = fit(_model(), _data(), epochs=2, batch_size=16, lr=0.05, seed=0, progress=False)
    assert [h["lr"] for h in constant.history] == [0.05, 0.05]


def test_exponential_decay_is_part_of_the_checkpoint(tmp_path: Path) -> None:
    fit(_model(), _data(), epochs=2, batch_size=16, seed=0, lr_schedule="exponential", lr_decay=0.5,
        checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr_decay: checkpoint 0.5, this call 0.9"):
        fit(_model(), _data(), epochs=3, batch_size=16, seed=0, lr_schedule="exponential", lr_decay=0.9,
            checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr_schedule: checkpoint \"exponential\", this call \"constant\""):
        fit(_model(), _data(), epochs=3, batch_size=16, seed=0, checkpoint_dir=tmp_path, progress=False)
    resumed = fit(_model(), _data(), epochs=3, batch_size=16, seed=0, lr_schedule="exponential", lr_decay=0.5,
                  checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 2 and [h["lr"] for h in resumed.history] == [0.01, 0.005, 0.0025]


@pytest.mark.parametrize("decay", [None, 0.0, -0.5, 1.5, True, "0.9"])
def test_exponential_schedule_needs_a_decay_in_0_1(decay: object) -> None:
    with pytest.raises(ValueError, match=r"lr_schedule='exponential' needs lr_decay.*in \(0, 1\]"):
        fit(_model(), _data(), epochs=1, lr_schedule="exponential", lr_decay=decay, progress=False)  # type: ignore


def test_lr_decay_without_the_exponential_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="lr_decay=0.9 is only used by lr_schedule='exponential'"):
        fit(_model(), _data(), epochs=1, lr_decay=0.9, progress=False)
    with pytest.raises(ValueError, match="'constant', 'cosine' or 'exponential'"):
        fit(_model(), _data(), epochs=1, lr_schedule="step", progress=False)


def test_fit_trains_per_pixel_labels_with_class_weights():
    """Pixel-wise classification (logits (N, C, H, W), labels (N, H, W)) with class balancing trains and weighs."""
    import torch
    from torch import nn

    from cnnlens.train import fit, seed_everything

    torch.manual_seed(0)
    images = torch.rand(32, 1, 8, 8)
    labels = (images[:, 0] > 0.9).long()  # rare positive pixels
    data = torch.utils.data.TensorDataset(images, labels)
    recall = {}
    for weights in (None, [0.1, 0.9]):
        seed_everything(0)
        model = nn.Conv2d(1, 2, 1)
        fit(model, data, epochs=30, batch_size=8, lr=0.1, optimizer="adam", progress=False, class_weights=weights)
        with torch.no_grad():
            recall[weights is None] = float((model(images).argmax(1)[labels == 1] == 1).double().mean())
    assert recall[False] > 0.9 > recall[True]  # balancing finds the rare pixels that the plain loss gives up on
    with pytest.raises(ValueError, match="one finite non-negative weight per class"):
        fit(nn.Conv2d(1, 2, 1), data, epochs=1, progress=False, class_weights=[1.0, -1.0])
