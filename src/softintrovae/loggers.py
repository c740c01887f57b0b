"""Loggers: where a run's records go (``train.loggers``), written as callbacks (:mod:`softintrovae.callbacks`).

- ``jsonl`` (always): ``RUN/metrics.jsonl``, the run's own record that resuming, sweeps and the
  reports read;
- ``tensorboard``: event files under ``RUN/tensorboard/`` — every record's numbers as scalars
  (``train/loss_encoder``, ``eval/kl``, ``final/...``), each evaluation's pictures (samples,
  reconstructions, density) as images, and the resolved config as text. Needs the ``tensorboard``
  package (``pip install 'softintrovae[tensorboard]'``); ``tensorboard --logdir runs`` shows every run;
- ``csv``: ``RUN/csv/KIND.csv``, one table per record kind (train, eval, final, skipped), a column per key.

A resumed run continues its logs from the checkpoint's step: TensorBoard discards the events written
after it (``purge_step``) and the CSV tables the rows after it, as metrics.jsonl does, so steps
repeated after a crash are not logged twice.
"""

from __future__ import annotations

import csv
import numbers
from pathlib import Path
from typing import Any

import yaml

from .callbacks import Callback
from .errors import UserError


class JsonlLogger(Callback):
    """Every record as a JSON line of ``RUN/metrics.jsonl``."""

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        trainer.run.log(record)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers, named ``KIND/KEY`` (``step`` and non-numbers left out)."""
    kind = record.get("kind", "record")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


class TensorBoardLogger(Callback):
    """Scalars, pictures and the config as TensorBoard event files in ``RUN/tensorboard``."""

    FOLDER = "tensorboard"

    def __init__(self) -> None:
        try:  # checked when the trainer is built, before a run directory exists
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.loggers tensorboard needs the tensorboard package: pip install 'softintrovae[tensorboard]'") from None
        self.summary_writer, self.writer = SummaryWriter, None

    def on_train_start(self, trainer: Any) -> None:
        # a resumed run drops what was logged after its checkpoint: those steps are trained again
        self.writer = self.summary_writer(str(trainer.run.path / self.FOLDER), purge_step=trainer.step + 1 if trainer.step else None)
        config = yaml.safe_dump(trainer.config.to_dict(), sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in config.splitlines()), trainer.step)  # Markdown code

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float], final: bool) -> None:
        import numpy as np
        from PIL import Image

        for name, path in trainer.evaluator.pictures.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"{'final' if final else 'eval'}/{name}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def on_checkpoint(self, trainer: Any, step: int, path: Path | None) -> None:
        self.writer.flush()

    def on_train_end(self, trainer: Any, metrics: dict[str, float] | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CsvLogger(Callback):
    """``RUN/csv/KIND.csv``: one table per record kind; a key first seen later widens its table."""

    FOLDER = "csv"

    def __init__(self) -> None:
        self.columns: dict[str, list[str]] = {}

    def on_train_start(self, trainer: Any) -> None:
        self.folder = trainer.run.path / self.FOLDER
        self.folder.mkdir(exist_ok=True)
        for path in self.folder.glob("*.csv"):  # a resumed run: rows after the checkpoint are trained again
            header, rows = self._read(path)
            kept = [row for row in rows if float(row.get("step") or 0) <= trainer.step]
            self._write(path, header, kept)
            self.columns[path.stem] = header

    @staticmethod
    def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    @staticmethod
    def _write(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "record"))
        path = self.folder / f"{kind}.csv"
        header = self.columns.get(kind)
        new = [key for key in record if key not in (header or [])]
        if header is None or new:  # a new table, or a wider one: rewrite it with the new columns
            header = (header or []) + new
            self._write(path, header, self._read(path)[1] if path.exists() else [])
            self.columns[kind] = header
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerow(record)


LOGGERS: dict[str, type[Callback]] = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger, "csv": CsvLogger}


def build_loggers(names: list[str]) -> list[Callback]:
    """The loggers ``train.loggers`` names, metrics.jsonl's first."""
    return [LOGGERS[name]() for name in dict.fromkeys(["jsonl", *names])]


__all__ = ["LOGGERS", "CsvLogger", "JsonlLogger", "TensorBoardLogger", "build_loggers", "scalars"]
