"""Cost of the independent identity check of ``affine_map`` / ``templates`` (B propagated, ``A x + B == f(x)``).

Run: ``python benchmarks/bench_exactness.py [--batch 256] [--repeats 7]``. On LeNet-5 (10 classes, 32x32), in one
process and interleaved: one forward pass (the baseline), ``templates`` as shipped (B summed over the biases in the
reverse sweep, eq. 7 of 000, and checked), ``templates`` with B replayed at input 0 instead (the propagation used
when a constant's origin is unknown; its sweep still sums B, which is then discarded), ``templates`` with B computed
as ``f(x) - A x`` (no check: what the engine did before issue 10), and the replay that propagates B alone. Prints
median / min times and ratios.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import cnnlens.spline._affine as affine_module
from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.nn.models import lenet5
from cnnlens.spline import templates
from cnnlens.spline._capture import capture, run_captured
from cnnlens.spline._exactness import Offset, offset_of, replay_offset


def _unchecked_offset(model, x, a, y, rows, cap, swept=None) -> Offset:  # noqa: ANN001 - the signature of offset_of
    """B = f(x) - A x: no replay, no check."""
    f = y.detach()[:, rows]
    return Offset(f - torch.einsum("nrd,nd->nr", a, x.reshape(x.shape[0], -1)), None, None, True)


def _replayed_offset(model, x, a, y, rows, cap, swept=None) -> Offset:  # noqa: ANN001 - the signature of offset_of
    """B replayed at input 0 (the swept B is not used)."""
    return offset_of(model, x, a, y, rows, cap)


def _with_offset(fn: Callable[..., Offset], model: torch.nn.Module, x: torch.Tensor) -> object:
    """``templates`` with ``offset_of`` replaced by ``fn``."""
    shipped = affine_module.offset_of
    affine_module.offset_of = fn
    try:
        return templates(model, x)
    finally:
        affine_module.offset_of = shipped


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
    with torch.no_grad(), capture(model) as rec:
        run_captured(rec, model, x)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    fns: dict[str, Callable[[], object]] = {
        "forward": forward,
        "templates (B swept, checked)": lambda: templates(model, x),
        "templates (B replayed, checked)": lambda: _with_offset(_replayed_offset, model, x),
        "templates (B = f(x) - A x)": lambda: _with_offset(_unchecked_offset, model, x),
        "replay propagating B": lambda: replay_offset(model, x, rec.entries, rec.decisions),
    }
    results = _interleaved_ms(fns, args.repeats)
    print(f"LeNet-5, batch {args.batch}, 10 classes, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats (median / min)")
    fwd_med, fwd_min, _, _ = results["forward"]
    for name, (med, low, _, _) in results.items():
        print(f"  {name:36s} {med:9.2f} / {low:9.2f} ms   {med / fwd_med:6.2f}x / {low / fwd_min:6.2f}x forward")
    unc = results["templates (B = f(x) - A x)"]
    for how in ("swept", "replayed"):
        chk = results[f"templates (B {how}, checked)"]
        print(f"  cost of the check with B {how}: {chk[0] / unc[0]:.2f}x / {chk[1] / unc[1]:.2f}x templates without "
              f"it ({chk[0] - unc[0]:+.1f} ms median)")
    shipped = templates(model, x)
    print(f"  identity error of this call: {shipped.identity_error:.2g} (B {shipped.bias_method})")


if __name__ == "__main__":
    main()
