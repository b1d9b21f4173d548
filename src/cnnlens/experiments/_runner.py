"""Run a registered experiment into a run folder and judge its claims.

A run folder holds ``result.json`` (configuration, metrics, notes, status, timing, training-set class counts),
``metrics.json`` (flat numeric metrics), ``claims.json`` (the verdicts), ``figures/*.png`` and ``report.html``.
:func:`judge_run` recomputes ``claims.json`` from a saved ``metrics.json`` (``cnnlens report`` calls it), so editing
a metric and re-rendering changes the verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from matplotlib import pyplot as plt

from .. import __version__
from ..report import render_index, render_run
from ..train import seed_everything
from ._claims import judge
from ._registry import Experiment, ExperimentResult, RunContext, get_experiment

__all__ = ["judge_run", "run_experiment"]


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


def _commit() -> str | None:
    """The git commit of the cnnlens checkout, when it runs from one."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                             capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


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
    """Run experiment ``name`` into ``out/name``, judge its claims and return that folder.

    The folder receives ``result.json``, ``metrics.json``, ``claims.json``, ``figures/*.png`` and ``report.html``;
    ``out/index.html`` lists the claims of every run in ``out``. A failing experiment still writes its folder, with
    status "failed" and the traceback, before re-raising; Ctrl-C marks it "interrupted" (its checkpoints are kept, so
    running it again resumes). ``overrides`` replaces fields of the chosen configuration.
    """
    exp = get_experiment(name)
    cfg = exp.config(quick)
    if overrides:
        cfg = replace(cfg, **overrides)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist or is not a folder; create it and put the "
                                "data files there (see `cnnlens.data` or the README's Data section), or leave it out")
    run_dir = Path(out) / name
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").unlink(missing_ok=True)
    run_key = hashlib.sha256(json.dumps([asdict(cfg), seed, str(data_dir)], sort_keys=True).encode()).hexdigest()[:10]
    ctx = RunContext(run_dir, seed, Path(data_dir) if data_dir is not None else None, quick, progress, run_key)
    record: dict[str, Any] = {
        "name": exp.name, "title": exp.title, "paper": exp.paper, "mode": "quick" if quick else "full",
        "seed": seed, "data_dir": str(data_dir) if data_dir is not None else None, "config": asdict(cfg),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cnnlens": __version__,
                        "commit": _commit(), "threads": torch.get_num_threads(),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S %z")},
        "metrics": {}, "figures": [], "notes": "", "settings": {}, "unmeasured": {}, "status": "running",
    }
    start = time.perf_counter()
    seed_everything(seed)
    try:
        result = exp.fn(cfg, ctx)
        if not isinstance(result, ExperimentResult):
            raise TypeError(f"experiment {name!r} must return an ExperimentResult, got {type(result).__name__}")
        record["metrics"] = _validate_metrics(exp, result.metrics)
        unknown = sorted(set(result.settings) - {c.id for c in exp.claims})
        if unknown:
            raise ValueError(f"experiment {name!r} gives settings for claims it does not declare: {unknown}")
        record.update(notes=result.notes, settings=dict(result.settings), unmeasured=dict(result.unmeasured))
        for fig_name, fig in result.figures.items():
            path = Path("figures") / f"{fig_name}.png"
            fig.savefig(run_dir / path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            record["figures"].append(str(path))
        record["status"] = "ok"
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        record["error"] = "interrupted (Ctrl-C); the completed trainings are checkpointed: rerun the same command"
        raise
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = "".join(traceback.format_exception(err))
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 2)
        record["log"] = ctx.log_lines
        record["training_sets"] = ctx.training_sets
        record["resumed"] = ctx.resumed
        finite = _finite(record["metrics"])
        record["metrics"] = finite
        _write_json(run_dir / "metrics.json", dict(sorted(finite.items())))
        _write_json(run_dir / "result.json", record)
        judge_run(run_dir, exp)
        render_run(run_dir)
        render_index(run_dir.parent)
    return run_dir


def judge_run(run_dir: str | Path, exp: Experiment | None = None) -> list[dict[str, Any]]:
    """Recompute the verdicts of a saved run from its ``metrics.json``; write ``claims.json`` and ``result.json``.

    Returns the claim records. ``exp`` defaults to the registered experiment named in ``result.json``.
    """
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / "result.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} is not a cnnlens run folder (no result.json); run `cnnlens run` "
                                "first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{run_dir / 'result.json'} is corrupt ({err}); re-run the experiment to regenerate "
                         "it") from err
    metrics_path = run_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_path} is corrupt ({err}); fix it or re-run the experiment") from err
    bad = [k for k, v in metrics.items() if v is not None and not isinstance(v, int | float)]
    if not isinstance(metrics, dict) or bad:
        raise ValueError(f"{metrics_path} must map metric names to numbers (or null); {bad or 'not a mapping'}")
    exp = exp or get_experiment(record["name"])
    claims = judge(exp.claims, metrics, quick=record.get("mode") == "quick", settings=record.get("settings"),
                   unmeasured=record.get("unmeasured"))
    if record.get("status") in ("failed", "interrupted", "running"):
        for claim in claims:
            claim["verdict"] = "inconclusive"
            claim["why"] = f"the run is {record['status']}: {claim['why']}"
    record["metrics"] = metrics
    record["claims"] = claims
    _write_json(run_dir / "claims.json", claims)
    _write_json(run_dir / "result.json", record)
    return claims
