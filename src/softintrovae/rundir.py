"""The run directory: resolved config, command lines, metrics (JSON lines), checkpoints, plots.

Layout::

    RUN/config.yaml          resolved config, written once
    RUN/command.txt          every command line that trained or evaluated this run
    RUN/metrics.jsonl        one JSON object per line: {"step", "kind": train|eval|final, ...}
    RUN/metrics.json         the last final evaluation
    RUN/checkpoints/step_0001000.pt   the last few checkpoints (format: :mod:`softintrovae.checkpoint`)
    RUN/checkpoints/step_0001000.pt.sha256   each checkpoint's SHA-256 (``sha256sum -c`` reads it)
    RUN/lock                 {"pid", "host", "since"} of the process writing the run, while it runs
    RUN/samples.png, RUN/density.png, RUN/plots/...
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import CHECKPOINT_DIR, RUN_CONFIG, check_run_dir, checksum_path, list_checkpoints, load_latest_usable, save_checkpoint
from .config import Config, load_run_config
from .errors import RunDirWriteError, UserError
from .files import atomic_write_text, check_writable, remove_temporaries
from .runlock import RunLock


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: RunLock | None = None

    config_path = property(lambda self: self.path / RUN_CONFIG)
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    final_metrics_path = property(lambda self: self.path / "metrics.json")
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)
    lock_path = property(lambda self: self.path / "lock")

    @classmethod
    def check_new(cls, path: str | Path) -> Path:
        """``path`` if a new run can be created there (a place this process can write that holds no
        run yet); else one line saying why. Nothing is created. A run that never saved a checkpoint
        (it failed or was stopped before its first) holds nothing to lose: it may be started afresh."""
        path = check_writable(path, "run directory", folder=True)
        if (path / RUN_CONFIG).exists() and list_checkpoints(path / CHECKPOINT_DIR):
            raise UserError(f"run directory {str(path)!r} already holds a run; continue it with --resume {path}")
        return path

    @classmethod
    def create(cls, path: str | Path, config: Config) -> "RunDir":
        """A new run directory holding ``config``, locked for this process (see :meth:`lock`)."""
        run = cls(cls.check_new(path))
        run.path.mkdir(parents=True, exist_ok=True)
        run.lock()
        try:
            cls.check_new(run.path)  # again under the lock: another process may have started it meanwhile
            for stale in (run.metrics_path, run.final_metrics_path):  # of an attempt that saved no checkpoint
                stale.unlink(missing_ok=True)
            atomic_write_text(run.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
        except BaseException:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        return cls(check_run_dir(Path(path)))

    def lock(self) -> None:
        """Take ``RUN/lock`` for this process (refused while another live process writes the run),
        then remove what killed writers left behind: temporary files and checksums of checkpoints
        that were never completed."""
        if self._lock is None:
            check_writable(self.path, "run directory", folder=True)
            lock = RunLock(self.lock_path)
            lock.acquire()
            self._lock = lock
        for folder in (self.path, self.checkpoint_dir):
            remove_temporaries(folder)
        for checksum in self.checkpoint_dir.glob("step_*.pt.sha256") if self.checkpoint_dir.is_dir() else ():
            if not checksum.with_suffix("").exists():
                checksum.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def load_config(self) -> Config:
        return load_run_config(self.config_path)

    def record_command(self, argv: list[str] | None = None) -> None:
        line = shlex.join(argv if argv is not None else ["softintrovae", *sys.argv[1:]])
        with open(self.path / "command.txt", "a") as f:
            f.write(line + "\n")

    def log(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: one line, not a traceback (a torn line is skipped on reading)
            raise RunDirWriteError(f"could not write {str(self.metrics_path)!r} ({exc.strerror or exc})") from None

    def read_log(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
        return records

    def truncate_log(self, step: int) -> None:
        """Drop the records after ``step``: logged after the checkpoint a resume starts from, they
        are logged again as training repeats those steps."""
        kept = [r for r in self.read_log() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_final_metrics(self, metrics: dict[str, Any]) -> None:
        try:
            atomic_write_text(self.final_metrics_path, json.dumps(metrics, indent=2) + "\n")
        except OSError as exc:
            raise RunDirWriteError(f"could not write {str(self.final_metrics_path)!r} ({exc.strerror or exc})") from None

    def final_metrics(self, step: int) -> dict[str, float] | None:
        """The metrics of the run's final evaluation if it was at ``step`` (from metrics.json), else None."""
        try:
            record = json.loads(self.final_metrics_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("step") != step:
            return None
        return {k: v for k, v in record.items() if k not in ("step", "total_steps", "train_seconds")}

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return list_checkpoints(self.checkpoint_dir)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int) -> Path:
        """Write step ``step``'s checkpoint, then delete all but the newest ``keep``.

        The older ones go only once the new one is complete, so keeping the previous checkpoint
        costs disk space but no copy. A failed write (a full disk) raises :class:`RunDirWriteError`
        and leaves the existing checkpoints as they were.
        """
        path = self.checkpoint_dir / f"step_{step:07d}.pt"
        try:
            save_checkpoint(path, state)
        except OSError as exc:
            previous = self.latest_checkpoint()
            kept = f"the previous checkpoint {str(previous)!r} is intact" if previous else "no earlier checkpoint exists"
            raise RunDirWriteError(f"could not write checkpoint {str(path)!r} ({exc.strerror or exc}); {kept}") from None
        for old in self.checkpoints()[:-keep]:
            old.unlink()
            checksum_path(old).unlink(missing_ok=True)
        return path

    def load_latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and matches its checksum, and its state; None if there is none.

        A corrupt one is passed over with a warning; if every checkpoint is corrupt,
        :class:`CorruptCheckpoint` names the newest.
        """
        return load_latest_usable(self.checkpoint_dir, self.path)

    def set_aside_checkpoints_after(self, checkpoint: Path) -> None:
        """Rename the checkpoints newer than ``checkpoint`` (corrupt ones that a resume passed over)
        to ``NAME.corrupt``, kept for inspection but never loaded or counted again."""
        found = self.checkpoints()
        for path in found[found.index(checkpoint) + 1 :] if checkpoint in found else ():
            os.replace(path, path.with_name(path.name + ".corrupt"))
            checksum_path(path).unlink(missing_ok=True)
