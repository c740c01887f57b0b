"""Sweeps on Ray Tune: each configuration × seed a Tune trial running our normal training.

The trials write the same run directories as the local backend (``SWEEP/<key=value,...>/seed<N>/``),
and the sweep's outcome is read back from them, so results.csv / results.md have the same form, and
a re-run trains only what is missing: finished runs are skipped, unfinished ones resume from their
last checkpoint, runs ended by early stopping stay ended (``RUN/stopped.txt``).

Without an address Ray starts on this machine; with one, the sweep joins a running cluster. Every
node must see the sweep directory at the same path (shared storage): the driver writes a token into
it and each trial checks it before training.

``--early-stop METRIC`` puts Tune's ASHA scheduler on the metric of each evaluation during training
(``train.eval_every``): a trial it stops ends cleanly, with a checkpoint at that step, and is counted
as stopped. Ray is an optional dependency (``pip install 'softintrovae[ray]'``), imported only here
and only when a Ray sweep runs.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .callbacks import STOP, Callback
from .checkpoint import list_checkpoints
from .config import load_config
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .files import atomic_write_text
from .rundir import RunDir
from .sweep_local import STOPPED, Job, Outcome, describe_outcome, finished_metrics, stopped_early, train_or_resume

STORAGE_MARKER = ".shared-storage-check"  # in the sweep directory: the driver's token, read by every trial
ASHA_REDUCTION_FACTOR = 4  # Tune's default: a run continues past a rung when in the best quarter so far


def import_ray():
    """``ray`` and ``ray.tune``, or one line saying how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError("--backend ray needs Ray, which is not installed: pip install 'softintrovae[ray]'") from None
    return ray, tune


# ---- shared storage --------------------------------------------------------------------------


def write_storage_marker(out: Path) -> str:
    token = uuid.uuid4().hex
    atomic_write_text(out / STORAGE_MARKER, token + "\n")
    return token


def check_shared_storage(out: Path, token: str) -> None:
    """The sweep directory this process sees is the driver's (it holds the driver's ``token``)."""
    try:
        seen = (out / STORAGE_MARKER).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise UserError(
            f"the sweep directory {str(out)!r} is not shared with Ray node {socket.gethostname()}: put it on "
            "storage every node mounts at the same path (NFS or similar; see docs/sweeps.md)"
        )


# ---- one trial -------------------------------------------------------------------------------


def _intermediate(step: int, metrics: dict[str, Any], metric: str | None) -> dict[str, Any]:
    result = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    if metric and metric not in result:
        raise UserError(f"--early-stop {metric!r} is not among the metrics of an evaluation ({', '.join(metrics)})")
    return result


def replayed_evaluations(path: Path) -> list[dict[str, Any]]:
    """The evaluations a run already logged that a resume keeps: those up to its latest checkpoint
    (all of them for a finished run), so that early stopping sees them again after a re-run."""
    if not (path / "config.yaml").exists():
        return []
    checkpoints = list_checkpoints(path / "checkpoints")
    if not checkpoints:
        return []
    kept = int(checkpoints[-1].stem.partition("_")[2])
    return [r for r in RunDir(path).read_log() if r.get("kind") == "eval" and r.get("step", 0) <= kept]


class TrialRun(Callback):
    """One job trained in a thread, as Tune's step protocol wants it: :meth:`next_result` returns the
    next evaluation (then the end of the run) and the training waits there until it is asked for
    the following one; :meth:`stop` ends it after the current step, with a checkpoint."""

    def __init__(self, job: Job, command: Sequence[str], metric: str | None = None, threads: int = 1):
        self.job, self.command, self.metric, self.threads = job, list(command), metric, threads
        self.results: queue.Queue = queue.Queue(1)
        self.proceed = threading.Semaphore(0)
        self.stop_requested = threading.Event()
        self.thread = threading.Thread(target=self._train, name=f"trial {job.path.name}", daemon=True)

    def next_result(self) -> dict[str, Any]:
        if self.thread.ident is None:
            self.thread.start()
        else:
            self.proceed.release()
        result = self.results.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        self.stop_requested.set()
        self.proceed.release()
        if self.thread.ident is not None:
            self.thread.join()

    def _hand_over(self, result: dict[str, Any]) -> bool:
        """Give ``result`` to the trial and wait to be asked for more; whether to stop."""
        self.results.put(result)
        self.proceed.acquire()
        return self.stop_requested.is_set()

    def on_step_end(self, trainer, step, losses):
        return STOP if self.stop_requested.is_set() else None

    def on_eval(self, trainer, step, metrics, final):
        if final:
            return None
        return STOP if self._hand_over(_intermediate(step, metrics, self.metric)) else None

    def _final(self) -> dict[str, Any]:
        import torch

        torch.set_num_threads(self.threads)
        job = self.job
        for record in replayed_evaluations(job.path):
            metrics = {k: v for k, v in record.items() if k not in ("step", "kind", "eval_seconds")}
            if self._hand_over(_intermediate(record["step"], metrics, self.metric)):
                return {"outcome": "not trained"}  # the run directory says what it is
        if stopped_early(job.path):
            return {"outcome": "stopped"}
        try:
            metrics = train_or_resume(job.source, job.overrides, job.path, self.command, callbacks=[self])
        except TrainingDiverged:
            return {"outcome": "diverged"}
        if not metrics:
            return {"outcome": "stopped"}
        return {"outcome": "finished", **metrics}

    def _train(self) -> None:
        try:
            result = self._final()
            if self.metric and not isinstance(result.get(self.metric), (int, float)):
                result[self.metric] = math.nan  # Tune wants the scheduler's metric in every result
            result["done"] = True
        except BaseException as exc:  # handed to the trial, which raises it
            result = exc
        self.results.put(result)


def _trainable(tune):
    """The Tune trainable class (defined here: its base class comes from Ray)."""

    class SweepTrial(tune.Trainable):
        def setup(self, config, jobs, out, token, metric, threads):
            import ray

            check_shared_storage(out, token)
            where = f"(ray trial on {socket.gethostname()}, node {ray.get_runtime_context().get_node_id()[:12]})"
            job = jobs[config["index"]]
            self.trial_run = TrialRun(job, ["softintrovae", where, job.source], metric, threads)

        def step(self):
            return self.trial_run.next_result()

        def cleanup(self):
            self.trial_run.stop()

        def save_checkpoint(self, checkpoint_dir):  # the run directory holds the checkpoints
            return None

        def load_checkpoint(self, checkpoint):
            pass

    return SweepTrial


def _scheduler(tune, jobs: Sequence[Job], metric: str):
    """ASHA on ``metric`` (lower is better) at the evaluation steps; a run it stops gets ``stopped.txt``."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    configs = [load_config(j.source, j.overrides).train for j in jobs]

    class MarkingASHA(AsyncHyperBandScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            path = jobs[trial.config["index"]].path
            if decision == TrialScheduler.STOP and "outcome" not in result and finished_metrics(path) is None:
                atomic_write_text(
                    path / "stopped.txt",
                    f"stopped early at step {result['step']}: {metric} {result[metric]:.6g} was not in the best "
                    f"1/{ASHA_REDUCTION_FACTOR} of the runs evaluated there (Tune's ASHA)\n",
                )
            return decision

    return MarkingASHA(
        time_attr="step",
        metric=metric,
        mode="min",
        max_t=max(c.steps for c in configs),
        grace_period=min(c.eval_every for c in configs),
        reduction_factor=ASHA_REDUCTION_FACTOR,
    )


# ---- the backend -----------------------------------------------------------------------------


def _check_reachable(address: str) -> None:
    """A ``host:port`` address answers (Ray itself would retry for a long while before failing)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or address.startswith("ray://") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "'ray start --head', or leave --address out to run on this machine"
        ) from None


def _user_error(error: BaseException) -> str | None:
    """The message of the :class:`UserError` behind a trial's error, however Ray wrapped it (the
    error of a task, of an actor's creation, or only its traceback's text)."""
    seen: Any = error
    while seen is not None:
        inner = getattr(seen, "cause", None)  # a task's error subclasses its cause's class, with the traceback as text
        if isinstance(inner, BaseException) and inner is not seen:
            seen = inner
        elif isinstance(seen, UserError):
            return str(seen)
        else:
            seen = seen.__cause__
    found = re.findall(r"UserError: (.+)", str(error))
    return found[-1].strip() if found else None


def outcome_of(path: Path) -> Outcome | bool:
    """What a run directory says of its run: metrics, STOPPED, None (diverged) or False (not done)."""
    metrics = finished_metrics(path)
    if metrics is not None:
        return metrics
    if stopped_early(path):
        return STOPPED
    return None if (path / "diverged.txt").exists() else False


@dataclass
class RayBackend:
    """Each job a Ray Tune trial, on this machine (``address`` None) or on a running cluster.

    ``cpus_per_run`` CPUs (and as many torch threads) and ``gpus_per_run`` GPUs are reserved per
    run; ``max_concurrent`` caps the runs at once (None: the cluster's resources decide);
    ``early_stop`` names the metric ASHA stops runs on.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    early_stop: str | None = None
    max_concurrent: int | None = None
    _started: bool = field(default=False, init=False, repr=False)  # whether this sweep started Ray (and stops it)

    def prepare(self, out: Path, jobs: Sequence[Job]) -> None:
        if self.early_stop:
            if any(load_config(j.source, j.overrides).train.eval_every <= 0 for j in jobs):
                raise UserError("--early-stop needs evaluations during training: set train.eval_every (e.g. --set train.eval_every=1000)")
        ray, _ = import_ray()
        if ray.is_initialized():  # a caller's own Ray session: used as it is
            return
        if self.address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except Exception as exc:  # whatever Ray says when it cannot join: one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"--address {self.address}: could not join a Ray cluster there ({first})") from None
        self._started = True

    def run(self, jobs: Sequence[Job], out: Path, desc: str) -> list[Outcome]:
        ray, tune = import_ray()
        try:
            return self._run(tune, jobs, out.resolve())
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def _run(self, tune, jobs: Sequence[Job], out: Path) -> list[Outcome]:
        from ray.tune import Callback as TuneCallback

        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; ProgressLines does
        jobs = [Job(j.source, j.overrides, j.path.resolve(), j.label) for j in jobs]
        token = write_storage_marker(out)

        class ProgressLines(TuneCallback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                path = jobs[trial.config["index"]].path
                outcome = outcome_of(path)
                print(f"{path}: {describe_outcome(outcome) if outcome is not False else 'interrupted'}", flush=True)

        threads = max(1, round(self.cpus_per_run))
        trainable = tune.with_parameters(_trainable(tune), jobs=jobs, out=out, token=token, metric=self.early_stop, threads=threads)
        trainable = tune.with_resources(trainable, {"cpu": self.cpus_per_run, "gpu": self.gpus_per_run})
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(jobs))))},
            tune_config=tune.TuneConfig(
                scheduler=_scheduler(tune, jobs, self.early_stop) if self.early_stop else None,
                max_concurrent_trials=self.max_concurrent,
                trial_dirname_creator=lambda trial: f"run{trial.config['index']}",
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out / "ray"),
                verbose=0,
                callbacks=[ProgressLines()],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=True),
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False),
            ),
        )
        for result in tuner.fit():
            if result.error is not None:
                message = _user_error(result.error)
                if message is not None:
                    raise UserError(message)
                raise RuntimeError(f"a run failed on Ray ({result.path}): {result.error}")
        outcomes = [outcome_of(j.path) for j in jobs]
        missing = sum(o is False for o in outcomes)
        if missing:
            raise TrainingInterrupted(
                f"interrupted with {missing} of {len(jobs)} runs unfinished; they keep their last checkpoint: "
                "run the same command again to continue"
            )
        return outcomes


__all__ = ["RayBackend", "TrialRun", "check_shared_storage", "import_ray", "outcome_of", "replayed_evaluations"]
