"""The training loop, shared by every method, architecture and dataset.

It knows nothing of a particular method: it feeds batches to ``Method.step``, steps the learning
rate schedules, logs, evaluates, checkpoints, and resumes exactly where a checkpoint left off
(model, both optimizers, both schedulers, random state, step; data batches depend only on the
step). A NaN/inf loss or gradient is caught before the optimizers step: by default it stops
training without writing a checkpoint, so the last good one stays; with
``train.on_nonfinite: skip`` the batch's updates are undone and training goes on.
SIGINT/SIGTERM finish the current step, save a checkpoint and stop. The process holds the run
directory's lock (``RUN/lock``) while it trains, so a second writer is refused.

Under ``torchrun`` every process runs this loop on its shard of the data; rank 0 alone writes the
run directory (see :mod:`softintrovae.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .allocator import keep_freed_memory
from .callbacks import CallbackList
from .checkpoint import TrainedModel, model_record
from .config import Config, apply_overrides, check_steps_override, config_from_dict, load_config, parse_override
from .data import PYTHON_DATASET, TOY2D, build_data
from .distributed import barrier, broadcast_module, current_process, device_for, init_process_group
from .errors import TrainingDiverged, TrainingInterrupted, UserError, first_line, warn
from .evaluation import build_evaluator
from .interrupts import stop_after_step
from .growth import EMA, GrowthSchedule, ProgressiveStream, build_growth
from .loggers import build_loggers
from .methods import Method, NonFiniteUpdate, Stepper, build_method
from .metrics.features import feature_nets_dir
from .models import build_models
from .perceptual import build_perceptual_loss
from .rollback import StepSnapshot
from .files import atomic_write_text
from .rundir import RunDir


def run_evaluation(evaluator, encoder, decoder, run: RunDir, step: int, final: bool, log=None) -> dict[str, float]:
    """Evaluate (metrics, plots into the run directory) and log the result as an ``eval`` or ``final``
    record, through ``log`` (default: the run's metrics.jsonl)."""
    started = time.perf_counter()
    metrics = evaluator(encoder, decoder, run.path, step, final)
    (log or run.log)({"step": step, "kind": "final" if final else "eval", **metrics, "eval_seconds": round(time.perf_counter() - started, 2)})
    return metrics


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory: autocast to bf16 / fp16 for ``bf16-mixed`` / ``fp16-mixed``,
    nothing for ``fp32``. Losses are computed in fp32 either way (see ``objectives``)."""
    if precision == "fp32":
        return nullcontext
    if precision == "fp16-mixed" and device.type != "cuda":
        raise UserError(f"train.precision fp16-mixed needs a CUDA device, not {device.type}: use bf16-mixed or fp32")
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def resolve_schedule(config: Config, data, growth: GrowthSchedule | None = None) -> tuple[int, int]:
    """(training steps, VAE warm-up steps): ``train.epochs`` and ``method.vae_warmup_epochs``, when
    set, count epochs of the data stream and win over ``train.steps`` / ``method.vae_warmup_steps``.
    A progressively grown run lasts as long as its growth schedule.

    The run's config.yaml keeps the values as given; only the trainer works in steps.
    """
    if growth is not None:
        epochs = config.method.vae_warmup_epochs
        warmup = growth.steps_for_images(epochs * len(data)) if epochs else config.method.vae_warmup_steps
        return growth.total_steps, warmup
    steps_per_epoch = data.steps_per_epoch
    for key, epochs in (("train.epochs", config.train.epochs), ("method.vae_warmup_epochs", config.method.vae_warmup_epochs)):
        if epochs and steps_per_epoch is None:
            raise UserError(f"{key} is {epochs}, but data {config.data.name!r} has no epochs: use step counts instead")
    steps = config.train.epochs * steps_per_epoch if config.train.epochs else config.train.steps
    warmup = config.method.vae_warmup_epochs * steps_per_epoch if config.method.vae_warmup_epochs else config.method.vae_warmup_steps
    return steps, warmup


def _resumed_config(config: Config, overrides: dict[str, Any]) -> Config:
    """The run's config with the ``train.*`` overrides a resume may make (one line for any other)."""
    bad = [k for k in overrides if not k.startswith("train.")]
    if bad:
        raise UserError(f"cannot change {bad[0]!r} when resuming; only train.* settings may change")
    if "train.seed" in overrides and overrides["train.seed"] != config.train.seed:
        raise UserError(
            f"cannot change train.seed when resuming (it is {config.train.seed}): the random state comes from the checkpoint; "
            "train a new run for another seed"
        )
    resumed = config_from_dict(apply_overrides(config.to_dict(), overrides))
    check_steps_override(resumed, overrides)
    return resumed


def _check_not_behind(total_steps: int, step: int, checkpoint: Path, overrides: dict[str, Any]) -> None:
    """A resume cannot end a run before the step its checkpoint is at."""
    if total_steps < step:
        asked = ", ".join(f"{k}={v}" for k, v in overrides.items() if k in ("train.steps", "train.epochs")) or "its config.yaml"
        raise UserError(
            f"{asked} would end the run at step {total_steps}, but it is at step {step} ({checkpoint.name}); "
            "a resume cannot go back: give a larger value, or train a new run"
        )


def build_training_method(
    config: Config,
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    input_shape: tuple[int, ...],
    *,
    warmup_steps: int | None = None,
    autocast=nullcontext,
    stepper: Stepper | None = None,
    reconstruction=None,
) -> tuple[Method, tuple[torch.optim.Adam, torch.optim.Adam], list[torch.optim.lr_scheduler.MultiStepLR]]:
    """The method of ``config`` with its two optimizers and their learning-rate schedules.

    The encoder's Adam (``optim.lr_encoder``) and the decoder's (``optim.lr_decoder``), in that
    order, each with a MultiStepLR; the method's scale is ``method.scale`` or s = 1 / the number of
    input dimensions (SPEC §2); ``warmup_steps``, when given, replaces ``method.vae_warmup_steps``
    (a schedule counted in epochs resolves it in steps).
    """
    optim = config.optim
    optimizers = (
        torch.optim.Adam(encoder.parameters(), lr=optim.lr_encoder, betas=tuple(optim.betas)),
        torch.optim.Adam(decoder.parameters(), lr=optim.lr_decoder, betas=tuple(optim.betas)),
    )
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=optim.milestones, gamma=optim.lr_gamma) for o in optimizers]
    method_config = config.method if warmup_steps is None else dataclasses.replace(config.method, vae_warmup_steps=warmup_steps)
    scale = config.method.scale or 1.0 / math.prod(input_shape)
    method = build_method(method_config, encoder, decoder, optimizers, scale, autocast=autocast, stepper=stepper, reconstruction=reconstruction)
    return method, optimizers, schedulers


class Trainer:
    def __init__(self, config: Config, run: RunDir | None, callbacks: list | None = None, dataset=None):
        """``run`` may be set later (before ``fit``), so that bad input fails before a run directory exists.

        ``callbacks`` watch (and may stop) the training, after the loggers of ``train.loggers`` (see
        :mod:`softintrovae.callbacks`); ``dataset`` is a map-style image Dataset to train on
        (``data.name`` becomes ``dataset``).
        """
        if dataset is not None and config.data.name != PYTHON_DATASET:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, name=PYTHON_DATASET, root=None))
        self.config, self.run = config, run
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.process = process = current_process()
        self.device = device_for(process, resolve_device(config.train.device))
        if self.device.type == "cpu" and config.train.keep_freed_memory:
            keep_freed_memory()
        autocast = autocast_for(self.device, config.train.precision)
        init_process_group(process, self.device)
        torch.manual_seed(config.train.seed)
        self.data = build_data(config, process.rank, process.world_size, dataset=dataset, device=self.device)
        self.growth = build_growth(config, self.data, process.world_size)
        if self.growth is not None:
            self.data = ProgressiveStream(self.data, self.growth)
        self.total_steps, warmup_steps = resolve_schedule(config, self.data, self.growth)
        encoder, decoder = build_models(config.model, self.data.input_shape, self.data.num_classes)
        perceptual = None  # its feature network, frozen, on the training device
        if config.method.reconstruction == "perceptual":
            perceptual = build_perceptual_loss(config.method.perceptual_net).to(self.device)
        self.conditional = config.model.conditional
        is_image = len(self.data.input_shape) == 3
        self.memory_format = torch.channels_last if config.train.channels_last and is_image else torch.contiguous_format
        self.encoder = encoder.to(self.device, memory_format=self.memory_format)
        self.decoder = decoder.to(self.device, memory_format=self.memory_format)
        if process.distributed:
            broadcast_module(self.encoder)
            broadcast_module(self.decoder)
            # the same initial weights everywhere, then each process draws its own noise
            torch.manual_seed(int(np.random.SeedSequence([config.train.seed, process.rank]).generate_state(1)[0]))
        self.scaler = torch.amp.GradScaler("cuda") if config.train.precision == "fp16-mixed" else None
        self.method, self.optimizers, self.schedulers = build_training_method(
            config,
            self.encoder,
            self.decoder,
            self.data.input_shape,
            warmup_steps=warmup_steps,
            autocast=autocast,
            stepper=Stepper(self.scaler, process.distributed),
            reconstruction=perceptual,
        )
        # an EMA copy of the decoder draws the samples and metrics, when asked for
        self.ema = EMA(self.decoder, config.train.ema_half_life) if config.train.ema_half_life else None
        self.evaluator = build_evaluator(config, self.data.source, progress=config.train.progress and process.is_main)
        self.step = 0
        self.train_seconds = 0.0  # wall time spent training, summed over resumes
        self.last_checkpoint: Path | None = None
        self.checkpoint_step = -1
        self.skipped_steps = 0  # batches whose updates were undone (train.on_nonfinite: skip)
        self.consecutive_skips = 0
        self.finished: dict[str, float] | None = None  # set by resume() for a run with nothing left to do
        loggers = build_loggers(config.train.loggers) if process.is_main else []  # rank 0 writes the run
        self.callbacks = CallbackList([*loggers, *(callbacks or [])])
        self.stop_requested = False  # a callback returned STOP
        self.stopped_at: int | None = None  # the step a callback stopped the run at

    # ---- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "encoder": self.encoder.state_dict(),
            "decoder": self.decoder.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "rng": rng,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "config": self.config.to_dict(),
            "model": model_record(self.data.input_shape, self.encoder.num_classes, self.encoder.latents),
            "total_steps": self.total_steps,
            "data": self.data.state_dict(self.step),  # the sampler's position (and points' standardisation)
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
            **({"decoder_ema": self.ema.module.state_dict()} if self.ema else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        for obj, s in zip((*self.optimizers, *self.schedulers), (*state["optimizers"], *state["schedulers"])):
            obj.load_state_dict(s)
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema:
            self.ema.module.load_state_dict(state.get("decoder_ema", state["decoder"]))
        self.step = int(state["step"])
        self.data.load_state_dict(state.get("data"), self.step)
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))

    def restore(self, state: dict[str, Any], checkpoint: Path) -> None:
        """:meth:`load_state_dict` of ``checkpoint``'s state, with one line when it does not fit this run."""
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = first_line(exc)
            raise UserError(f"checkpoint {str(checkpoint)!r} does not fit this run's config.yaml ({reason[:160]})") from None

    def save_checkpoint(self) -> Path | None:
        """Rank 0 saves (all processes hold the same weights); the others only note the step."""
        self.checkpoint_step = self.step
        if not self.process.is_main:
            self._callback("on_checkpoint", self.step, None)
            return None
        self.last_checkpoint = self.run.save_checkpoint(self.step, self.state_dict(), self.config.train.keep_checkpoints)
        self.checkpoint_step = self.step
        self._callback("on_checkpoint", self.step, self.last_checkpoint)
        return self.last_checkpoint

    @classmethod
    def resume(cls, path: str | Path, overrides: dict[str, Any] | None = None, callbacks: list | None = None, dataset=None) -> "Trainer":
        """Reopen a run directory and continue from its latest checkpoint.

        Only ``train.*`` settings may change on resume (e.g. ``train.steps`` to train longer), never
        to end the run before the step it is at, and not ``train.seed`` (the random state comes from
        the checkpoint). A run that trained all its steps and had its final evaluation is left as it
        is: :attr:`finished` holds that evaluation's metrics and :meth:`fit` returns them at once.
        Nothing is written before every check has passed. A run trained on a Python ``dataset``
        needs it again.
        """
        run = RunDir.open(path)
        config = run.load_config()
        is_main = current_process().is_main
        if overrides:
            config = _resumed_config(config, overrides)
        if is_main:
            run.lock()  # released when fit() ends
        try:
            loaded = run.load_latest_checkpoint()  # a corrupt latest one is passed over with a warning
            if loaded is not None and "imported" in loaded[1]:
                source = loaded[1]["imported"].get("source", "another trainer")
                raise UserError(
                    f"run {str(run.path)!r} was imported from the {source}: its checkpoint holds no optimizer "
                    "state, so it cannot be resumed (sample, evaluate or export it, or train a new run)"
                )
            trainer = cls(config, run, callbacks=callbacks, dataset=dataset)
            barrier(trainer.process)  # every process has read the checkpoint before rank 0 writes again
            if loaded is not None:
                checkpoint, state = loaded
                _check_not_behind(trainer.total_steps, int(state["step"]), checkpoint, overrides or {})
                trainer.restore(state, checkpoint)
                trainer.last_checkpoint, trainer.checkpoint_step = checkpoint, trainer.step
                if trainer.step >= trainer.total_steps:
                    trainer.finished = run.final_metrics(trainer.step)
            if is_main and trainer.finished is None:
                if overrides:
                    atomic_write_text(run.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
                    if run.final_metrics_path.exists():  # it described the run before it was extended
                        run.final_metrics_path.unlink()
                if loaded is not None:
                    run.set_aside_checkpoints_after(loaded[0])
                    run.truncate_log(trainer.step)
                elif run.metrics_path.exists():  # nothing to resume from: start over with a clean log
                    run.metrics_path.unlink()
        except BaseException:
            run.unlock()
            raise
        if not is_main:
            trainer.run = None  # read-only from here: rank 0 owns the run directory
        return trainer

    # ---- loop --------------------------------------------------------------------------------

    @staticmethod
    def _check_finite(losses: dict[str, torch.Tensor]) -> None:
        """The logged losses too (the update losses were checked before their optimizer steps)."""
        values = torch.stack(list(losses.values()))
        if bool(torch.isfinite(values).all()):
            return
        bad = ", ".join(k for k, v in losses.items() if not math.isfinite(float(v)))
        raise NonFiniteUpdate(bad, "loss", values=losses)

    def _non_finite(self, problem: NonFiniteUpdate, snapshot: StepSnapshot | None) -> None:
        """Stop (``train.on_nonfinite: stop``), or undo the batch's updates and note the skip."""
        what = f"non-finite {problem.where} at step {self.step} ({problem.detail})"
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
        hint = "(often an unbounded log-variance: try a lower learning rate or beta_neg)"
        if snapshot is None:
            raise TrainingDiverged(f"{what}; training stopped and {kept} {hint}")
        self.method.stepper.abandon_step()
        snapshot.restore()
        self.skipped_steps += 1
        self.consecutive_skips += 1
        limit = self.config.train.max_consecutive_skips
        if self.consecutive_skips > limit:
            raise TrainingDiverged(
                f"{what}, {self.consecutive_skips} batches in a row (train.max_consecutive_skips is {limit}); "
                f"training stopped and {kept} {hint}"
            )
        self.log({"step": self.step + 1, "kind": "skipped", "batch": self.step, "loss": problem.loss_name, "what": problem.where})
        if self.process.is_main:
            warn(f"{what}: batch skipped, none of its updates applied ({self.skipped_steps} skipped so far)")

    def _callback(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of the loggers and callbacks; note a request to stop."""
        if self.callbacks.call(hook, self, *args):
            self.stop_requested = True

    def log(self, record: dict[str, Any]) -> None:
        """A record of the run (metrics.jsonl and the other loggers), written by rank 0."""
        if self.process.is_main:
            self._callback("on_log", record)

    def evaluate(self, final: bool) -> dict[str, float]:
        """Rank 0 evaluates (metrics, plots); the other processes return {} at once."""
        if not self.process.is_main:
            return {}
        decoder = self.ema.module if self.ema else self.decoder
        metrics = run_evaluation(self.evaluator, self.encoder, decoder, self.run, self.step, final, log=self.log)
        self._callback("on_eval", self.step, metrics, final)
        return metrics

    def fit(self) -> dict[str, float]:
        """Train to ``train.steps`` (or ``train.epochs``), then run the final evaluation; returns its
        metrics ({} when a callback stopped the run early: ``stopped_at`` says where). The run
        directory's lock is released however it ends."""
        metrics = None
        try:
            if self.finished is not None:
                metrics = dict(self.finished)
                return metrics
            self._callback("on_train_start")
            metrics = self._fit()
            return metrics
        finally:
            try:
                self.callbacks.call("on_train_end", self, metrics or None)
            finally:
                if self.run is not None and self.process.is_main:
                    self.run.unlock()

    def _write_data_record(self) -> None:
        """``RUN/data.json``: what the run trains on (sizes, the cache chosen, points' standardisation)."""
        if self.process.is_main and self.run is not None:
            record = {"name": self.config.data.name, **self.data.describe()}
            atomic_write_text(self.run.path / "data.json", json.dumps(record, indent=2) + "\n")

    def _fit(self) -> dict[str, float]:
        cfg, total_steps = self.config.train, self.total_steps
        flag = {"stop": False}
        progress = tqdm(
            total=total_steps,
            initial=self.step,
            desc=self.config.name,
            disable=not (cfg.progress and self.process.is_main),
            dynamic_ncols=True,
            smoothing=0.05,
        )
        skip = cfg.on_nonfinite == "skip"
        self._write_data_record()
        started, seconds_before = time.perf_counter(), self.train_seconds
        # closing the batches ends a DataLoader's worker processes
        with stop_after_step(flag), progress, closing(self.data.batches(self.step)) as batches:
            while self.step < total_steps:
                self.train_seconds = seconds_before + time.perf_counter() - started
                batch = next(batches)
                x, y = batch if isinstance(batch, tuple) else (batch, None)  # 2D streams yield x, images (x, y)
                x = x.to(self.device, non_blocking=True)
                if x.ndim == 4:
                    x = x.contiguous(memory_format=self.memory_format)
                labels = y.to(self.device, non_blocking=True) if self.conditional else None
                if self.growth is not None:
                    self.growth.apply(self.step, [self.encoder, self.decoder], self.method, self.optimizers)
                snapshot = StepSnapshot((self.encoder, self.decoder), self.optimizers, self.scaler) if skip else None
                try:
                    losses = self.method.step(x, self.step, labels)
                    self._check_finite(losses)
                    self.consecutive_skips = 0
                except NonFiniteUpdate as problem:
                    self._non_finite(problem, snapshot)
                    losses = None
                if losses is not None and self.ema is not None:  # a skipped batch leaves the EMA decoder alone too
                    self.ema.update(self.decoder, x.shape[0] * self.process.world_size)
                for scheduler in self.schedulers:
                    scheduler.step()
                self.step += 1
                progress.update(1)
                self._callback("on_step_end", self.step, losses or {})
                if losses is not None and (self.step % cfg.log_every == 0 or self.step == total_steps):
                    record = {k: round(float(v), 6) for k, v in losses.items()}
                    if self.growth is not None:
                        record.update(zip(("level", "alpha"), self.encoder.progress))
                    self.log({"step": self.step, "kind": "train", "lr": self.optimizers[0].param_groups[0]["lr"], **record})
                    progress.set_postfix({k: f"{v:.4g}" for k, v in record.items()}, refresh=False)
                if self.step % cfg.checkpoint_every == 0 or self.step == total_steps:
                    self.save_checkpoint()
                level_end = self.growth is not None and self.growth.is_level_end(self.step)
                if (cfg.eval_every and self.step % cfg.eval_every == 0 or level_end) and self.step < total_steps:
                    self.evaluate(final=False)
                if flag["stop"] and self.step < total_steps:
                    self.save_checkpoint()
                    where = self.run.path if self.run else "RUN_DIR"
                    raise TrainingInterrupted(
                        f"interrupted at step {self.step}; checkpoint saved; continue with: softintrovae train --resume {where}"
                    )
                if self.stop_requested and self.step < total_steps:
                    break
        self.train_seconds = seconds_before + time.perf_counter() - started
        if self.stop_requested and self.step < total_steps:  # a callback ended the run: resumable from here
            if self.checkpoint_step != self.step:
                self.save_checkpoint()
            self.stopped_at = self.step
            barrier(self.process)
            return {}
        if self.checkpoint_step != self.step:  # e.g. resumed a run whose final evaluation was interrupted
            self.save_checkpoint()
        try:
            metrics = self.evaluate(final=True)
        except KeyboardInterrupt:
            where = self.run.path if self.run else "RUN_DIR"
            raise TrainingInterrupted(
                f"interrupted during the final evaluation; the checkpoint of step {self.step} is saved; "
                f"evaluate it with: softintrovae evaluate {where}"
            ) from None
        if self.process.is_main:
            self.run.write_final_metrics(
                {"step": self.step, "total_steps": self.total_steps, **metrics, "train_seconds": round(self.train_seconds, 1)}
            )
        barrier(self.process)
        return metrics


# ---- the Python API ----------------------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    already_finished: bool = False  # a resume found nothing left to do: these are the run's final metrics
    stopped_at: int | None = None  # the step a callback stopped the run at (no final metrics then)


def _record_or_unlock(run: RunDir, argv: list[str]) -> None:
    """Note the command in the run, releasing the run's lock if even that fails (fit() releases it otherwise)."""
    try:
        run.record_command(argv)
    except BaseException:
        run.unlock()
        raise


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train(
    config: Config | str | Path | dict,
    out: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    argv: list[str] | None = None,
    callbacks: list | None = None,
    dataset=None,
) -> RunResult:
    """Train a preset, config file, dict or Config into a new run directory; returns its final metrics.

    ``callbacks`` watch and may stop the run (:mod:`softintrovae.callbacks`); ``dataset``, a map-style
    ``torch.utils.data.Dataset`` of images (or (image, label) pairs), replaces the config's data.
    """
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(config.to_dict(), overrides)
    path = RunDir.check_new(out or default_run_dir(config.name))  # a place it cannot write stops it before any work
    trainer = Trainer(config, None, callbacks=callbacks, dataset=dataset)  # data and models next: a missing dataset leaves no run directory behind
    if trainer.process.is_main:
        trainer.run = RunDir.create(path, trainer.config)
        _record_or_unlock(trainer.run, argv or ["python-api", "train", config.name])
    metrics = trainer.fit()
    return RunResult(path, metrics, stopped_at=trainer.stopped_at)


def resume(
    path: str | Path,
    overrides: dict[str, Any] | list[str] | None = None,
    argv: list[str] | None = None,
    callbacks: list | None = None,
    dataset=None,
) -> RunResult:
    """Continue a run directory from its latest checkpoint (to its, possibly raised, ``train.steps``);
    ``callbacks`` and ``dataset`` as for :func:`train` (a run trained on a Python dataset needs it again).

    A run that already trained all its steps and was evaluated is left untouched: its final metrics
    come back with ``already_finished`` set (nothing is trained, evaluated or recorded).
    """
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    trainer = Trainer.resume(path, overrides, callbacks=callbacks, dataset=dataset)
    if trainer.process.is_main and trainer.finished is None:
        _record_or_unlock(trainer.run, argv or ["python-api", "resume", str(path)])
    run_dir = trainer.run.path if trainer.run else Path(path)
    return RunResult(run_dir, trainer.fit(), already_finished=trainer.finished is not None, stopped_at=trainer.stopped_at)


def _check_feature_net(config: Config) -> None:
    """FID/KID asked for explicitly need an image run and the dataset's feature net (training skips them without one)."""
    if config.eval.fid_samples and config.data.name in TOY2D:
        raise UserError(f"FID/KID measure images; this is a 2D run ({config.data.name}), whose metrics are KL, JSD and gnELBO")
    net = feature_nets_dir() / f"{config.data.name}.pt"
    if config.eval.fid_samples and not net.is_file():
        raise UserError(
            f"no feature net for {config.data.name!r} in {str(feature_nets_dir())!r}; "
            f"train one with: softintrovae feature-net train --dataset {config.data.name}"
        )


def evaluate(path: str | Path, argv: list[str] | None = None, overrides: dict[str, Any] | None = None, dataset=None) -> RunResult:
    """Re-run the final evaluation of a run's latest checkpoint (metrics.json and plots).

    ``overrides`` may change ``eval.*`` settings for this evaluation only (e.g. ``eval.fid_samples``);
    a run trained on a Python ``dataset`` needs it again.
    """
    run = RunDir.open(path)
    run.lock()  # it writes metrics.json and plots: not while a training writes the run
    try:
        config = run.load_config()
        if overrides:
            bad = [k for k in overrides if not k.startswith("eval.")]
            if bad:
                raise UserError(f"evaluation may only change eval.* settings, not {bad[0]!r}")
            config = config_from_dict(apply_overrides(config.to_dict(), overrides))
            _check_feature_net(config)
        model = TrainedModel.load(run.path, config).to(resolve_device(config.train.device))
        data = build_data(config, dataset=dataset)  # the held-out images or points the metrics compare with
        data.load_state_dict(model.state.get("data"), model.step, resuming=False)  # e.g. the points' standardisation
        total_steps = model.state.get("total_steps") or resolve_schedule(config, data, build_growth(config, data))[0]
        evaluator = build_evaluator(config, data, progress=config.train.progress)
        metrics = run_evaluation(evaluator, model.encoder, model.sampling_decoder, run, model.step, final=True)
        timing = {"train_seconds": round(float(model.state["train_seconds"]), 1)} if "train_seconds" in model.state else {}
        run.write_final_metrics({"step": model.step, "total_steps": total_steps, **metrics, **timing})
        run.record_command(argv or ["python-api", "evaluate", str(path)])  # once it is done: an interrupted one did not evaluate
    finally:
        run.unlock()
    return RunResult(run.path, metrics)
