"""Scale-out on torch.distributed (issue 10, sec. 5): ``torchrun --nproc_per_node=2`` on the CPU with gloo gives,
on every rank, the partition codes, templates and nearest neighbours one process computes on the same data set (the
saved tensors are compared bit for bit), and ranks that disagree get an error naming what differs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.distributed
from torch.utils.data import Subset, TensorDataset

from cnnlens.spline import nearest_neighbors, partition_codes, templates

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "spline_torchrun.py"

#: Run by each of the two ranks: the README's example in this process group, then edge cases and disagreements.
WORKER = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset, TensorDataset

from cnnlens.spline import nearest_neighbors, partition_codes, templates

sys.path.insert(0, sys.argv[2])
import spline_torchrun as example

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
example.main(["--out", str(out)])
model, data = example.model_and_data()
codes = partition_codes(model, data, batch_size=16)
extra = {
    "small_database": nearest_neighbors(codes["act2"], codes["act2"][:3], k=3)[0],  # parts of 1 and 2 codes, k = 3
    "one_sample": partition_codes(model, Subset(data, [7]))["act1"].data,  # rank 1 holds only a wrapped duplicate
    "tensor": templates(model, data.tensors[0][:10], classes=[1], chunk_size=4, distributed=True).templates,
    "local": partition_codes(model, data.tensors[0][rank:rank + 3])["act3"].data,  # a Tensor stays on its rank
}
errors = {}
for name, call in {
    "length": lambda: partition_codes(model, TensorDataset(data.tensors[0][:50 + rank])),
    "model": lambda: templates(example.lenet5().eval() if rank else model, data, classes=[0]),
    "database": lambda: nearest_neighbors(codes["act3"], codes["act3"][rank:], k=2),
}.items():
    try:
        call()
    except ValueError as err:
        errors[name] = str(err)
shared = templates(model, data, classes=[0, 3])  # a Dataset under torchrun: sharded, then gathered
flags = (shared.identity_error, shared.bias_method, shared.bias_fallback, shared.path)
torch.save({"extra": extra, "errors": errors, "flags": flags}, out / f"checks{rank}.pt")
dist.destroy_process_group()
"""


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spline_torchrun", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build has no torch.distributed with gloo")
def test_torchrun_two_processes_give_the_results_of_one_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(out), str(EXAMPLE.parent)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es): 101 samples" in proc.stdout

    example = _example()
    model, data = example.model_and_data()
    reference = example.run(model, data)  # one process: no process group here
    codes = partition_codes(model, data, batch_size=16)
    expected = {
        "small_database": nearest_neighbors(codes["act2"], codes["act2"][:3], k=3)[0],
        "one_sample": partition_codes(model, Subset(data, [7]))["act1"].data,
        "tensor": templates(model, data.tensors[0][:10], classes=[1], chunk_size=4).templates,
    }
    for rank in (0, 1):
        saved = torch.load(out / f"rank{rank}.pt")
        assert saved.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(saved[key], value), (rank, key)
        checks = torch.load(out / f"checks{rank}.pt")
        for key, value in expected.items():
            assert torch.equal(checks["extra"][key], value), (rank, key)
        local = partition_codes(model, data.tensors[0][rank:rank + 3])["act3"].data
        assert torch.equal(checks["extra"]["local"], local)
        error, method, fallback, path = checks["flags"]  # how the shards were computed and checked, gathered
        assert error is not None and error <= 1e-4 and method == "swept" and fallback is None and path == "transposed"
        errors = checks["errors"]
        assert errors.keys() == {"length", "model", "database"}, errors
        assert "partition_codes under torch.distributed: the 2 ranks disagree on the data set" in errors["length"]
        assert "rank 0: 50 samples" in errors["length"] and "rank 1: 51 samples" in errors["length"]
        assert "templates under torch.distributed: the 2 ranks disagree on the model" in errors["model"]
        assert "nearest_neighbors under torch.distributed: the 2 ranks disagree on the database" in errors["database"]
        assert "rank 0: 101 codes of layer 'act3'" in errors["database"]
        assert "distributed=False" in errors["database"]


def test_example_runs_in_one_process(capsys):
    _example().main([])
    assert "1 process(es): 101 samples, templates (101, 2, 1, 32, 32)" in capsys.readouterr().out


def test_templates_over_a_dataset_equal_templates_over_its_tensor():
    torch.manual_seed(0)
    model = _example().lenet5().eval()
    x = torch.rand(21, 1, 32, 32)
    data = TensorDataset(x, torch.zeros(21, dtype=torch.long))
    by_items = templates(model, data, classes=[2, 5], chunk_size=8)
    by_tensor = templates(model, x, classes=[2, 5], chunk_size=8)
    for field in ("templates", "biases", "inner_products", "outputs", "classes"):
        assert torch.equal(getattr(by_items, field), getattr(by_tensor, field)), field
    assert by_items.path == by_tensor.path == "transposed"
    assert by_items.bias_method == by_tensor.bias_method == "swept"
    assert by_items.identity_error is not None and by_items.identity_error <= 1e-4


def test_distributed_true_without_a_process_group_says_what_to_do():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()).eval()
    with pytest.raises(ValueError, match="distributed=True needs an initialised process group.*torchrun"):
        partition_codes(model, torch.rand(4, 3), distributed=True)
