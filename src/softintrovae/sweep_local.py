"""The runs of a sweep on this machine: one run trained, resumed or skipped (:func:`train_or_resume`),
and the local backend: worker processes, one torch thread each, devices given round robin.

A run's outcome is read from its directory: ``metrics.json`` of its last step (finished),
``diverged.txt`` (its loss became NaN/inf), ``stopped.txt`` (early stopping ended it: it keeps its
checkpoint and is not trained further).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tqdm import tqdm

from .config import load_config
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .interrupts import SIGNALS, interrupts_raise
from .rundir import RunDir

NOT_METRICS = ("step", "total_steps", "train_seconds")  # bookkeeping in metrics.json, not averaged
STOPPED = "stopped"  # the outcome of a run early stopping ended (RUN/stopped.txt): kept, not failed, not trained further
Outcome = Union[dict[str, float], None, str]  # final metrics, None (diverged) or STOPPED


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


__all__ = [
    "NOT_METRICS",
    "STOPPED",
    "Job",
    "LocalBackend",
    "Outcome",
    "check_devices",
    "default_workers",
    "describe_outcome",
    "finished_metrics",
    "parse_devices",
    "run_jobs",
    "stopped_early",
    "train_or_resume",
    "worker_device",
]
