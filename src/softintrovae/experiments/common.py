"""What the paper's studies share: one train-or-reuse of a run directory, the finished-run check,
and the writers of their tables (Markdown, CSV, JSON).

A run directory is reused when it finished, resumed when it did not, trained when it is missing;
that logic is the library's (:func:`softintrovae.sweep.train_or_resume`), re-exported here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import check_writable
from ..rundir import RunDir, atomic_write_text
from ..sweep import finished_metrics, train_or_resume

# Tables 4 and 7 compare a plain (β-)VAE with Soft-IntroVAE: same preset, data and budget.
COMPARED_METHODS = ("vae", "soft-introvae")


def reproduce_command(experiment: str, overrides: dict[str, Any]) -> list[str]:
    """The command that trains a run of ``experiment``, for its command.txt: ``softintrovae reproduce NAME --set k=v ...``."""
    return ["softintrovae", "reproduce", experiment, *(a for key, value in overrides.items() for a in ("--set", f"{key}={value}"))]


def compared_runs(out: Path, runs: Sequence[str] | None, preset: str, overrides: dict[str, Any], experiment: str) -> dict[str, Path]:
    """Method → run directory for :data:`COMPARED_METHODS`: ``runs`` as given (the VAE's, then
    Soft-IntroVAE's), else OUT/vae and OUT/soft-introvae trained from ``preset``, resumed or reused."""
    if runs is not None and len(runs) != 2:
        raise UserError(f"--runs takes two run directories, the VAE's then the Soft-IntroVAE's; got {len(runs)}")
    check_writable(out, "experiment directory", folder=True)
    if runs:
        return {method: Path(run) for method, run in zip(COMPARED_METHODS, runs)}
    for method in COMPARED_METHODS:
        train_or_resume(preset, {**overrides, "method.name": method}, out / method, reproduce_command(experiment, overrides))
    return {method: out / method for method in COMPARED_METHODS}


def compared_plan(verb: str, out: Path, runs: Sequence[str] | None) -> str:
    """The CLI's first line for a comparison: ``scoring RUN, RUN`` (``verb``) or where it trains."""
    return f"{verb} " + ", ".join(runs) if runs else f"training or reusing the VAE and Soft-IntroVAE in {out}"


def train_log(path: Path) -> list[dict[str, Any]]:
    """The training records (``kind: train``) a run logged in its metrics.jsonl, in order."""
    return [r for r in RunDir(path).read_log() if r.get("kind") == "train"]


# ---- tables --------------------------------------------------------------------------------------


def mean_std(row: dict[str, Any], metric: str, scale: float = 1.0) -> str:
    """``mean ± std`` of ``metric`` in a row of :func:`softintrovae.sweep.aggregate`, "–" when no run has it."""
    if f"{metric}_mean" not in row:
        return "–"
    return f"{row[f'{metric}_mean'] * scale:.3g} ± {row[f'{metric}_std'] * scale:.2g}"


def markdown_row(cells: Sequence[Any]) -> str:
    """``| a | b |``; an empty cell is ``| |``."""
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]] = ()) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row."""
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(row) for row in rows)]


def write_markdown(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One column per key in any row (first-seen order); a row without a key leaves its cell empty."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


__all__ = [
    "COMPARED_METHODS",
    "compared_plan",
    "compared_runs",
    "finished_metrics",
    "markdown_row",
    "markdown_table",
    "mean_std",
    "reproduce_command",
    "train_log",
    "train_or_resume",
    "write_csv",
    "write_json",
    "write_markdown",
]
