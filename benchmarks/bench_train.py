"""Training throughput of LeNet-5 on CPU (images/s): ``cnnlens.train.fit`` vs a bare PyTorch loop, one process.

Run: ``python benchmarks/bench_train.py [--epochs 2] [--repeats 3]``. Prints images/s of both and their ratio
(fit's overhead: progress bar, per-epoch checkpoint, bookkeeping). Same model, data, batch size and optimiser.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from cnnlens.data import load
from cnnlens.nn.models import lenet5
from cnnlens.train import fit, seed_everything


def bare_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int) -> None:
    """The baseline: the shortest correct SGD loop over shuffled mini-batches."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(labels), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load("mnist5k", "train", transforms=("pad32",))
    n = len(data) * args.epochs
    timings: dict[str, list[float]] = {"bare loop": [], "cnnlens.fit": []}
    for repeat in range(args.repeats + 1):  # the first round is a warm-up
        seed_everything(repeat)
        model = lenet5()
        start = time.perf_counter()
        bare_loop(model, data.images, data.labels, args.epochs, args.batch_size)
        bare = time.perf_counter() - start
        seed_everything(repeat)
        model = lenet5()
        with tempfile.TemporaryDirectory() as ckpt:
            start = time.perf_counter()
            fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=0.05, seed=repeat,
                checkpoint_dir=ckpt, progress=False)
            ours = time.perf_counter() - start
        if repeat:
            timings["bare loop"].append(bare)
            timings["cnnlens.fit"].append(ours)
    print(f"LeNet-5 training on mnist5k (32x32), batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epochs x {len(data)} images, best of {args.repeats}")
    best = {k: min(v) for k, v in timings.items()}
    for name, seconds in best.items():
        print(f"  {name:12s} {n / seconds:8.0f} images/s  ({seconds:.2f} s)")
    print(f"  ratio fit / bare loop time: {best['cnnlens.fit'] / best['bare loop']:.3f}")


if __name__ == "__main__":
    main()
