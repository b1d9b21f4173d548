"""The one training loop of cnnlens: seeded, deterministic, checkpointed every epoch, resumable.

Every experiment trains through :func:`fit` and measures through :func:`evaluate`.

Determinism: the order of the training samples in epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it does not depend on what ran before; parameters are initialised by the caller (seed them with
:func:`seed_everything` before building the model). Two runs with the same seed give identical metrics on the
same machine and thread count.

Checkpoints: with ``checkpoint_dir`` set, after every epoch the model, the optimiser state, the torch RNG state, the
history and the training settings are written (atomically) to ``checkpoint_dir/checkpoint.safetensors``. Calling
:func:`fit` again with the same ``checkpoint_dir`` resumes after the last completed epoch and gives the same final
weights as an uninterrupted run. A checkpoint is never silently used when it cannot be the run asked for: a corrupt
file, another model, other data, other hyper-parameters (the extra losses' weights included: they are
:class:`Penalty` objects whose weight the checkpoint records), or more epochs done than asked, each raise a
:class:`cnnlens.CheckpointError` that names the recorded and the requested value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from ._errors import CheckpointError
from ._progress import phase

__all__ = ["Evaluation", "FitResult", "Penalty", "evaluate", "fit", "seed_everything"]

CHECKPOINT_NAME = "checkpoint.safetensors"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Penalty:
    """An extra loss term ``weight * fn(model)`` added to the cross-entropy by :func:`fit`.

    The weight is kept apart from the callable so that a checkpoint can record it: resuming with another weight is
    a :class:`cnnlens.CheckpointError`, not a silent continuation of the old run. ``key`` identifies the term's
    function in the checkpoint; by default its qualified name. Give a key when two different functions share a name
    (lambdas) or when ``fn`` depends on settings that the weight does not carry.

    Example: ``Penalty(lambda m: orthogonal_penalty(m.output), weight=0.1, key="orthogonal(output)")`` is the
    orthogonal-template term of eq. 13 of 000 with lambda = 0.1.
    """

    fn: Callable[[nn.Module], torch.Tensor]
    weight: float = 1.0
    key: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Penalty.fn must be a callable model -> scalar tensor; received {type(self.fn).__name__}.")
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise ValueError(f"Penalty.weight must be a finite number; received {self.weight!r}.")

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.weight * self.fn(model)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records of this term: the weight and the function's key."""
        name = self.key or f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__qualname__', repr(self.fn))}"
        return {"weight": float(self.weight), "fn": name}


@dataclass
class Evaluation:
    """Accuracy, per-class accuracy (NaN for a class absent from the data), mean cross-entropy and predictions."""

    accuracy: float
    per_class_accuracy: list[float]
    loss: float
    predictions: torch.Tensor


@dataclass
class FitResult:
    """What :func:`fit` did: one dict per epoch in ``history`` (``epoch``, ``train_loss``, ``train_acc``, one
    key per extra loss, ``eval_acc``/``eval_loss`` when ``eval_data`` is given), and where it resumed."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    checkpoint: Path | None = None

    @property
    def last(self) -> dict[str, float]:
        """The metrics of the last epoch."""
        return self.history[-1] if self.history else {}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (call before building a model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeding the legacy global generator is the point)
    torch.manual_seed(seed)


def _tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a data set: the ArrayDataset/TensorDataset tensors, else every item stacked."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    try:
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(
            f"fit/evaluate need a map-style data set with len() and items (image, label), got {type(data).__name__}"
        ) from err
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels range over [{int(labels.min())}, {int(labels.max())}] but the model has {logits.shape[1]} "
            "outputs; build the model with num_classes equal to the number of classes of the data set"
        )


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 1024) -> Evaluation:
    """Evaluate ``model`` (in eval mode; its mode is restored afterwards) on ``data``."""
    images, labels = _tensors(data)
    was_training = model.training
    model.eval()
    device_dtype = next(model.parameters()).dtype
    preds, loss_sum = [], 0.0
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size].to(device_dtype)
            y = labels[start : start + batch_size]
            logits = model(x)
            _check_labels(logits, y)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(1))
    finally:
        model.train(was_training)
    predictions = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    correct = predictions == labels
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    per_class = [
        float(correct[labels == c].double().mean()) if bool((labels == c).any()) else float("nan")
        for c in range(num_classes)
    ]
    n = max(len(labels), 1)
    return Evaluation(float(correct.double().sum() / n), per_class, loss_sum / n, predictions)


def _make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def _fingerprint(model: nn.Module, config: Mapping[str, Any]) -> str:
    """Identifies the model's parameter names/shapes/dtypes and the hyper-parameters a resume must share."""
    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    blob = json.dumps({"shapes": shapes, "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> requested`` for every setting that differs (the model's shapes are reported apart)."""
    lines = []
    for key in sorted(set(recorded) | set(requested)):
        old, new = recorded.get(key, "<not set>"), requested.get(key, "<not set>")
        if old != new:
            if key == "data":
                lines.append("training data: a different data set (SHA-256 of images and labels differs)")
            else:
                lines.append(f"{key}: checkpoint {json.dumps(old, sort_keys=True)}, "
                             f"this call {json.dumps(new, sort_keys=True)}")
    return lines


def _check_extra_losses(extra_losses: Mapping[str, Penalty] | None) -> dict[str, Penalty]:
    terms = dict(extra_losses or {})
    for name, term in terms.items():
        if not isinstance(term, Penalty):
            raise TypeError(
                f"extra_losses[{name!r}] must be a cnnlens.train.Penalty(fn, weight), so that its weight is part of "
                f"the checkpoint; received {type(term).__name__}. Write Penalty(fn, weight=w) instead of "
                "lambda m: w * fn(m).")
    return terms


def _data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the training images and labels: a checkpoint only resumes on the data it was trained on."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list, fingerprint: str,
    config: Mapping[str, Any],
) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "epoch": str(epoch),
        "history": json.dumps(history),
        "fingerprint": fingerprint,
        "config": json.dumps(config, sort_keys=True),
        "param_groups": json.dumps(opt_state["param_groups"]),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str, config: Mapping[str, Any],
    epochs: int,
) -> tuple[int, list]:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        epoch, history = int(metadata["epoch"]), json.loads(metadata["history"])
        param_groups = json.loads(metadata["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({err}); delete it to train from scratch"
        ) from err
    if metadata.get("fingerprint") != fingerprint:
        try:
            recorded = json.loads(metadata.get("config", "{}"))
        except ValueError:
            recorded = {}
        differences = _differences(recorded, config) or [
            "the model's parameters (names, shapes or dtypes) differ from the checkpoint's"]
        raise CheckpointError(
            f"checkpoint {path} was written with other settings than this call asks for: "
            + "; ".join(differences) + ". Use another checkpoint_dir, or delete the checkpoint to train from scratch."
        )
    if epoch > epochs:
        raise CheckpointError(
            f"checkpoint {path} is further along than asked: it holds epoch {epoch}, this call asks for "
            f"epochs={epochs}. Ask for epochs >= {epoch} to continue it, use another checkpoint_dir, or delete the "
            "checkpoint to train from scratch."
        )
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    torch.set_rng_state(tensors["rng.torch"])
    return epoch, history


def fit(
    model: nn.Module,
    train_data: Dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    lr_schedule: str = "constant",
    lr_decay: float | None = None,
    extra_losses: Mapping[str, Penalty] | None = None,
    eval_data: Dataset | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    description: str = "training",
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    class_weights: Sequence[float] | None = None,
) -> FitResult:
    """Train ``model`` in place with cross-entropy plus optional extra loss terms.

    Parameters
    ----------
    model : classifier mapping a batch of images to logits (N, C).
    train_data : map-style data set of (image, label); ``cnnlens.data.ArrayDataset`` is used without copies.
    epochs : total number of epochs (a resumed run continues up to this number).
    lr_schedule : "constant"; "cosine": epoch ``e`` (from 0) uses ``lr * (1 + cos(pi * e / epochs)) / 2``;
        "exponential": epoch ``e`` uses ``lr * lr_decay ** e`` (the exponential decay of 000 sec. 6).
    lr_decay : the factor per epoch of the "exponential" schedule, in (0, 1]; required by it, and only by it.
        It is part of the checkpoint's settings. Each epoch's learning rate is logged as ``lr`` in the history.
    extra_losses : named :class:`Penalty` terms ``weight * fn(model)`` added to the loss, e.g.
        ``{"orthogonal": Penalty(lambda m: orthogonal_penalty(m.output), weight=0.1)}`` (eq. 13 of 000); each
        term's weighted value is logged per epoch, and its weight is part of the checkpoint's settings.
    eval_data : evaluated after every epoch (``eval_acc``, ``eval_loss`` in the history).
    checkpoint_dir : where the per-epoch checkpoint is written and resumed from.
    progress : show a progress bar (named ``description``, with an ETA).
    on_epoch_end : called with each epoch's metrics after its checkpoint is written.
    class_weights : per-class weights of the cross-entropy (class balancing, e.g. boundary pixels against the far
        more numerous background pixels, 001 sec. 4.4.2). Labels may also be maps (N, H, W) for logits
        (N, C, H, W): the loss is then per pixel, and ``train_acc`` counts correct pixels per image.

    Raises
    ------
    cnnlens.CheckpointError
        The checkpoint in ``checkpoint_dir`` is corrupt, was written with other settings (the message lists them,
        recorded vs requested), or holds more epochs than ``epochs``.
    """
    if lr_schedule not in ("constant", "cosine", "exponential"):
        raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'exponential', got {lr_schedule!r}")
    if lr_schedule == "exponential" and (isinstance(lr_decay, bool) or not isinstance(lr_decay, int | float)
                                         or not 0 < lr_decay <= 1):
        raise ValueError(f"lr_schedule='exponential' needs lr_decay, the learning-rate factor per epoch, in (0, 1]; "
                         f"received lr_decay={lr_decay!r}")
    if lr_schedule != "exponential" and lr_decay is not None:
        raise ValueError(f"lr_decay={lr_decay!r} is only used by lr_schedule='exponential'; this call asks for "
                         f"lr_schedule={lr_schedule!r}. Pass lr_schedule='exponential' or drop lr_decay.")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    images, labels = _tensors(train_data)
    if len(labels) == 0:
        raise ValueError("train_data is empty")
    extra_losses = _check_extra_losses(extra_losses)
    dtype = next(model.parameters()).dtype
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=dtype)
        if weight.dim() != 1 or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError(f"class_weights must be one finite non-negative weight per class, got {class_weights!r}")
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    config = {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "momentum": momentum,
              "weight_decay": weight_decay, "seed": seed,
              "extra_losses": {name: term.fingerprint() for name, term in sorted(extra_losses.items())},
              "data": _data_digest(images, labels), "lr_schedule": lr_schedule,
              **({"class_weights": [float(w) for w in weight]} if weight is not None else {})}
    if lr_schedule == "cosine":  # the schedule depends on the total, so a resume must keep it
        config["epochs"] = epochs
    if lr_schedule == "exponential":
        config["lr_decay"] = float(lr_decay)  # type: ignore[arg-type]
    fingerprint = _fingerprint(model, config)
    result = FitResult()
    ckpt: Path | None = None
    start_epoch = 0
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        result.checkpoint = ckpt
        if ckpt.exists():
            start_epoch, result.history = _load_checkpoint(ckpt, model, opt, fingerprint, config, epochs)
            result.history = result.history[:start_epoch]
            result.resumed_from_epoch = start_epoch
            _log.info("%s: resumed from its checkpoint at epoch %d of %d (%s)", description, start_epoch, epochs,
                      ckpt)
    n = len(labels)
    steps = (n + batch_size - 1) // batch_size
    with phase(description, max(epochs - start_epoch, 0) * steps, enabled=progress) as advance:
        for epoch in range(start_epoch, epochs):
            model.train()
            epoch_lr = lr
            if lr_schedule == "cosine":
                epoch_lr = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
            elif lr_schedule == "exponential":
                epoch_lr = lr * float(lr_decay) ** epoch  # type: ignore[arg-type]
            for group in opt.param_groups:
                group["lr"] = epoch_lr
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            sums = {"train_loss": 0.0, "correct": 0.0, **{k: 0.0 for k in extra_losses}}
            for step in range(steps):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x, y = images[idx].to(dtype), labels[idx]
                logits = model(x)
                if epoch == start_epoch and step == 0:
                    _check_labels(logits, y)
                loss = nn.functional.cross_entropy(logits, y, weight=weight)
                total = loss
                for name, term in extra_losses.items():
                    value = term(model)
                    sums[name] += value.item() * len(idx)
                    total = total + value
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"the loss became {total.item()} at epoch {epoch + 1}, step {step + 1}; lower the learning "
                        f"rate (lr={lr}) or the extra loss weights. Completed epochs are kept in the checkpoint."
                    )
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                sums["train_loss"] += loss.item() * len(idx)
                sums["correct"] += float((logits.argmax(1) == y).sum())
                advance(status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            record = {"epoch": float(epoch + 1), "lr": epoch_lr, "train_loss": sums.pop("train_loss") / n,
                      "train_acc": sums.pop("correct") / n, **{k: v / n for k, v in sums.items()}}
            if eval_data is not None:
                ev = evaluate(model, eval_data)
                record.update(eval_acc=ev.accuracy, eval_loss=ev.loss)
            result.history.append(record)
            if ckpt is not None:
                _save_checkpoint(ckpt, model, opt, epoch + 1, result.history, fingerprint, config)
            if on_epoch_end is not None:
                on_epoch_end(record)
    model.eval()
    return result
