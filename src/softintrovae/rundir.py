"""The run directory: resolved config, command lines, metrics (JSON lines), checkpoints, plots.

Layout::

    RUN/config.yaml          resolved config, written once
    RUN/command.txt          every command line that trained or evaluated this run
    RUN/metrics.jsonl        one JSON object per line: {"step", "kind": train|eval|final, ...}
    RUN/metrics.json         the last final evaluation
    RUN/checkpoints/step_0001000.pt   the last few checkpoints, written atomically
    RUN/samples.png, RUN/density.png, RUN/plots/...
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config, config_from_dict
from .errors import UserError

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary file, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the complete new one, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {str(path)!r} is corrupt or not a softintrovae checkpoint ({reason[:120]})") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    final_metrics_path = property(lambda self: self.path / "metrics.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")

    @classmethod
    def create(cls, path: str | Path, config: Config) -> "RunDir":
        run = cls(path)
        if run.config_path.exists():
            raise UserError(f"run directory {str(run.path)!r} already holds a run; continue it with --resume {run.path}")
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run directory {str(run.path)!r} does not exist")
        if not run.config_path.is_file():
            raise UserError(f"{str(run.path)!r} is not a run directory (no config.yaml)")
        return run

    def load_config(self) -> Config:
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError:
            raise UserError(f"{str(self.config_path)!r} is not valid YAML") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(self.config_path)!r} does not hold a config mapping")
        return config_from_dict(data)

    def record_command(self, argv: list[str] | None = None) -> None:
        line = shlex.join(argv if argv is not None else ["softintrovae", *sys.argv[1:]])
        with open(self.path / "command.txt", "a") as f:
            f.write(line + "\n")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

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
        """Drop training records after ``step`` (logged after the checkpoint a resume starts from)."""
        kept = [r for r in self.read_log() if r.get("kind") != "train" or r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_final_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.final_metrics_path, json.dumps(metrics, indent=2) + "\n")

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
        path = self.checkpoint_dir / f"step_{step:07d}.pt"
        save_checkpoint(path, state)
        for old in self.checkpoints()[:-keep]:
            old.unlink()
        return path
