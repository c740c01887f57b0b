"""Callbacks: how Python code watches a training as it runs, and stops it.

A callback is an object with any of the hooks of :class:`Callback` (subclass it to inherit no-op
defaults). The trainer calls them in order, the loggers of ``train.loggers`` first (they are
callbacks too, see :mod:`softintrovae.loggers`), then those given to ``train(..., callbacks=[...])``:

- ``on_train_start(trainer)``: before the first step (``trainer.step`` is where a resumed run continues);
- ``on_step_end(trainer, step, losses)``: after every optimizer step; ``step`` counts the steps done,
  ``losses`` are the step's loss tensors (``float()`` of one waits for the device);
- ``on_log(trainer, record)``: every record of ``metrics.jsonl`` (``{"step", "kind", ...}``, kinds
  train, eval, final, skipped);
- ``on_eval(trainer, step, metrics, final)``: after each evaluation; the evaluator's pictures of it
  are ``trainer.evaluator.pictures`` (name → PNG path);
- ``on_checkpoint(trainer, step, path)``: after a checkpoint is written;
- ``on_train_end(trainer, metrics)``: however the run ends; ``metrics`` are the final evaluation's, or
  None when the run stopped early (a callback, a signal, an error).

A hook that returns :data:`STOP` ends the run cleanly after the current step: a checkpoint is saved
(``train --resume`` or ``resume()`` continues it exactly) and ``train()`` returns a result with
``stopped_at`` set and no final metrics. Under ``torchrun``, ``on_step_end`` and ``on_checkpoint`` run
in every process and must return STOP at the same step in all of them; the others run in rank 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

STOP = "stop"
HOOKS = ("on_train_start", "on_step_end", "on_log", "on_eval", "on_checkpoint", "on_train_end")


class Callback:
    """No-op hooks to override (any of them may return :data:`STOP`, except the start and end hooks)."""

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_step_end(self, trainer: Any, step: int, losses: dict[str, Any]) -> str | None:
        return None

    def on_log(self, trainer: Any, record: dict[str, Any]) -> str | None:
        return None

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float], final: bool) -> str | None:
        return None

    def on_checkpoint(self, trainer: Any, step: int, path: Path | None) -> str | None:
        return None

    def on_train_end(self, trainer: Any, metrics: dict[str, float] | None) -> None:
        pass


class StopAtStep(Callback):
    """Stop the run once ``step`` steps are done (with a checkpoint there)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer: Any, step: int, losses: dict[str, Any]) -> str | None:
        return STOP if step >= self.step else None


class CallbackList:
    """Callbacks called in order; :meth:`call` says whether any of them asked to stop."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise TypeError(f"{type(callback).__name__} has none of the callback hooks {', '.join(HOOKS)}")

    def call(self, hook: str, *args: Any) -> bool:
        """Call ``hook`` of every callback that has it (all of them, even after one asked to stop)."""
        stop = False
        for callback in self.callbacks:
            method = getattr(callback, hook, None)  # a callback need not define every hook
            if method is not None and method(*args) == STOP:
                stop = True
        return stop


__all__ = ["HOOKS", "STOP", "Callback", "CallbackList", "StopAtStep"]
