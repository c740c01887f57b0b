"""Hyper-parameter sweeps: a list of configurations × seeds, each run a normal run directory.

Layout: ``SWEEP/<key=value,...>/seed<N>/`` per run, and ``results.csv`` / ``results.md`` with the
mean ± std of every final metric per configuration. Re-running the same sweep skips finished runs
and resumes unfinished ones from their last checkpoint, so nothing is recomputed after a crash.

Runs train in local worker processes (:class:`softintrovae.sweep_local.LocalBackend`, optionally one
device per worker) or as Ray Tune trials on one machine or a cluster (:class:`softintrovae.sweep_ray.RayBackend`); both
write the same run directories and tables, so either can finish a sweep the other began.

A grid is either ``key=v1,v2,...`` (crossed with the other grids) or a named grid such as
``paper``: the search ranges of the paper's §9.2.1 for the preset's method, where β_neg's values
depend on β_kl's (β_neg ∈ [β_kl, 5·β_kl]), so a grid is a list of configurations, not only a
product of independent axes.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from .config import load_config, parse_override
from .errors import UserError
from .files import check_writable
from .rundir import atomic_write_text
from .sweep_local import (  # re-exported: the sweep's API
    NOT_METRICS,
    STOPPED,
    Job,
    LocalBackend,
    Outcome,
    check_devices,
    default_workers,
    describe_outcome,
    finished_metrics,
    parse_devices,
    run_jobs,
    stopped_early,
    train_or_resume,
    worker_device,
)
from .yamlfiles import load_yaml

Configuration = dict[str, Any]

# Paper §9.2.1: β_rec, β_kl ∈ [0.05, 1]; β_neg ∈ [β_kl, 5·β_kl]; m ∈ [1, 10]. The paper gives the
# ranges and the run counts (81 VAE runs = 9 × 9), not the grid points; these are ours.
PAPER_BETAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
PAPER_NEG_FACTORS = (1, 2, 3, 5)
PAPER_MARGINS = (1, 2, 4, 6, 8, 10)


def paper_grid(method: str) -> list[Configuration]:
    """The paper's search ranges for ``method`` (vae, introvae or soft-introvae) as configurations."""
    grid = []
    for beta_rec, beta_kl in itertools.product(PAPER_BETAS, PAPER_BETAS):
        base = {"method.beta_rec": beta_rec, "method.beta_kl": beta_kl}
        if method == "vae":
            grid.append(base)
            continue
        for factor in PAPER_NEG_FACTORS:
            neg = {**base, "method.beta_neg": round(factor * beta_kl, 6)}
            margins = PAPER_MARGINS if method == "introvae" else (None,)
            grid += [neg if m is None else {**neg, "method.margin": float(m)} for m in margins]
    return grid


NAMED_GRIDS = {"paper": paper_grid}


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["method.beta_kl=0.1,0.5", ...]`` → ``{"method.beta_kl": [0.1, 0.5]}`` (YAML-typed values)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key.strip() or not all(values):
            names = ", ".join(NAMED_GRIDS)
            raise UserError(f"grid {text!r} must look like section.key=value1,value2,... or be a named grid ({names})")
        grid[key.strip()] = [parse_override(f"{key}={v}")[1] for v in values]
    return grid


def expand_grid(texts: Sequence[str], method: str) -> list[Configuration]:
    """Named grids and ``key=values`` grids → the list of configurations (their Cartesian product)."""
    factors = [NAMED_GRIDS[t](method) for t in texts if t in NAMED_GRIDS]
    axes = parse_grid([t for t in texts if t not in NAMED_GRIDS])
    factors += [[{key: value} for value in values] for key, values in axes.items()]
    return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*factors)]


def as_configurations(grid: dict[str, list[Any]] | list[Configuration]) -> list[Configuration]:
    if isinstance(grid, dict):
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [dict(c) for c in grid]


def run_name(overrides: Configuration) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"


class Backend(Protocol):
    """Where a sweep's runs train: :meth:`prepare` checks it can (before the sweep directory is
    written), :meth:`run` trains the jobs and returns one outcome per job, in order."""

    def prepare(self, out: Path, jobs: Sequence[Job]) -> None: ...

    def run(self, jobs: Sequence[Job], out: Path, desc: str) -> list[Outcome]: ...


# ---- sweeps ----------------------------------------------------------------------------------


def plan(source: str, configurations: list[Configuration], seeds: int, base_overrides: dict[str, Any], out: Path) -> list[Job]:
    """One job per configuration and seed; validates every configuration up front."""
    jobs = []
    for configuration in configurations:
        for seed in range(seeds):
            overrides = {**base_overrides, **configuration, "train.seed": seed, "data.seed": seed, "train.progress": False}
            load_config(source, overrides)  # one clear line for a bad key or value, before any work
            jobs.append(Job(source, overrides, out / run_name(configuration) / f"seed{seed}", configuration))
    return jobs


def aggregate(rows: list[tuple[dict[str, Any], Outcome]]) -> list[dict[str, Any]]:
    """Mean and (sample) std of each metric per configuration, in first-seen order.

    A ``None`` result (a diverged run) counts in ``diverged``, a :data:`STOPPED` one in ``stopped``,
    and neither in the statistics.
    """
    groups: dict[str, tuple[dict[str, Any], list[dict[str, float]], dict[str, int]]] = {}
    for configuration, outcome in rows:
        configuration_, results, counts = groups.setdefault(run_name(configuration), (configuration, [], {}))
        if outcome is None or outcome == STOPPED:
            kind = "diverged" if outcome is None else "stopped"
            counts[kind] = counts.get(kind, 0) + 1
        else:
            results.append(outcome)
    table = []
    for configuration, results, counts in groups.values():
        row: dict[str, Any] = {**configuration, "runs": len(results)}
        row.update((kind, counts[kind]) for kind in ("diverged", "stopped") if kind in counts)
        for metric in [k for k in (results[0] if results else {}) if k not in NOT_METRICS]:
            values = [r[metric] for r in results]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        table.append(row)
    return table


def _metric_names(table: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in table:
        names += [k[: -len("_mean")] for k in row if k.endswith("_mean") and k[: -len("_mean")] not in names]
    return names


def best_per_metric(table: list[dict[str, Any]], keys: list[str]) -> dict[str, str]:
    """Lower is better for every 2D metric."""
    best = {}
    for m in _metric_names(table):
        rows = [r for r in table if f"{m}_mean" in r]
        best[m] = run_name({k: min(rows, key=lambda r: r[f"{m}_mean"]).get(k) for k in keys})
    return best


def write_results(out: Path, table: list[dict[str, Any]], keys: list[str]) -> None:
    metrics = _metric_names(table)
    counts = ["runs", "diverged", "stopped"]
    fields = keys + counts + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows([{"diverged": 0, "stopped": 0, **row} for row in table])
    lines = ["| " + " | ".join(keys + counts + metrics) + " |", "|" + "---|" * (len(keys) + len(counts) + len(metrics))]
    for row in table:
        cells = [str(row.get(k, "")) for k in keys] + [str(row.get(c, 0)) for c in counts]
        cells += [f"{row[f'{m}_mean']:.4g} ± {row[f'{m}_std']:.2g}" if f"{m}_mean" in row else "–" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best (lowest mean) per metric:", ""]
    lines += [f"- {m}: {cfg}" for m, cfg in best_per_metric(table, keys).items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def sweep(
    source: str,
    grid: dict[str, list[Any]] | list[Configuration],
    out: str | Path,
    seeds: int = 1,
    workers: int = 1,
    overrides: dict[str, Any] | None = None,
    devices: Sequence[str] | None = None,
    backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) a sweep into ``out``; returns the aggregated table.

    ``grid`` is ``{key: [values]}`` (their Cartesian product) or a list of configurations. The runs
    train in ``workers`` local processes (on ``devices``, round robin), or on ``backend`` when given
    (e.g. :class:`softintrovae.sweep_ray.RayBackend`).
    """
    if seeds < 1 or workers < 1:
        raise UserError(f"--seeds and --workers must be >= 1, got {seeds} and {workers}")
    out = Path(out)
    backend = backend or LocalBackend(workers, list(devices) if devices else None)
    configurations = as_configurations(grid)
    jobs = plan(source, configurations, seeds, overrides or {}, out)
    check_writable(out, "sweep directory", folder=True)
    spec = {"source": source, "configurations": configurations, "seeds": seeds, "overrides": overrides or {}}
    spec_path = out / "sweep.yaml"
    if spec_path.exists() and load_yaml(spec_path.read_text(), str(spec_path)) != spec:
        raise UserError(f"{str(out)!r} holds a different sweep; use another --out")
    backend.prepare(out, jobs)  # connects, checks devices: nothing is written before it can run
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_path, yaml.safe_dump(spec, sort_keys=False))
    results = backend.run(jobs, out, f"sweep {Path(source).stem}")
    table = aggregate([(j.label, r) for j, r in zip(jobs, results)])
    keys = list(dict.fromkeys(k for c in configurations for k in c))
    write_results(out, table, keys)
    return table


__all__ = [
    "STOPPED",
    "Backend",
    "check_devices",
    "default_workers",
    "Job",
    "LocalBackend",
    "aggregate",
    "best_per_metric",
    "describe_outcome",
    "expand_grid",
    "finished_metrics",
    "paper_grid",
    "parse_devices",
    "parse_grid",
    "run_jobs",
    "stopped_early",
    "sweep",
    "train_or_resume",
    "worker_device",
]
