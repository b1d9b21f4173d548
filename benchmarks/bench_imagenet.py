"""ImageNet-scale benchmark of the spline engine: ResNet-18, 3x224x224, 1000 classes, batch 1 (issue 10, sec. 3).

Run: ``python benchmarks/bench_imagenet.py [--ks 1,10,100,1000] [--repeats 3] [--threads N] [--float64]``.
The model is ``cnnlens.nn.models.resnet18`` (random weights, seed 0, eval mode) and x one random 3x224x224 input.
For each number of classes K it compares, in the same process and interleaved, ``affine_map(model, x,
classes=range(K))`` with the baseline a user would write: one forward pass with autograd, then K calls of
``torch.autograd.grad(y[:, c].sum(), x, retain_graph=True)`` writing the rows into a preallocated (1, K, D) tensor.
Peak memory is measured for each case in a fresh subprocess (Linux): the resident set after building the model and
running one forward pass is the baseline, the kernel's peak counter (VmHWM, reset through /proc/self/clear_refs)
after the case gives the peak; the table reports the extra and its ratio to the size of A (K * D * itemsize).
Also printed: ``partition_codes`` / one forward pass at this shape, and with ``--float64`` the full map in float64
(time and peak memory). Targets: cnnlens time <= the loop at every K; peak extra of the full map <= 2x A;
partition_codes <= 1.3x a forward pass.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.nn.models import resnet18
from cnnlens.spline import affine_map, partition_codes

SHAPE = (1, 3, 224, 224)


def build(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = resnet18(num_classes=1000).eval().to(dtype)
    return model, torch.randn(*SHAPE, dtype=dtype)


def autograd_loop(model: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The rows 0..k-1 of A by one forward and k backward passes of plain autograd."""
    xi = x.clone().requires_grad_(True)
    y = model(xi)
    out = x.new_empty(x.shape[0], k, x[0].numel())
    for c in range(k):
        (g,) = torch.autograd.grad(y[:, c].sum(), xi, retain_graph=True)
        out[:, c] = g.flatten(1)
    return out


def cnnlens_map(model: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    return affine_map(model, x, classes=range(k)).A


CASES: dict[str, Callable[[torch.nn.Module, torch.Tensor, int], object]] = {
    "loop": autograd_loop, "cnnlens": cnnlens_map,
    "codes": lambda model, x, k: partition_codes(model, x),
}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def child(case: str, k: int, dtype: str, threads: int | None) -> None:
    """Run one case once in this fresh process and print its peak memory above the baseline (JSON)."""
    if threads is not None:
        torch.set_num_threads(threads)
    model, x = build(getattr(torch, dtype))
    with torch.no_grad():
        model(x)
    base = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    start = time.perf_counter()
    CASES[case](model, x, k)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_extra": _kib("VmHWM") - base, "seconds": seconds}))


def peak(case: str, k: int, dtype: str, threads: int | None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", case, str(k), dtype]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,10,100,1000", help="numbers of classes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats at K >= 100 (five times as many below, one at K >= 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--float64", action="store_true", help="also the full map in float64 (minutes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "K", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2], args.threads)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    model, x = build(torch.float32)
    d = x[0].numel()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    _interleaved_ms({"forward": forward, "loop": lambda: autograd_loop(model, x, 10),
                     "cnnlens": lambda: cnnlens_map(model, x, 10), "codes": lambda: partition_codes(model, x)}, 1,
                    warmup=False)  # the warm-up of every case
    print(f"ResNet-18, {'x'.join(map(str, SHAPE))}, 1000 classes, float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved repeats ({5 * args.repeats} at "
          "K < 100, 1 at K >= 1000)")
    codes = _interleaved_ms({"forward": forward, "codes": lambda: partition_codes(model, x)}, max(5, args.repeats),
                            warmup=False)
    (fwd, *_, fwd_cpu), (cod, *_, cod_cpu) = codes["forward"], codes["codes"]
    print(f"  forward {fwd:.1f} ms, partition_codes {cod:.1f} ms: {cod / fwd:.2f}x forward "
          f"(CPU time {cod_cpu / fwd_cpu:.2f}x; target <= 1.3x)")
    print("  wall-clock seconds (CPU seconds of the process in parentheses, sturdier on a shared machine)")
    header = (f"  {'K':>5} | {'loop s':>15} | {'cnnlens s':>15} | {'cnnlens/loop':>14} | {'max rel diff':>12}"
              + ("" if args.no_memory else f" | {'A MB':>7} | {'loop peak MB':>12} | {'cnnlens peak MB':>15} | "
                                             f"{'cnnlens peak/A':>14}"))
    print(header)
    for k in ks:
        ref = autograd_loop(model, x, k)
        diff = float((cnnlens_map(model, x, k) - ref).abs().max() / ref.abs().max())
        del ref
        repeats = 1 if k >= 1000 else args.repeats if k >= 100 else 5 * args.repeats  # short runs vary most
        t = _interleaved_ms({"loop": lambda k=k: autograd_loop(model, x, k),
                             "cnnlens": lambda k=k: cnnlens_map(model, x, k)}, repeats, warmup=False)
        (loop, *_, loop_cpu), (ours, *_, ours_cpu) = ((v / 1e3 for v in t[name]) for name in ("loop", "cnnlens"))
        line = (f"  {k:>5} | {loop:>6.3f} ({loop_cpu:>6.3f}) | {ours:>6.3f} ({ours_cpu:>6.3f}) | "
                f"{ours / loop:>5.2f}x ({ours_cpu / loop_cpu:.2f}x) | {diff:>12.1e}")
        if not args.no_memory:
            a_mb = k * d * 4 / 1e6
            loop_mb = peak("loop", k, "float32", args.threads)["peak_extra"] / 1e6
            ours_mb = peak("cnnlens", k, "float32", args.threads)["peak_extra"] / 1e6
            line += f" | {a_mb:>7.1f} | {loop_mb:>12.1f} | {ours_mb:>15.1f} | {ours_mb / a_mb:>13.2f}x"
        print(line, flush=True)
    if args.float64:
        run = peak("cnnlens", 1000, "float64", args.threads)
        a_mb = 1000 * d * 8 / 1e6
        print(f"  float64 full map (K=1000): {run['seconds']:.1f} s, peak extra {run['peak_extra'] / 1e6:.0f} MB = "
              f"{run['peak_extra'] / 1e6 / a_mb:.2f}x A ({a_mb:.0f} MB)")
        loop = peak("loop", 1000, "float64", args.threads)
        print(f"  float64 autograd loop (K=1000): {loop['seconds']:.1f} s, "
              f"peak extra {loop['peak_extra'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
