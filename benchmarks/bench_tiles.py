"""Size and speed of the hand-built networks of 002 (Thms. 1-2) against the paper's trained architecture.

For image classes of random 8 x 8 tiles (quantised to 8 grey levels, non-rectangular supports) and of 28 x 28 digit
tiles, as a function of the number of tiles and of the input size, the table lists for each network the number of
parameters, the number of hidden units per input (outputs of all ReLU layers) and the forward time per input, and
the ratios to the trained architecture of sec. 6.2 (one conv layer of 12 filters 5 x 5 + FC), all measured in
this one process.

Run: ``python benchmarks/bench_tiles.py`` (add ``--quick`` for a smaller grid). Single-threaded, so the ratios do
not depend on the machine's load from other processes' threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from cnnlens.data import load
from cnnlens.tiles import (
    FeatureTile,
    Image,
    ImageClass,
    deep_construction,
    hidden_units,
    shallow_construction,
    single_conv_net,
)


def random_class(num_tiles: int, side: int, seed: int) -> ImageClass:
    """``num_tiles`` random ``side x side`` tiles spread over two images."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(num_tiles):
        values = np.round(rng.random((side, side)) * 8) / 8
        values[rng.random((side, side)) < 0.3] = 0
        tiles.append(FeatureTile(values, 0.05 * side * side))
    return ImageClass([Image(tiles[: max(1, num_tiles // 2)], "a"), Image(tiles[max(1, num_tiles // 2) :], "b")])


def digit_class(per_class: int) -> ImageClass:
    """Ten images of ``per_class`` mnist5k digits quantised to 8 grey levels (the tiles-digits experiment)."""
    source = load("mnist5k", "train")
    images = []
    for label in range(10):
        items = torch.nonzero(source.labels == label).flatten()[:per_class]
        images.append(Image([FeatureTile(torch.round(source.images[i, 0].double() * 8) / 8, 4.0) for i in items],
                            str(label)))
    return ImageClass(images)


def forward_time(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds per input of ``model(x)`` after one warm-up call."""
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) / len(x))
    return statistics.median(times)


def measure(label: str, image_class: ImageClass, size: int, batch: int, repeats: int) -> list[dict[str, object]]:
    x = torch.rand(batch, 1, size, size)
    builders = {
        "trained-arch": lambda: single_conv_net(size, 12, 5, image_class.num_classes),
        "shallow-linear": lambda: shallow_construction(image_class, size, hidden="linear"),
        "shallow-conv": lambda: shallow_construction(image_class, size, hidden="conv"),
        "deep": lambda: deep_construction(image_class, size),
    }
    rows = []
    for name, build in builders.items():
        start = time.perf_counter()
        try:
            model = build()
        except ValueError as err:  # the dense window layer does not fit in memory
            rows.append({"case": label, "network": name, "note": str(err).split(";")[0]})
            continue
        built = time.perf_counter() - start
        rows.append({"case": label, "network": name, "params": sum(p.numel() for p in model.parameters()),
                     "hidden": hidden_units(model, x), "build_s": built,
                     "us_per_input": 1e6 * forward_time(model, x, repeats)})
    base = rows[0]
    for row in rows:
        if "params" in row:
            row["params_ratio"] = row["params"] / base["params"]
            row["hidden_ratio"] = row["hidden"] / base["hidden"]
            row["time_ratio"] = row["us_per_input"] / base["us_per_input"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases: list[tuple[str, ImageClass, int]] = []
    tile_counts = (2, 8) if args.quick else (2, 8, 32)
    sizes = (16, 32) if args.quick else (16, 32, 64)
    for count in tile_counts:
        cases.append((f"{count} tiles 8x8, 32x32", random_class(count, 8, count), 32))
    for size in sizes:
        cases.append((f"8 tiles 8x8, {size}x{size}", random_class(8, 8, 8), size))
    cases.append(("10 digits 28x28, 40x40", digit_class(1), 40))
    if not args.quick:
        cases.append(("30 digits 28x28, 40x40", digit_class(3), 40))
    header = (f"{'case':<24} {'network':<15} {'params':>10} {'hidden/input':>13} {'us/input':>10} "
              f"{'params x':>9} {'hidden x':>9} {'time x':>8}")
    print(header)
    print("-" * len(header))
    for label, image_class, size in cases:
        batch = 4 if "digits" in label else 32
        for row in measure(label, image_class, size, batch, repeats=3 if "digits" in label else 5):
            if "params" not in row:
                print(f"{row['case']:<24} {row['network']:<15} {row['note']}")
                continue
            print(f"{row['case']:<24} {row['network']:<15} {row['params']:>10,} {row['hidden']:>13,} "
                  f"{row['us_per_input']:>10.1f} {row['params_ratio']:>9.2f} {row['hidden_ratio']:>9.1f} "
                  f"{row['time_ratio']:>8.1f}")


if __name__ == "__main__":
    main()
