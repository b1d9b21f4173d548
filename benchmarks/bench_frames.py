"""Frames and dynamic steerable blocks (001 sec. 4.3-4.4): training-step cost against plain convolutions.

Run: ``python benchmarks/bench_frames.py [--repeats 9] [--threads N]``.

1. A training step (forward + backward) of ``FrameConv2d`` (16 -> 32 channels, 3x3, batch 128, 28x28) over each
   frame of Fig. 9 (pixel, Gaussian derivatives, framelets, naive) against ``nn.Conv2d`` of the same shape
   (issue 12's target: <= 1.2x), and of the whole ``frame-resnet`` (width 16, batch 64, 28x28) per frame schedule
   against its pixel arm (the network of the ``frames-compare`` experiment, Table 6 of 001).
2. A training step of a ``DynamicSteerableBlock`` (eq. 29: frame responses, the tanh pose network, steering,
   canonical 1x1 weights) against its static counterpart ``to_static()`` (a ``BasisConv2d`` over the same frame,
   eq. 24) and a ``StaticResidualBlock`` (eq. 28) of the same channels (ratios reported; no target), with a
   rotation pose (the default), a scale pose and both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.nn import FRAMES, DynamicSteerableBlock, FrameConv2d, StaticResidualBlock, frame_resnet


def _step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()

    return run


def _print(title: str, results: dict[str, tuple[float, float, float, float]], base: str) -> None:
    print(title)
    med0, _, _, cpu0 = results[base]
    for name, (med, low, _, cpu) in results.items():
        print(f"  {name:42s} {med:8.2f} / {low:8.2f} ms, CPU {cpu:8.2f} ms   {med / med0:5.2f}x "
              f"(CPU {cpu / cpu0:5.2f}x) {base}")


def frame_layers(repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 16, 28, 28)
    fns = {"nn.Conv2d": _step(nn.Conv2d(16, 32, 3, padding=1, bias=False), x)}
    fns.update({f"FrameConv2d {name}": _step(FrameConv2d(16, 32, name, bias=False), x) for name in FRAMES})
    _print(f"training step, 16 -> 32 channels, 3x3, batch 128, 28x28, {torch.get_num_threads()} threads ({repeats} "
           "interleaved repeats; wall median / min, CPU median):", _interleaved_ms(fns, repeats), "nn.Conv2d")
    x = torch.randn(64, 1, 28, 28)
    nets = {f"frame-resnet {kind}": _step(frame_resnet(frames=kind, width=16), x) for kind in ("pixel", "image",
                                                                                              "naive")}
    _print("training step of frame-resnet (width 16, 7 3x3 convolutions), batch 64, 28x28:",
           _interleaved_ms(nets, repeats), "frame-resnet pixel")


def dynamic_blocks(repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 16, 64, 64)
    block = DynamicSteerableBlock(16, 16, order=2, pose_width=16, residual=True)
    fns = {"StaticResidualBlock(16), two 3x3 convs": _step(StaticResidualBlock(16), x),
           "BasisConv2d (the block's to_static())": _step(block.to_static(), x),
           "DynamicSteerableBlock order 2, pose 16": _step(block, x)}
    for steering in ("scale", "both"):
        other = DynamicSteerableBlock(16, 16, order=2, pose_width=16, residual=True, steering=steering)
        fns[f"DynamicSteerableBlock order 2, pose 16, {steering}"] = _step(other, x)
    _print("training step, 16 -> 16 channels, batch 16, 64x64:", _interleaved_ms(fns, repeats),
           "StaticResidualBlock(16), two 3x3 convs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frame_layers(args.repeats)
    dynamic_blocks(args.repeats)


if __name__ == "__main__":
    main()
