"""Errors meant for users: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import re
import warnings


class UserError(Exception):
    """Bad input from the user (config, preset, flag, file, run directory)."""


class CorruptCheckpoint(UserError):
    """A checkpoint file is truncated, fails its checksum, or is not a checkpoint at all."""


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""


class RunDirWriteError(OSError):
    """A file of the run directory could not be written (disk full, permissions); what was there is intact."""


class RunWarning(UserWarning):
    """Something went wrong and was worked around: a corrupt checkpoint passed over, a batch skipped."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def warn(message: str) -> None:
    """Warn through :mod:`warnings` (the CLI prints a :class:`RunWarning` as one line on stderr)."""
    warnings.warn(message, RunWarning, stacklevel=2)


def out_of_memory(exc: BaseException) -> str | None:
    """What failed, when ``exc`` is an allocation failure (of torch on the CPU or a GPU, of numpy or
    Python), e.g. ``"tried to allocate 2.05e+12 bytes"``; else None."""
    text = str(exc)
    if not isinstance(exc, MemoryError) and not (
        isinstance(exc, RuntimeError) and any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))
    ):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    if asked:
        return f"tried to allocate {int(asked.group(1)):.3g} bytes"
    asked = re.search(r"allocate (\d[\d.]*\s*\w+)", text)
    return f"tried to allocate {asked.group(1)}" if asked else "an allocation failed"
