"""The run directory: resolved config, command lines, metrics (JSON lines), checkpoints, plots.

Layout::

    RUN/config.yaml          resolved config, written once
    RUN/command.txt          every command line that trained or evaluated this run
    RUN/metrics.jsonl        one JSON object per line: {"step", "kind": train|eval|final, ...}
    RUN/metrics.json         the last final evaluation
    RUN/checkpoints/step_0001000.pt   the last few checkpoints, written atomically
    RUN/checkpoints/step_0001000.pt.sha256   each checkpoint's SHA-256 (``sha256sum -c`` reads it)
    RUN/lock                 {"pid", "host", "since"} of the process writing the run, while it runs
    RUN/samples.png, RUN/density.png, RUN/plots/...

Checkpoints are written to a temporary file, its checksum is written next, and only then is the
file renamed into place, so every visible checkpoint is complete and has a checksum. Loading
checks the checksum and uses ``torch.load(weights_only=True)``; a corrupt latest checkpoint is
passed over (with a warning) for the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config, config_from_dict
from .errors import CorruptCheckpoint, RunDirWriteError, UserError, warn
from .runlock import RunLock

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")
TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-\d+$")  # what atomic_write_bytes leaves behind when killed

# Test hook, for the crash tests only: while this variable holds a step number, the process kills
# itself with SIGKILL halfway through writing that step's checkpoint (a crash during a write).
KILL_DURING_CHECKPOINT_ENV = "SOFTINTROVAE_TEST_KILL_DURING_CHECKPOINT"


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, write, before_replace: Callable[[], None] | None = None) -> None:
    """Write through ``write(file)`` to a temporary file, fsync, then rename over ``path``
    (calling ``before_replace()`` just before the rename).

    A crash at any point leaves either the old file or the complete new one, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class _HashingWriter:
    """A write-only file that hashes what passes through it (torch.save needs only ``write``)."""

    def __init__(self, file, die_midway: bool = False):
        self.file, self.sha256, self.written, self.die_midway = file, hashlib.sha256(), 0, die_midway
        self.error: OSError | None = None  # torch.save hides it behind its own RuntimeError

    def write(self, data) -> int:
        if self.die_midway and self.written > 0:  # the crash-test hook: part of the file is on disk
            self.file.flush()
            os.fsync(self.file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        self.sha256.update(data)
        self.written += len(data)
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _dies_during(path: Path) -> bool:
    step = os.environ.get(KILL_DURING_CHECKPOINT_ENV)
    match = CHECKPOINT_PATTERN.search(path.name)
    return bool(step and match and int(match.group(1)) == int(step))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with its SHA-256 beside it (written before the rename, so a
    visible checkpoint always has its checksum)."""
    writer: list[_HashingWriter] = []

    def write(f) -> None:
        writer.append(_HashingWriter(f, die_midway=_dies_during(path)))
        try:
            torch.save(state, writer[0])
        except Exception:
            if writer[0].error is not None:  # e.g. a full disk: report that, not torch's follow-up error
                raise writer[0].error from None
            raise

    def write_checksum() -> None:
        atomic_write_text(checksum_path(path), f"{writer[0].sha256.hexdigest()}  {path.name}\n")

    atomic_write_bytes(path, write, before_replace=write_checksum)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path) -> None:
    """Raise :class:`CorruptCheckpoint` when ``path`` does not match its ``.sha256`` file.

    A checkpoint without one (written by an older version) is not checked here.
    """
    recorded = checksum_path(path)
    if not recorded.is_file():
        return
    expected = recorded.read_text().split()
    if not expected or file_sha256(path) != expected[0]:
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt: its SHA-256 does not match {recorded.name}")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

    The checksum is verified first; a truncated, altered or foreign file raises :class:`CorruptCheckpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    verify_checksum(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt or not a softintrovae checkpoint ({reason[:120]})") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: RunLock | None = None

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    final_metrics_path = property(lambda self: self.path / "metrics.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    lock_path = property(lambda self: self.path / "lock")

    @classmethod
    def create(cls, path: str | Path, config: Config) -> "RunDir":
        """A new run directory holding ``config``, locked for this process (see :meth:`lock`)."""
        run = cls(path)
        if run.config_path.exists():
            raise UserError(f"run directory {str(run.path)!r} already holds a run; continue it with --resume {run.path}")
        run.path.mkdir(parents=True, exist_ok=True)
        run.lock()
        try:
            if run.config_path.exists():  # created by another process while we took the lock
                raise UserError(f"run directory {str(run.path)!r} already holds a run; continue it with --resume {run.path}")
            atomic_write_text(run.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
        except BaseException:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run directory {str(run.path)!r} does not exist")
        if not run.config_path.is_file():
            raise UserError(f"{str(run.path)!r} is not a run directory (no config.yaml)")
        return run

    def lock(self) -> None:
        """Take ``RUN/lock`` for this process (refused while another live process writes the run),
        then remove what killed writers left behind: temporary files and checksums of checkpoints
        that were never completed."""
        if self._lock is None:
            lock = RunLock(self.lock_path)
            lock.acquire()
            self._lock = lock
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for leftover in folder.iterdir():
                    if TEMPORARY_PATTERN.match(leftover.name):
                        leftover.unlink(missing_ok=True)
        for checksum in self.checkpoint_dir.glob("step_*.pt.sha256") if self.checkpoint_dir.is_dir() else ():
            if not checksum.with_suffix("").exists():
                checksum.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def load_config(self) -> Config:
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UserError(f"{str(self.config_path)!r} is not valid YAML") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(self.config_path)!r} does not hold a config mapping")
        return config_from_dict(data)

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

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
        return [p for _, p in sorted(found)]

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
        first_error: CorruptCheckpoint | None = None
        for path in reversed(self.checkpoints()):
            try:
                state = load_checkpoint(path)
                if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
                    raise CorruptCheckpoint(f"checkpoint {str(path)!r} is not a softintrovae training checkpoint")
            except CorruptCheckpoint as exc:
                first_error = first_error or exc
                continue
            if first_error is not None:
                warn(f"{first_error}; using the previous checkpoint {path.name} (step {state['step']})")
            return path, state
        if first_error is not None:
            raise CorruptCheckpoint(f"no usable checkpoint in {str(self.path)!r}: {first_error}")
        return None

    def set_aside_checkpoints_after(self, checkpoint: Path) -> None:
        """Rename the checkpoints newer than ``checkpoint`` (corrupt ones that a resume passed over)
        to ``NAME.corrupt``, kept for inspection but never loaded or counted again."""
        found = self.checkpoints()
        for path in found[found.index(checkpoint) + 1 :] if checkpoint in found else ():
            os.replace(path, path.with_name(path.name + ".corrupt"))
            checksum_path(path).unlink(missing_ok=True)
