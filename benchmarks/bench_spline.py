"""Benchmark of the spline engine: all-class templates and partition codes vs one forward pass (and Captum).

Run: ``python benchmarks/bench_spline.py [--batch 256] [--repeats 7]``. Everything is measured in one process on
LeNet-5 (``cnnlens.nn.models.lenet5``, 10 classes, 32x32 inputs); the script prints the median times and ratios.
Targets (issue 3): templates <= 15x one forward and >= 2.5x faster than Captum Saliency looped over the 10
targets; partition_codes <= 1.3x one forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cnnlens.nn.models import lenet5
from cnnlens.spline import partition_codes, templates


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = lenet5(num_classes=10).eval()
    x = torch.rand(args.batch, 1, 32, 32)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    results = {"forward": _median_ms(forward, args.repeats)}
    results["templates (all 10 classes)"] = _median_ms(lambda: templates(model, x), args.repeats)
    results["partition_codes"] = _median_ms(lambda: partition_codes(model, x, batch_size=args.batch), args.repeats)
    try:
        from captum.attr import Saliency
    except ImportError:  # captum is a dev dependency
        Saliency = None
    if Saliency is not None:
        saliency = Saliency(model)

        def captum_loop() -> list[torch.Tensor]:
            return [saliency.attribute(x, target=c, abs=False) for c in range(10)]

        results["captum Saliency x10 targets"] = _median_ms(captum_loop, args.repeats)

    fwd = results["forward"]
    print(f"LeNet-5, batch {args.batch}, 10 classes, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ms in results.items():
        print(f"  {name:32s} {ms:9.2f} ms   {ms / fwd:6.2f}x forward")
    if "captum Saliency x10 targets" in results:
        speedup = results["captum Saliency x10 targets"] / results["templates (all 10 classes)"]
        print(f"  templates speed-up over captum loop: {speedup:.2f}x (target >= 2.5x)")
    print(f"  templates / forward: {results['templates (all 10 classes)'] / fwd:.2f}x (target <= 15x)")
    print(f"  partition_codes / forward: {results['partition_codes'] / fwd:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
