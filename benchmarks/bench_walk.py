"""Benchmark of the segment walk: regions per second and cost per region against one forward pass.

Run: ``python benchmarks/bench_walk.py [--models lenet5 resnet18] [--batch-sizes 1 16 auto] [--repeats 3]``
(``auto``: ``batch_size=None``, the adaptive batch). Each model
walks a piece of the segment between two random 32x32 inputs (``--fraction`` of it, around its middle) with
:func:`cnnlens.spline.regions_on_segment`; the cost of one region is compared with one forward pass of one sample
in float64 (the dtype of the walk, no capture, no autograd graph), timed round-robin with the walks
(``_interleaved_ms`` of ``bench_spline.py``: each repeat times 20 forward passes, then one walk per batch size; the
medians over the repeats are compared). Times are CPU times of the process (``time.process_time``), so that other
processes on a shared machine do not skew the ratios as much. Target (issue 10): at most 2x a forward pass per
region. The last lines split one round of the walk (``--batch-sizes``' largest
fixed size) into its parts: the paired pass (the points and the points further along the path in one batch, each
nonlinearity taking the points' pieces on both halves), and the boundary steps, with the recording pass and the
replay the paired pass replaces for comparison; and give the cost of a round per point at several batch sizes (the
walk reads a few percent more points than it finds regions).

``resnet18`` is the torchvision layout (7x7 stem, max-pool, 4 stages of 2 basic blocks, 11.2 M parameters) written
out here, as torchvision is not a dependency.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.nn.models import lenet5, small_resnet
from cnnlens.spline import regions_on_segment
from cnnlens.spline._segment import _Reader


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 in the torchvision layout."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(_Basic(cin, width, 1 if i == 0 else 2), _Basic(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


#: name -> (builder, input shape, default fraction of the segment walked: a few hundred regions each)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], float]] = {
    "lenet5": (lambda: lenet5(num_classes=10), (1, 32, 32), 0.3),
    "small_resnet": (lambda: small_resnet(num_classes=10), (1, 32, 32), 0.05),
    "resnet18": (lambda: ResNet18(num_classes=10), (3, 32, 32), 0.02),
}


def _round_parts(model: nn.Module, a: Tensor, direction: Tensor, points: int, repeats: int) -> dict[str, float]:
    """CPU milliseconds (medians, interleaved) of the parts of one round of the walk on ``points`` points (as in
    ``_Reader.read``): the paired pass, the boundary steps, and the two passes (recording, replay) that the paired
    pass replaces."""
    reader = _Reader(model, a, direction)
    x = reader.points(torch.linspace(0.1, 0.9, points).tolist())
    entries = reader.passes(x)
    if not reader.paired:
        raise ValueError("the model needs two passes (control flow on values); the breakdown assumes a paired pass")
    two = _Reader(model, a, direction)
    two.paired = False
    timed = _interleaved_ms({"paired pass": lambda: reader.passes(x), "steps": lambda: reader.steps(*entries),
                             "two passes": lambda: two.passes(x)}, repeats)
    return {name: cpu for name, (_, _, _, cpu) in timed.items()}


def _batch_size(text: str) -> int | None:
    return None if text == "auto" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "small_resnet", "resnet18"],
                        choices=sorted(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=_batch_size, default=[1, 16, None],
                        help="fronts per pass; auto: the adaptive batch (batch_size=None)")
    parser.add_argument("--repeats", type=int, default=3, help="walks per setting (the median is printed)")
    parser.add_argument("--fraction", type=float, default=None, help="fraction of the segment walked (default: "
                        "per model, a few hundred regions)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64; median of {args.repeats} walks")
    for name in args.models:
        build, shape, default_fraction = MODELS[name]
        torch.manual_seed(0)
        model = build().double().eval()
        x0, x1 = torch.rand(2, *shape, dtype=torch.float64)
        fraction = args.fraction or default_fraction
        start, end = x0 + (0.5 - fraction / 2) * (x1 - x0), x0 + (0.5 + fraction / 2) * (x1 - x0)
        one = x0[None]

        def forward() -> Tensor:
            with torch.no_grad():
                return model(one)  # noqa: B023 - called in this iteration only

        regions_on_segment(model, start, start + 1e-3 * (end - start), progress=False)  # warm-up
        counts: dict[int | None, int] = {}

        def walk(g: int | None) -> Callable[[], None]:
            def run() -> None:
                counts[g] = regions_on_segment(model, start, end, batch_size=g,  # noqa: B023 - this iteration's
                                               progress=False).num_regions
            return run

        fns: dict[str, Callable[[], object]] = {"forward x20": lambda: [forward() for _ in range(20)]}
        fns.update({f"walk {g}": walk(g) for g in args.batch_sizes})
        timed = _interleaved_ms(fns, args.repeats)  # round-robin: a load spike hits every candidate alike
        fwd = timed["forward x20"][3] / 20
        params = sum(p.numel() for p in model.parameters())
        print(f"{name} ({params / 1e6:.2f} M parameters), input {shape}, {fraction:g} of the segment between two "
              f"random inputs; one forward pass of one sample: {fwd:.3f} ms CPU (wall, 20 passes: median "
              f"{timed['forward x20'][0]:.2f} ms, range {timed['forward x20'][1]:.2f}-{timed['forward x20'][2]:.2f})")
        for g in args.batch_sizes:
            wall, low, high, ms = timed[f"walk {g}"]
            per = ms / counts[g]
            print(f"  batch_size={g or 'auto':<4} {counts[g]:6d} regions in {ms / 1e3:7.2f} s CPU: "
                  f"{1e3 / per:8.1f} regions/s, {per:8.3f} ms per region = {per / fwd:5.2f}x a forward pass "
                  f"(target <= 2x; wall median {wall / 1e3:.2f} s, range {low / 1e3:.2f}-{high / 1e3:.2f})")
        if len(set(counts.values())) > 1:
            print(f"  region counts differ between batch sizes: {counts}")
        g = max((g for g in args.batch_sizes if g is not None), default=16)
        parts = _round_parts(model, x0[None], (x1 - x0)[None], g, max(3, args.repeats))
        two = parts.pop("two passes")
        total = sum(parts.values())
        split = ", ".join(f"{k} {v / g:.2f} ms ({100 * v / total:.0f}%)" for k, v in parts.items())
        pair = x0.expand(2 * g, *shape)
        batched = _interleaved_ms({"plain": lambda: model(pair)}, 5)["plain"][3] / g  # noqa: B023 - called here
        print(f"  one round on {g} points, per point: {split}; {total / g / fwd:.2f}x a forward pass of one sample "
              f"(a plain forward pass of the {2 * g} samples: {batched:.2f} ms per point; the recording pass and "
              f"the replay the paired pass replaces: {two / g:.2f} ms per point)")
        curve = {}
        for n in (1, 4, 16, 64):
            at_n = _round_parts(model, x0[None], (x1 - x0)[None], n, 3)
            curve[n] = (at_n["paired pass"] + at_n["steps"]) / n
        print("  one round per point, as a multiple of a forward pass: "
              + ", ".join(f"{n} points {ms / fwd:.2f}x" for n, ms in curve.items()))

if __name__ == "__main__":
    with torch.no_grad():  # the forward passes timed here build no autograd graph, as the walk's do not
        main()
