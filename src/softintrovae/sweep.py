"""Hyper-parameter sweeps: a list of configurations × seeds, each run a normal run directory.

Layout: ``SWEEP/<key=value,...>/seed<N>/`` per run, and ``results.csv`` / ``results.md`` with the
mean ± std of every final metric per configuration. Re-running the same sweep skips finished runs
and resumes unfinished ones from their last checkpoint, so nothing is recomputed after a crash.

Runs train in local worker processes (:class:`LocalBackend`, optionally one device per worker) or
as Ray Tune trials on one machine or a cluster (:class:`softintrovae.sweep_ray.RayBackend`); both
write the same run directories and tables, so either can finish a sweep the other began.

A grid is either ``key=v1,v2,...`` (crossed with the other grids) or a named grid such as
``paper``: the search ranges of the paper's §9.2.1 for the preset's method, where β_neg's values
depend on β_kl's (β_neg ∈ [β_kl, 5·β_kl]), so a grid is a list of configurations, not only a
product of independent axes.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import yaml
from tqdm import tqdm

from .config import load_config, parse_override
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .files import check_writable
from .interrupts import SIGNALS, interrupts_raise
from .rundir import RunDir, atomic_write_text
from .yamlfiles import load_yaml

Configuration = dict[str, Any]
NOT_METRICS = ("step", "total_steps", "train_seconds")  # bookkeeping in metrics.json, not averaged
STOPPED = "stopped"  # the outcome of a run early stopping ended (RUN/stopped.txt): kept, not failed, not trained further
Outcome = Union[dict[str, float], None, str]  # final metrics, None (diverged) or STOPPED

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


# ---- running many runs -----------------------------------------------------------------------


@dataclass
class Job:
    """One run: a preset or config, its overrides and its run directory."""

    source: str
    overrides: dict[str, Any]
    path: Path
    label: dict[str, Any] = field(default_factory=dict)


def finished_metrics(path: str | Path) -> dict[str, float] | None:
    """The final metrics of a run that trained all its steps (``train.steps``, or ``train.epochs``
    of its data), else None."""
    run_dir = Path(path)
    final = run_dir / "metrics.json"
    if not (run_dir / "config.yaml").exists() or not final.exists():
        return None
    metrics = json.loads(final.read_text())
    total = metrics.get("total_steps") or RunDir.open(run_dir).load_config().train.steps  # older records lack total_steps
    return metrics if metrics.get("step") == total else None


def stopped_early(path: str | Path) -> bool:
    """Whether early stopping ended the run at ``path`` (and it was not trained to the end since)."""
    return (Path(path) / "stopped.txt").exists() and finished_metrics(path) is None


def train_or_resume(
    source: str,
    overrides: dict[str, Any],
    path: str | Path,
    command: Sequence[str],
    device: str | None = None,
    callbacks: list | None = None,
) -> dict[str, float]:
    """Skip the run at ``path`` if it finished, resume it from its latest checkpoint if not, train it
    from ``source`` and ``overrides`` if it does not exist yet; its final metrics (with ``step``),
    or {} when a callback stopped it early.

    ``command`` goes into the run's command.txt, followed by ``(resumed)`` when the run is resumed.
    ``device`` (``train.device``) is where it trains, new or resumed; ``callbacks`` watch the training.
    A diverged training leaves its reason in ``diverged.txt`` and raises :class:`TrainingDiverged`.
    """
    from .trainer import Trainer, train  # the trainer loads models and data: imported only to train

    run_dir = Path(path)
    placed = {"train.device": device} if device else {}
    try:
        if (run_dir / "config.yaml").exists():
            done = finished_metrics(run_dir)
            if done is not None:
                return done
            trainer = Trainer.resume(run_dir, placed or None, callbacks=callbacks)
            trainer.run.record_command([*command, "(resumed)"])
            metrics = trainer.fit()
            return {"step": trainer.step, **metrics} if trainer.stopped_at is None else {}
        result = train(source, out=run_dir, overrides={**overrides, **placed}, argv=list(command), callbacks=callbacks)
        if result.stopped_at is not None:
            return {}
        return {"step": load_config(source, overrides).train.steps, **result.metrics}
    except TrainingDiverged as exc:
        (run_dir / "diverged.txt").write_text(str(exc) + "\n")
        raise


_stop_event = None  # in a worker: set by the parent once the sweep is interrupted
_worker_device: str | None = None  # in a worker: the device its runs train on (--devices), or None


DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


def parse_devices(text: str | Sequence[str]) -> list[str]:
    """``"cuda:0,cuda:1"`` → ``["cuda:0", "cuda:1"]``; a name that is no device is one line."""
    names = [d.strip() for d in text.split(",")] if isinstance(text, str) else [str(d).strip() for d in text]
    for name in names:
        if not DEVICE_PATTERN.fullmatch(name):
            raise UserError(f"--devices: {name!r} is not a device; give a comma-separated list of cpu, cuda or cuda:N")
    return names


def check_devices(devices: Sequence[str]) -> None:
    """Every CUDA device named exists on this machine (one line otherwise)."""
    import torch

    wanted = [d for d in devices if d.startswith("cuda")]
    count = torch.cuda.device_count() if wanted else 0
    for name in wanted:
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise UserError(f"--devices: {name!r} does not exist here: this machine has {count} CUDA device(s)")


def worker_device(devices: Sequence[str] | None, worker: int) -> str | None:
    """The device of the ``worker``-th worker process (0, 1, ...): round robin over ``devices``."""
    return devices[worker % len(devices)] if devices else None


def _worker_setup(stop, counter=None, devices: Sequence[str] | None = None) -> None:
    """Worker set-up: one torch thread per process, so that ``workers`` runs share the cores; an idle
    worker ignores Ctrl-C and SIGTERM (the pool shuts it down), a working one stops as a command does;
    ``stop``: the parent's event, set when the sweep is interrupted; ``counter`` numbers the workers
    as they start, which picks each one's device from ``devices``."""
    import torch

    global _stop_event, _worker_device
    _stop_event = stop
    if counter is not None:
        with counter.get_lock():
            _worker_device, counter.value = worker_device(devices, counter.value), counter.value + 1
    torch.set_num_threads(1)
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _job(source: str, overrides: dict[str, Any], path: Path, command: Sequence[str]) -> dict[str, float]:
    if _stop_event is not None and _stop_event.is_set():  # a job already queued when the sweep was interrupted
        raise TrainingInterrupted(f"{path}: not started, the sweep was interrupted")
    with interrupts_raise():
        return train_or_resume(source, overrides, path, command, device=_worker_device)


STOP_GRACE_SECONDS = 10.0  # how long interrupted workers get to save a checkpoint before the signal is passed on


def _stop_workers(pool: ProcessPoolExecutor, futures: Sequence[Future], stop) -> None:
    """After Ctrl-C or SIGTERM: no new run starts (``stop`` is set), and each run in progress stops
    after saving a checkpoint.

    A signal sent to the whole process group (Ctrl-C in a terminal, most schedulers) reached the
    workers too; one sent to this process alone is passed on to them once they had time to stop.
    """
    stop.set()
    for future in futures:
        future.cancel()
    _, running = wait([f for f in futures if not f.done()], timeout=STOP_GRACE_SECONDS)
    if running:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        wait(running)


def default_workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1))


def describe_outcome(outcome: Outcome) -> str:
    """A run's outcome in a progress line: a few metrics, diverged or stopped early."""
    if outcome is None:
        return "diverged (see diverged.txt)"
    if outcome == STOPPED:
        return "stopped early (see stopped.txt)"
    return ", ".join([f"{k} {v:.4g}" for k, v in outcome.items() if k not in NOT_METRICS][:3])


def run_jobs(
    jobs: Sequence[Job], workers: int, desc: str = "runs", devices: Sequence[str] | None = None
) -> list[Outcome]:
    """Train every job in ``workers`` processes (one torch thread each); metrics per job, None if
    diverged, STOPPED if early stopping ended it in an earlier sweep (it is not trained further).
    ``devices``: worker k trains on ``devices[k % len(devices)]`` (default: each run's ``train.device``)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    results: list[Outcome] = [STOPPED if stopped_early(j.path) else None for j in jobs]
    pending = [i for i, r in enumerate(results) if r != STOPPED]
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = ProcessPoolExecutor(
        max_workers=min(workers, max(1, len(pending))),
        mp_context=context,
        initializer=_worker_setup,
        initargs=(stop, context.Value("i", 0), list(devices) if devices else None),
    )
    with pool, tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc=desc, unit="run", dynamic_ncols=True) as progress:
        futures = {pool.submit(_job, jobs[i].source, jobs[i].overrides, jobs[i].path, ["softintrovae", "(batch)", jobs[i].source]): i for i in pending}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except TrainingDiverged:
                    results[i] = None  # its reason is in the run's diverged.txt
                progress.update(1)
                progress.write(f"{jobs[i].path}: {describe_outcome(results[i])}")
        except (KeyboardInterrupt, TrainingInterrupted):
            progress.write("interrupted: the runs in progress save a checkpoint and stop ...")
            _stop_workers(pool, list(futures), stop)
            ended = sum(f.done() and not f.cancelled() and not isinstance(f.exception(), (KeyboardInterrupt, TrainingInterrupted)) for f in futures)
            raise TrainingInterrupted(
                f"interrupted with {ended} of {len(jobs)} runs finished; the others keep their last checkpoint: "
                "run the same command again to continue"
            ) from None
    return results


class Backend(Protocol):
    """Where a sweep's runs train: :meth:`prepare` checks it can (before the sweep directory is
    written), :meth:`run` trains the jobs and returns one outcome per job, in order."""

    def prepare(self, out: Path, jobs: Sequence[Job]) -> None: ...

    def run(self, jobs: Sequence[Job], out: Path, desc: str) -> list[Outcome]: ...


@dataclass
class LocalBackend:
    """Worker processes on this machine, one torch thread each; ``devices`` round robin over workers."""

    workers: int = 1
    devices: list[str] | None = None

    def prepare(self, out: Path, jobs: Sequence[Job]) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.devices:
            self.devices = parse_devices(self.devices)
            check_devices(self.devices)

    def run(self, jobs: Sequence[Job], out: Path, desc: str) -> list[Outcome]:
        return run_jobs(jobs, self.workers, desc=desc, devices=self.devices)


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
