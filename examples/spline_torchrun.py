"""Dataset-wide spline work on several processes: partition codes, templates and nearest neighbours under torchrun.

    torchrun --nproc_per_node=2 examples/spline_torchrun.py [--out DIR]

Every rank builds the same model and data set (same seed). ``partition_codes`` and ``templates`` over the Dataset
each compute the rank's DistributedSampler shard; ``nearest_neighbors`` searches the rank's part of the database. Every
rank receives all results in the original order, the same tensors one process computes (``python
examples/spline_torchrun.py`` runs it in one process). With ``--out DIR`` each rank saves them to ``DIR/rank{r}.pt``.
On GPUs the gathers run on the GPU with NCCL.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from cnnlens.nn.models import lenet5
from cnnlens.spline import nearest_neighbors, partition_codes, templates


def model_and_data() -> tuple[torch.nn.Module, TensorDataset]:
    """The same LeNet-5 and 101 random 1x32x32 images with labels on every rank."""
    torch.manual_seed(0)
    model = lenet5().eval()
    return model, TensorDataset(torch.rand(101, 1, 32, 32), torch.randint(0, 10, (101,)))


def run(model: torch.nn.Module, data: TensorDataset) -> dict[str, torch.Tensor]:
    """Codes of every layer, templates of classes 0 and 3, and the 5 nearest neighbours of every sample."""
    codes = partition_codes(model, data, batch_size=16)
    tpl = templates(model, data, classes=[0, 3], chunk_size=16)
    indices, distances = nearest_neighbors(codes, codes, k=5, layer="act3")
    results = {f"codes/{name}": code.data for name, code in codes.items()}
    results.update(templates=tpl.templates, biases=tpl.biases, outputs=tpl.outputs, neighbors=indices,
                   distances=distances)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="save each rank's results to OUT/rank{r}.pt")
    args = parser.parse_args(argv)
    launched = "RANK" in os.environ  # set by torchrun
    owned = launched and not dist.is_initialized()
    if owned:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        results = run(*model_and_data())
        if rank == 0:
            print(f"{world} process(es): {len(results['neighbors'])} samples, templates "
                  f"{tuple(results['templates'].shape)}, nearest neighbours of sample 0: "
                  f"{results['neighbors'][0].tolist()}")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(results, args.out / f"rank{rank}.pt")
    finally:
        if owned:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
