"""Checkpoints: the file format, its checksum, loading with fallback, and the trained model.

A checkpoint is a ``torch.save`` of plain containers and tensors (it loads with
``weights_only=True``), written atomically with its SHA-256 in ``NAME.sha256`` beside it (written
before the rename, so a visible checkpoint always has its checksum; ``sha256sum -c`` reads it).
Loading reads the file once, checks the checksum on those bytes and unpickles them; a truncated,
altered or foreign file raises :class:`~softintrovae.errors.CorruptCheckpoint`. In a folder of
checkpoints a corrupt newest one is passed over, with a warning, for the one before it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptCheckpoint, UserError, warn
from .files import atomic_write_bytes, atomic_write_text, sha256_hex

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")

# Test hook, for the crash tests only: while this variable holds a step number, the process kills
# itself with SIGKILL halfway through writing that step's checkpoint (a crash during a write).
KILL_DURING_CHECKPOINT_ENV = "SOFTINTROVAE_TEST_KILL_DURING_CHECKPOINT"


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
    """Write ``state`` atomically with its SHA-256 beside it."""
    path = Path(path)
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


def _check_checksum(path: Path, data: bytes) -> None:
    """Raise :class:`CorruptCheckpoint` when ``data`` (the bytes of ``path``) do not match its ``.sha256``.

    A checkpoint without one (written by an older version) is not checked.
    """
    recorded = checksum_path(path)
    if not recorded.is_file():
        return
    expected = recorded.read_text().split()
    if not expected or sha256_hex(data) != expected[0]:
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt: its SHA-256 does not match {recorded.name}")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

    The file is read once; its checksum is checked on those bytes before they are unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {str(path)!r} ({exc.strerror or exc})") from None
    _check_checksum(path, data)
    buffer = io.BytesIO(data)
    try:
        return torch.load(buffer, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt or not a softintrovae checkpoint ({reason[:120]})") from None


def list_checkpoints(folder: Path) -> list[Path]:
    """``step_*.pt`` files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """:func:`load_checkpoint`, and the state must be a training checkpoint (a dict with an int ``step``)."""
    state = load_checkpoint(path)
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is not a softintrovae training checkpoint")
    return state


def load_latest_usable(folder: Path, where: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads and matches its checksum, and its state; None
    if there is none. A corrupt one is passed over with a warning; if every one is corrupt,
    :class:`CorruptCheckpoint` names the newest (``where``: the run directory, for the message)."""
    first_error: CorruptCheckpoint | None = None
    for path in reversed(list_checkpoints(folder)):
        try:
            state = load_training_checkpoint(path)
        except CorruptCheckpoint as exc:
            first_error = first_error or exc
            continue
        if first_error is not None:
            warn(f"{first_error}; using the previous checkpoint {path.name} (step {state['step']})")
        return path, state
    if first_error is not None:
        raise CorruptCheckpoint(f"no usable checkpoint in {str(where)!r}: {first_error}")
    return None
