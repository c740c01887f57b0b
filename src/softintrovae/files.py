"""Writing files so that a crash never leaves a torn one: atomic writes and figure saving, and the
check, before a command starts, that it can write where it will.

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

from .errors import UserError

TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-\d+$")  # what atomic_write_bytes leaves behind when killed


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(path: str | Path, what: str, folder: bool = False) -> Path:
    """``path`` if this process can create or write it: a folder (``folder``) or a file; else one
    line (:class:`~softintrovae.errors.UserError`) naming ``what`` and the reason. Nothing is created.

    Every command checks where it will write before it starts, so a read-only place, a parent that
    is a file, or a file name that is a folder stops it before it computes or writes anything.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise UserError(f"{what} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'picture.png')!r}")
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{what} {str(path)!r} is a file, not a folder")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:  # the folder that new folders would go into
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {what} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        reason = "read-only file system" if _read_only_file_system(existing) else "permission denied"
        if existing == path:
            raise UserError(f"{what} {str(path)!r} is not writable ({reason})")
        raise UserError(f"cannot write {what} {str(path)!r}: {str(existing)!r} is not writable ({reason})")
    return path


def _read_only_file_system(folder: Path) -> bool:
    return hasattr(os, "statvfs") and bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


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


__all__ = ["TEMPORARY_PATTERN", "atomic_write_bytes", "check_writable", "atomic_write_text", "remove_temporaries", "save_figure", "sha256_hex"]
