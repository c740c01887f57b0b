"""Hyper-parameter sweeps: the Cartesian product of grids × seeds, each a normal run directory.

Layout: ``SWEEP/<key=value,...>/seed<N>/`` per run, and ``results.csv`` / ``results.md`` with the
mean ± std of every final metric per configuration. Re-running the same sweep skips finished runs
and resumes unfinished ones from their last checkpoint, so nothing is recomputed after a crash.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from .config import load_config, parse_override
from .errors import UserError
from .rundir import RunDir, atomic_write_text


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["method.beta_kl=0.1,0.5", ...]`` → ``{"method.beta_kl": [0.1, 0.5]}`` (YAML-typed values)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key.strip() or not all(values):
            raise UserError(f"grid {text!r} must look like section.key=value1,value2,...")
        grid[key.strip()] = [parse_override(f"{key}={v}")[1] for v in values]
    return grid


def run_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def _train_one(source: str, overrides: dict[str, Any], path: str) -> dict[str, float]:
    """Train, resume or skip one run (in a worker process with one torch thread)."""
    import torch

    from .trainer import Trainer, train

    torch.set_num_threads(1)
    run_dir = Path(path)
    final = run_dir / "metrics.json"
    if (run_dir / "config.yaml").exists():
        steps = RunDir.open(run_dir).load_config().train.steps
        if final.exists() and json.loads(final.read_text()).get("step") == steps:
            return json.loads(final.read_text())  # finished: skip
        trainer = Trainer.resume(run_dir)
        trainer.run.record_command(["softintrovae", "sweep", "(resumed)"])
        metrics = trainer.fit()
        return {"step": trainer.step, **metrics}
    result = train(source, out=run_dir, overrides=overrides, argv=["softintrovae", "sweep", source])
    return {"step": load_config(source, overrides).train.steps, **result.metrics}


def plan(source: str, grid: dict[str, list[Any]], seeds: int, base_overrides: dict[str, Any]) -> list[tuple[dict, int, dict]]:
    """(configuration, seed, full overrides) for every run; validates every configuration up front."""
    runs = []
    for values in itertools.product(*grid.values()):
        configuration = dict(zip(grid, values))
        for seed in range(seeds):
            overrides = {**base_overrides, **configuration, "train.seed": seed, "data.seed": seed, "train.progress": False}
            load_config(source, overrides)  # one clear line for a bad key or value, before any work
            runs.append((configuration, seed, overrides))
    return runs


def aggregate(rows: list[tuple[dict[str, Any], dict[str, float]]]) -> list[dict[str, Any]]:
    """Mean and (sample) std of each metric per configuration, in first-seen order."""
    groups: dict[str, tuple[dict[str, Any], list[dict[str, float]]]] = {}
    for configuration, metrics in rows:
        groups.setdefault(run_name(configuration), (configuration, []))[1].append(metrics)
    table = []
    for configuration, results in groups.values():
        row: dict[str, Any] = {**configuration, "runs": len(results)}
        for metric in [k for k in results[0] if k != "step"]:
            values = [r[metric] for r in results]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        table.append(row)
    return table


def best_per_metric(table: list[dict[str, Any]], keys: list[str]) -> dict[str, str]:
    """Lower is better for every 2D metric."""
    metrics = [k[: -len("_mean")] for k in table[0] if k.endswith("_mean")]
    return {m: run_name({k: min(table, key=lambda r: r[f"{m}_mean"])[k] for k in keys}) for m in metrics}


def write_results(out: Path, table: list[dict[str, Any]], keys: list[str]) -> None:
    fields = list(table[0])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    metrics = [k[: -len("_mean")] for k in fields if k.endswith("_mean")]
    lines = ["| " + " | ".join(keys + ["runs"] + metrics) + " |", "|" + "---|" * (len(keys) + 1 + len(metrics))]
    for row in table:
        cells = [str(row[k]) for k in keys] + [str(row["runs"])]
        cells += [f"{row[f'{m}_mean']:.4g} ± {row[f'{m}_std']:.2g}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best (lowest mean) per metric:", ""]
    lines += [f"- {m}: {cfg}" for m, cfg in best_per_metric(table, keys).items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def sweep(
    source: str,
    grid: dict[str, list[Any]],
    out: str | Path,
    seeds: int = 1,
    workers: int = 1,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) a sweep into ``out``; returns the aggregated table."""
    if seeds < 1 or workers < 1:
        raise UserError(f"--seeds and --workers must be >= 1, got {seeds} and {workers}")
    out = Path(out)
    runs = plan(source, grid, seeds, overrides or {})
    out.mkdir(parents=True, exist_ok=True)
    spec = {"source": source, "grid": grid, "seeds": seeds, "overrides": overrides or {}}
    spec_path = out / "sweep.yaml"
    if spec_path.exists() and yaml.safe_load(spec_path.read_text()) != spec:
        raise UserError(f"{str(out)!r} holds a different sweep; use another --out")
    atomic_write_text(spec_path, yaml.safe_dump(spec, sort_keys=False))
    paths = [str(out / run_name(c) / f"seed{s}") for c, s, _ in runs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = list(pool.map(_train_one, [source] * len(runs), [o for _, _, o in runs], paths))
    table = aggregate([(c, r) for (c, _, _), r in zip(runs, results)])
    write_results(out, table, list(grid))
    return table


__all__ = ["aggregate", "best_per_metric", "parse_grid", "sweep"]
