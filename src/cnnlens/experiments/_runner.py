"""Run a registered experiment into a run folder: metrics.json, figures/*.png, result.json, report.html."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from matplotlib import pyplot as plt

from ..report import render_index, render_run
from ..train import seed_everything
from ._registry import Experiment, ExperimentResult, RunContext, get_experiment

__all__ = ["run_experiment"]


def _validate_metrics(exp: Experiment, metrics: dict[str, Any]) -> dict[str, float]:
    missing = [k for k in exp.metrics if k not in metrics]
    if missing:
        raise ValueError(f"experiment {exp.name!r} did not return the metrics it declares: {missing}")
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            flat[key] = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"metric {key!r} of {exp.name!r} must be a number, got {type(value).__name__}") from err
    return flat


def run_experiment(
    name: str,
    out: str | Path = "runs",
    *,
    quick: bool = False,
    seed: int = 0,
    data_dir: str | Path | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Run experiment ``name`` into ``out/name`` and return that folder.

    The folder receives ``result.json`` (claim, configuration, metrics, notes, status, timing), ``metrics.json``
    (flat numeric metrics), ``figures/*.png`` and ``report.html``; ``out/index.html`` lists every run in ``out``.
    A failing experiment still writes its folder, with status "failed" and the traceback, before re-raising.
    ``overrides`` replaces fields of the chosen configuration.
    """
    exp = get_experiment(name)
    cfg = exp.config(quick)
    if overrides:
        cfg = replace(cfg, **overrides)
    run_dir = Path(out) / name
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").unlink(missing_ok=True)
    run_key = hashlib.sha256(json.dumps([asdict(cfg), seed, str(data_dir)], sort_keys=True).encode()).hexdigest()[:10]
    ctx = RunContext(run_dir, seed, Path(data_dir) if data_dir is not None else None, quick, progress, run_key)
    record: dict[str, Any] = {
        "name": exp.name, "claim": exp.claim, "paper": exp.paper, "mode": "quick" if quick else "full",
        "seed": seed, "data_dir": str(data_dir) if data_dir is not None else None, "config": asdict(cfg),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        "metrics": {}, "figures": [], "notes": "", "status": "running",
    }
    start = time.perf_counter()
    seed_everything(seed)
    try:
        result = exp.fn(cfg, ctx)
        if not isinstance(result, ExperimentResult):
            raise TypeError(f"experiment {name!r} must return an ExperimentResult, got {type(result).__name__}")
        record["metrics"] = _validate_metrics(exp, result.metrics)
        record["notes"] = result.notes
        for fig_name, fig in result.figures.items():
            path = Path("figures") / f"{fig_name}.png"
            fig.savefig(run_dir / path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            record["figures"].append(str(path))
        record["status"] = "ok"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = "".join(traceback.format_exception(err))
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 2)
        record["log"] = ctx.log_lines
        finite = {k: (v if math.isfinite(v) else None) for k, v in record["metrics"].items()}
        (run_dir / "metrics.json").write_text(json.dumps(finite, indent=2, sort_keys=True))
        (run_dir / "result.json").write_text(json.dumps({**record, "metrics": finite}, indent=2, default=str))
        render_run(run_dir)
        render_index(run_dir.parent)
    return run_dir
