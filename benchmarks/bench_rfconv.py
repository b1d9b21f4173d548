"""Structured receptive-field convolutions (001 ch. 3): RFConv2d against nn.Conv2d, and the RFNN against the
scattering baseline, measured in one process.

Run: ``python benchmarks/bench_rfconv.py [--repeats 9] [--threads N]``.

1. A training step (forward + backward) of a 16 -> 32 channel layer with 7x7 filters (third-order basis at sigma 1,
   10 functions), batch 128, 28x28, against ``nn.Conv2d`` of the same shape: RFConv2d as implemented (compose the
   effective filter with one einsum, one convolution), the paper's factorised form (basis convolution of every
   input channel, then a 1x1 recombination, Fig. 4 of 001) in NCHW and channels-last, and the exported
   ``to_conv()`` at inference. Targets (issue 11): training step <= 1.2x the Conv2d's, ``to_conv()`` 1.0x.
2. Training throughput (images/s) of the RFNN (``cnnlens.nn.rfnn``, 32 wide) with ``cnnlens.train.fit`` on mnist5k
   digits, next to kymatio's Scattering2D (J = 2) feature extraction and the linear-SVM fit on the same images.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.data import load, stratified_subset
from cnnlens.experiments._receptive import ScatteringSVM
from cnnlens.nn import RFConv2d, rfnn
from cnnlens.train import fit


def factorised(layer: RFConv2d, x: torch.Tensor) -> torch.Tensor:
    """Fig. 4 of 001: every input channel convolved with every basis function, then recombined by alpha (1x1)."""
    n, c, h, w = x.shape
    bank = layer.basis.flip((1, 2)).unsqueeze(1)
    responses = F.conv2d(x.reshape(n * c, 1, h, w), bank, padding=layer.padding)
    responses = responses.reshape(n, c * layer.num_basis, *responses.shape[2:])
    return F.conv2d(responses, layer.alpha.reshape(layer.out_channels, -1, 1, 1), layer.bias)


def layer_steps(repeats: int) -> None:
    torch.manual_seed(0)
    layer = RFConv2d(16, 32, order=3, sigmas=1.0)
    conv = nn.Conv2d(16, 32, layer.kernel_size, padding=layer.padding)
    x = torch.randn(128, 16, 28, 28)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def step(fn, inp):  # noqa: ANN001, ANN202
        return lambda: fn(inp).sum().backward()

    exported = layer.to_conv()
    with torch.no_grad():
        inference = _interleaved_ms({"nn.Conv2d": lambda: conv(x), "to_conv()": lambda: exported(x),
                                     "RFConv2d": lambda: layer(x)}, repeats)
    training = _interleaved_ms({
        "nn.Conv2d": step(conv, x),
        "RFConv2d (einsum + one conv)": step(layer, x),
        "factorised NCHW": step(lambda v: factorised(layer, v), x),
        "factorised channels-last": step(lambda v: factorised(layer, v), x_last),
    }, repeats)
    base = training["nn.Conv2d"][0]
    print(f"training step, 16 -> 32 channels, 7x7, batch 128, 28x28, {torch.get_num_threads()} threads "
          f"({repeats} interleaved repeats, median / min ms):")
    cpu_base = training["nn.Conv2d"][3]
    for name, (med, low, _, cpu) in training.items():
        print(f"  {name:30s} {med:8.1f} / {low:8.1f} ms  {med / base:5.2f}x nn.Conv2d "
              f"(CPU time {cpu / cpu_base:5.2f}x)")
    base = inference["nn.Conv2d"][0]
    print("inference (no grad):")
    cpu_base = inference["nn.Conv2d"][3]
    for name, (med, low, _, cpu) in inference.items():
        print(f"  {name:30s} {med:8.1f} / {low:8.1f} ms  {med / base:5.2f}x nn.Conv2d "
              f"(CPU time {cpu / cpu_base:5.2f}x)")


def rfnn_vs_scattering(images: int) -> None:
    data = stratified_subset(load("mnist5k", "train"), images, seed=0)
    model = rfnn(width=32)
    start = time.perf_counter()
    fit(model, data, epochs=1, batch_size=32, lr=1e-2, optimizer="adam", progress=False)
    train_rate = len(data) / (time.perf_counter() - start)
    scattering = ScatteringSVM((28, 28))
    scattering.features(data)  # warm-up (the first call builds the filters' FFT plans)
    start = time.perf_counter()
    features = scattering.features(data)
    extract = time.perf_counter() - start
    start = time.perf_counter()
    scattering.svm_error(features, data.labels.numpy(), features, data.labels.numpy())
    svm = time.perf_counter() - start
    print(f"RFNN (32 wide) training: {train_rate:.0f} images/s (one epoch of {len(data):,} digits, batch 32, Adam); "
          f"Scattering2D J=2 features: {len(data) / extract:.0f} images/s; linear-SVM fit (+ predict) on those "
          f"features: {svm:.1f} s; features + SVM: {len(data) / (extract + svm):.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layer_steps(args.repeats)
    rfnn_vs_scattering(args.images)


if __name__ == "__main__":
    main()
