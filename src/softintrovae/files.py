"""Writing files so that a crash never leaves a torn one: atomic writes and figure saving.

Everything the package writes to disk that a person or a later run reads back (configs, metrics,
checkpoints, caches, PNG figures) goes through :func:`atomic_write_bytes`: the data is written to
a temporary file beside the target, flushed to disk, and renamed over it, so a reader sees the old
file or the complete new one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-\d+$")  # what atomic_write_bytes leaves behind when killed


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, write: Callable, before_replace: Callable[[], None] | None = None) -> None:
    """Write through ``write(file)`` to a temporary file, fsync, then rename over ``path``
    (calling ``before_replace()`` just before the rename).

    A crash at any point leaves either the old file or the complete new one, never a torn file.
    """
    path = Path(path)
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


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buffer.getvalue()))
    return Path(path)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remove_temporaries(folder: Path) -> None:
    """Delete what killed writers left in ``folder``: temporary files of unfinished atomic writes."""
    if folder.is_dir():
        for leftover in folder.iterdir():
            if TEMPORARY_PATTERN.match(leftover.name):
                leftover.unlink(missing_ok=True)


__all__ = ["TEMPORARY_PATTERN", "atomic_write_bytes", "atomic_write_text", "remove_temporaries", "save_figure", "sha256_hex"]
