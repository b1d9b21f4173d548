"""i-RevNet benchmark: memory-saving training step vs ordinary autograd, and the inverse vs the forward pass (issue 14).

Run: ``python benchmarks/bench_irevnet.py [--depths 16,32] [--batch 128] [--size 32] [--repeats 7] [--threads 1]``.
The model is ``cnnlens.nn.IRevNet`` as in the ``irevnet-memory`` experiment (bijective, S~ by 2, the blocks split
over two stages, S_j by 2 at the second; random weights, seed 0) on a batch of random 3 x size x size images.
For each depth it prints, for one SGD training step with ``memory_saving=True`` and ``False``:

* the peak of the tensor storages allocated during the step, counted op by op (``training_step_peak_mb`` of
  ``cnnlens.experiments.irevnet_memory``: a TorchDispatchMode with storage finalizers);
* the kernel's view in a fresh subprocess per case (Linux): the resident set after building the model and the batch
  is the baseline, the peak resident set (VmHWM, reset through /proc/self/clear_refs) after one step the peak;
* the step time (median of interleaved repeats; CPU time of the process beside it).

Then, in eval mode without autograd, ``model.inverse(Phi)`` against the forward pass that gives Phi. Targets:
memory saving <= 0.5x the autograd peak at 16+ blocks, its step time <= 2x, the inverse <= 1.5x the forward pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from bench_imagenet import _kib  # /proc/self/status reader of the ImageNet benchmark (same folder)
from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.experiments.irevnet_memory import MemoryConfig, _build, _training_step, training_step_peak_mb


def _batch(cfg: MemoryConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(cfg.batch, 3, cfg.size, cfg.size, generator=gen), torch.randint(0, 10, (cfg.batch,),
                                                                                         generator=gen)


def child(depth: int, saving: bool, cfg: MemoryConfig) -> None:
    """One training step in this fresh process; prints its peak resident set above the baseline (JSON)."""
    model = _build(depth, cfg, saving, 0)
    x, y = _batch(cfg)
    step = _training_step(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), x, y)
    base = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    step()
    print(json.dumps({"peak_extra": _kib("VmHWM") - base}))


def rss_peak_mb(depth: int, saving: bool, cfg: MemoryConfig, threads: int) -> float:
    cmd = [sys.executable, __file__, "--child", str(depth), str(int(saving)), "--batch", str(cfg.batch),
           "--size", str(cfg.size), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="16,32", help="numbers of blocks, comma-separated")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("DEPTH", "SAVING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = MemoryConfig(batch=args.batch, size=args.size, repeats=max(2, args.repeats))
    if args.child:
        child(int(args.child[0]), bool(int(args.child[1])), cfg)
        return
    x, y = _batch(cfg)
    print(f"IRevNet, batch {cfg.batch} x 3x{cfg.size}x{cfg.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); median of {args.repeats} interleaved repeats (CPU time in "
          "parentheses)")
    print(f"  {'blocks':>6} | {'op-level peak MB saving / autograd':>36} | {'RSS peak MB saving / autograd':>32} | "
          f"{'step ms saving / autograd':>34} | {'inverse / forward ms':>30}")
    for depth in (int(d) for d in args.depths.split(",")):
        ops = {saving: training_step_peak_mb(_build(depth, cfg, saving, 0), x, y) for saving in (True, False)}
        rss = {saving: rss_peak_mb(depth, saving, cfg, args.threads) for saving in (True, False)}
        steps = {}
        for saving in (True, False):
            model = _build(depth, cfg, saving, 0)
            steps["saving" if saving else "autograd"] = _training_step(
                model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), x, y)
        t = _interleaved_ms(steps, args.repeats)
        (sav, *_, sav_cpu), (auto, *_, auto_cpu) = t["saving"], t["autograd"]
        model = _build(depth, cfg, True, 0).eval()
        with torch.no_grad():
            phi = model.phi(x)
            inv_t = _interleaved_ms({"forward": lambda m=model: m(x), "inverse": lambda m=model, p=phi: m.inverse(p)},
                                    args.repeats)
            err = float((model.inverse(phi) - x).norm() / x.norm())
        (fwd, *_, fwd_cpu), (inv, *_, inv_cpu) = inv_t["forward"], inv_t["inverse"]
        print(f"  {depth:>6} | {ops[True]:>7.1f} / {ops[False]:>7.1f} = {ops[True] / ops[False]:.2f}x (<= 0.5) | "
              f"{rss[True]:>6.1f} / {rss[False]:>6.1f} = {rss[True] / rss[False]:.2f}x | "
              f"{sav:>6.0f} / {auto:>6.0f} = {sav / auto:.2f}x ({sav_cpu / auto_cpu:.2f}x) (<= 2) | "
              f"{inv:>5.1f} / {fwd:>5.1f} = {inv / fwd:.2f}x ({inv_cpu / fwd_cpu:.2f}x) (<= 1.5), "
              f"rel. error {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
