"""Hierarchical Attribute CNNs (001 ch. 5): the multidimensional attribute convolution against its explicit-sum
reference, and the training throughput of the CPU-sized HCNN against a plain CNN, measured in one process.

Run: ``python benchmarks/bench_hcnn.py [--repeats 3] [--threads N]``.

1. One layer 3 < j < J of the paper's CIFAR-10 network, batch 16: ``x_{j-1}`` of shape (16, 4, 8, 16, 32, 32),
   the marginal sum along ``v_{j-3}``, 16 filters of 3x3 x 7 x 11 (eq. 35), subsampling by 2 along the attributes.
   ``AttributeConv`` (one conv2d over the folded attributes) against ``cnnlens.testing.attribute_conv_reference``
   (the 693 filter taps summed one by one), forward only; and the factorised form of eq. 37 (Q = 32) next to them.
   Target (issue 13): >= 20x faster than the reference.
2. Forward + backward images/s at batch 32 on 28 x 28 digits: the CPU-sized HCNN (``get_model("hcnn")``, K = 8,
   J = 6) and its (+) variant against the plain CNN of the ``hcnn`` experiment (64 channels, the HCNN's depth).
"""

from __future__ import annotations

import argparse

import torch

from bench_spline import _interleaved_ms  # the timing loop of the spline benchmark (same folder)
from cnnlens.nn import AttributeConv, FactorisedAttributeConv, get_model
from cnnlens.nn.models import PlainCNN
from cnnlens.testing import attribute_conv_reference


def layer(repeats: int) -> None:
    torch.manual_seed(0)
    conv = AttributeConv((4, 8, 16), 16, (7, 11), marginal=True)
    factorised = FactorisedAttributeConv((4, 8, 16), 16, (7, 11), q=32, marginal=True).eval()
    x = torch.randn(16, 4, 8, 16, 32, 32)
    with torch.no_grad():
        err = float((conv(x) - attribute_conv_reference(x, conv.weight, marginal=True)
                     - conv.bias.view(-1, 1, 1)).abs().max())
        times = _interleaved_ms({
            "reference (explicit sums)": lambda: attribute_conv_reference(x, conv.weight, marginal=True),
            "AttributeConv": lambda: conv(x),
            "FactorisedAttributeConv Q=32": lambda: factorised(x),
        }, repeats)
    base, cpu_base = times["reference (explicit sums)"][0], times["reference (explicit sums)"][3]
    print(f"attribute convolution, paper CIFAR-10 layer (16, 4, 8, 16, 32, 32) -> (16, 4, 8, 16, 32, 32), "
          f"{torch.get_num_threads()} threads ({repeats} interleaved repeats, median / min ms); max |difference| "
          f"to the reference {err:.1e}:")
    for name, (med, low, _, cpu) in times.items():
        print(f"  {name:30s} {med:9.1f} / {low:9.1f} ms  speed-up {base / med:6.1f}x (CPU time "
              f"{cpu_base / cpu:6.1f}x)")


def models(repeats: int, batch: int) -> None:
    torch.manual_seed(0)
    nets = {"plain CNN (64 channels)": PlainCNN([[64], [64, 64], [64, 64]], 10, 1),
            "HCNN (K = 8, J = 6, Q = 9)": get_model("hcnn"), "HCNN (+)": get_model("hcnn", plus=True)}
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step(net: torch.nn.Module):  # noqa: ANN202
        return lambda: torch.nn.functional.cross_entropy(net(x), y).backward()

    times = _interleaved_ms({name: step(net) for name, net in nets.items()}, repeats)
    base, cpu_base = times["plain CNN (64 channels)"][0], times["plain CNN (64 channels)"][3]
    print(f"forward + backward, batch {batch}, 28x28 ({repeats} interleaved repeats):")
    for name, (med, low, _, cpu) in times.items():
        params = sum(p.numel() for p in nets[name].parameters())
        print(f"  {name:28s} {med:8.1f} / {low:8.1f} ms  {1e3 * batch / med:7.0f} images/s  {med / base:5.2f}x the "
              f"plain CNN's time (CPU time {cpu / cpu_base:5.2f}x; {params:,} parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    layer(args.repeats)
    models(max(args.repeats, 5), args.batch)


if __name__ == "__main__":
    main()
