"""One writer per run directory: ``RUN/lock`` names the process that writes it.

Taking the lock fails, with one line naming the holder, while another live process holds it. A
lock left by a process that died (SIGKILL, power loss) does not block a resume: on the same host
it is broken when its pid is no longer running; from another host (a job requeued elsewhere) when
it has not been refreshed for ``LOCK_STALE_SECONDS`` — a holder refreshes it every
``LOCK_HEARTBEAT_SECONDS`` from a background thread. A pid reused by an unrelated process on the
same host keeps the lock until the file is deleted by hand (the message says which file).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError, warn

LOCK_HEARTBEAT_SECONDS = 30.0
LOCK_STALE_SECONDS = 600.0  # a lock from another host untouched this long belongs to a dead job


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (exited, not yet reaped: e.g. a killed worker whose
    parent died too, under an init that does not reap) counts as gone."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe on Windows: count the holder as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or gone meanwhile
        return False
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))  # the state follows "(command) "


class RunLock:
    """The lock file ``path``: :meth:`acquire` before writing a run directory, :meth:`release` after."""

    def __init__(self, path: Path):
        self.path = path
        self.record = {"pid": os.getpid(), "host": socket.gethostname()}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        record = {**self.record, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = self.path.with_name(f".{self.path.name}.acquire-{os.getpid()}")
        tmp.write_text(json.dumps(record) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic, and fails when the lock exists: the lock is never half-written
                    break
                except FileExistsError:
                    self._break_if_stale()
            else:
                raise UserError(f"could not take the lock {str(self.path)!r}: other processes keep taking it")
        finally:
            tmp.unlink(missing_ok=True)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh, name="softintrovae-run-lock", daemon=True)
        self._heartbeat.start()

    def _break_if_stale(self) -> None:
        try:
            text = self.path.read_text()
            holder = json.loads(text)
            pid, host = int(holder["pid"]), str(holder["host"])
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (ValueError, KeyError, TypeError, OSError):
            raise UserError(
                f"{str(self.path)!r} is not a lock file this version understands; delete it if no process uses the run"
            ) from None
        if host == self.record["host"]:
            stale = not _process_alive(pid)
            why = f"process {pid} is no longer running"
        else:
            stale = age > LOCK_STALE_SECONDS
            why = f"it has not been refreshed for {age / 60:.0f} minutes"
        if not stale:
            raise UserError(
                f"run directory {str(self.path.parent)!r} is in use by process {pid} on {host} since {holder.get('since', '?')}; "
                f"wait for it to finish (if that process is gone, delete {str(self.path)!r})"
            )
        aside = self.path.with_name(f".{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        if aside.read_text() != text:  # it was replaced by a live lock after we read it: put that back
            os.replace(aside, self.path)
            raise UserError(f"run directory {str(self.path.parent)!r} was just taken by another process")
        aside.unlink()
        warn(f"took over the lock of {str(self.path.parent)!r} left by process {pid} on {host} ({why})")

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)
