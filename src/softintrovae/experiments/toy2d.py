"""The paper's 2D study (§6.1): Table 2 with Figure 2, the IntroVAE margin study (Figure 3) and
posterior collapse (Figure 21), one function (and one ``softintrovae reproduce NAME``) each.

An experiment is a set of normal run directories under one output directory, trained by the sweep
machinery (worker processes, one torch thread each): re-running the command skips finished runs
and resumes unfinished ones, and ``report_only`` only re-reads what is there. The reports
(Markdown, CSV, PNG) are written next to the runs, from what the runs recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import load_config
from ..methods import METHODS as METHOD_CLASSES
from ..errors import UserError
from ..evaluation import load_final_arrays
from ..files import check_writable
from ..plots import plot_collapse, plot_method_grid, plot_stability
from ..rundir import RunDir, atomic_write_text
from ..sweep import Job, aggregate, default_workers, run_jobs
from ..yamlfiles import load_yaml
from .common import finished_metrics, markdown_table, mean_std, train_log, write_csv, write_markdown

DATASETS = ("8gaussians", "spiral", "checkerboard", "rings")
METHODS = ("vae", "introvae", "soft-introvae")
MARGINS = tuple(float(m) for m in range(1, 11))
ITERATIONS = 30000  # per run, as in the paper
DEFAULT_SEEDS = {"table2": 5, "stability": 3, "collapse": 3}

# Paper Table 2, mean over 5 seeds: gnELBO (×1e-7), KL, JSD (the official code's definition).
PAPER_TABLE2 = {
    "8gaussians": {"vae": (7.42, 6.72, 16.04), "introvae": (1.29, 2.53, 1.67), "soft-introvae": (1.25, 1.25, 0.96)},
    "spiral": {"vae": (6.19, 9.8, 4.89), "introvae": (5.87, 8.38, 3.58), "soft-introvae": (5.21, 8.13, 3.37)},
    "checkerboard": {"vae": (8.53, 20.91, 9.78), "introvae": (8.54, 19.03, 9.07), "soft-introvae": (4.47, 20.27, 9.06)},
    "rings": {"vae": (6.4, 13.16, 7.26), "introvae": (7.25, 10.21, 4.24), "soft-introvae": (6.3, 9.18, 4.13)},
}

# Figure 21 (§9.5): a KL weight high enough for a plain VAE to collapse its posterior.
COLLAPSE_SETTINGS = {"method.beta_kl": 1.0, "method.beta_rec": 0.5}
COLLAPSE_BETA_NEG = 5.0


@dataclass
class Settings:
    """What every run of one reproduction shares; a second call into the same directory must match."""

    experiment: str
    out: Path
    seeds: int
    iterations: int
    workers: int | None
    overrides: dict[str, Any]
    report_only: bool

    def check(self) -> None:
        if self.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {self.seeds}")
        if self.iterations < 1:
            raise UserError(f"--iterations must be >= 1, got {self.iterations}")
        check_writable(self.out, "experiment directory", folder=True)
        spec = {"experiment": self.experiment, "iterations": self.iterations, "overrides": self.overrides}
        path = self.out / "reproduce.yaml"
        if path.exists():
            held = load_yaml(path.read_text(), str(path)) or {}
            if held != spec:
                raise UserError(
                    f"{str(self.out)!r} holds a {held.get('experiment')} reproduction with {held.get('iterations')} iterations "
                    f"and overrides {held.get('overrides')}; use the same settings to continue it, or another --out"
                )
        elif not self.report_only or self.out.is_dir():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))

    def job(self, preset: str, seed: int, name: str, extra: dict[str, Any] | None = None, **label: Any) -> Job:
        overrides = {
            **(extra or {}),
            **self.overrides,
            "train.steps": self.iterations,
            "train.seed": seed,
            "data.seed": seed,
            "train.progress": False,
        }
        load_config(preset, overrides)  # one clear line for a bad key or value, before any work
        return Job(preset, overrides, self.out / name / f"seed{seed}", {**label, "seed": seed})

    def execute(self, jobs: list[Job]) -> list[tuple[Job, dict[str, float] | None]]:
        """Train what is missing (unless report-only); then (job, final metrics or None if diverged)."""
        if not self.report_only:
            pending = sorted((j for j in jobs if finished_metrics(j.path) is None), key=_remaining_cost, reverse=True)
            if pending:
                run_jobs(pending, self.workers or default_workers(len(pending)), desc=f"reproduce {self.experiment}")
        collected = []
        for job in jobs:
            metrics = finished_metrics(job.path)
            if metrics is not None or (job.path / "diverged.txt").exists():
                collected.append((job, metrics))
        if not collected:
            raise UserError(f"{str(self.out)!r} has no finished runs to report yet; run without --report-only")
        return collected


def _remaining_cost(job: Job) -> float:
    """Rough work left in a job, so the longest start first and the workers finish together."""
    config = load_config(job.source, job.overrides)
    checkpoint = RunDir(job.path).latest_checkpoint()
    done = int(checkpoint.stem.split("_")[-1]) if checkpoint is not None else 0
    warmup = 0 if config.method.name == "vae" else config.method.vae_warmup_steps
    total = config.train.steps
    warmup_left = max(0, min(warmup, total) - done)
    introspective_left = max(0, total - max(done, warmup))
    return warmup_left + METHOD_CLASSES[config.method.name].relative_step_cost * introspective_left


def _pick(values: Sequence[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    chosen = list(values or allowed)
    for value in chosen:
        if value not in allowed:
            raise UserError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    return chosen


def _wall_minutes(path: Path, metrics: dict[str, float]) -> float:
    """Training wall time of a run: recorded by the trainer, else (older runs) from its file times.

    The file-time estimate (config written first, final metrics last) is kept in ``wall_time.json``
    the first time it is taken, since copying or checking out a run directory changes file times.
    """
    if "train_seconds" in metrics:
        return metrics["train_seconds"] / 60
    sidecar = path / "wall_time.json"
    if not sidecar.exists():
        minutes = ((path / "metrics.json").stat().st_mtime - (path / "config.yaml").stat().st_mtime) / 60
        atomic_write_text(sidecar, json.dumps({"minutes": minutes, "source": "file times"}) + "\n")
    return json.loads(sidecar.read_text())["minutes"]


def _summarize(collected: list[tuple[Job, dict[str, float] | None]], keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job, metrics in collected:
        if metrics is not None:
            metrics = {**metrics, "wall_minutes": _wall_minutes(job.path, metrics)}
        rows.append(({k: job.label[k] for k in keys}, metrics))
    return aggregate(rows)


def _seeds(row: dict[str, Any]) -> str:
    """The finished runs of a row, and how many diverged if any did."""
    return f"{row['runs']} ({row['diverged']} diverged)" if row.get("diverged") else str(row["runs"])


def _value(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3g}" if key in row else "–"


def _first_arrays(collected: list[tuple[Job, dict[str, float] | None]], match: dict[str, Any]) -> dict | None:
    """The final samples and density of the lowest-seed finished run matching ``match``."""
    for job, metrics in sorted(collected, key=lambda jm: jm[0].label["seed"]):
        if metrics is not None and all(job.label[k] == v for k, v in match.items()):
            arrays = load_final_arrays(job.path)
            if arrays is None and RunDir(job.path).latest_checkpoint() is not None:
                from ..trainer import evaluate  # runs from before final_eval.npz existed: re-evaluate

                evaluate(job.path, argv=["softintrovae", "reproduce", "(figure)"])
                arrays = load_final_arrays(job.path)
            if arrays is not None:
                return arrays
    return None


def _header(settings: Settings, title: str, collected: list) -> list[str]:
    finished = sum(m is not None for _, m in collected)
    return [
        f"# {title}",
        "",
        f"{settings.iterations} iterations per run; seeds requested per row: {settings.seeds} ('seeds' = finished runs); "
        f"{finished} finished runs; 'min/run' is the training wall time of one run (one torch thread per run).",
        "",
    ]


# ---- Table 2 and Figure 2 ----------------------------------------------------------------------


def table2(
    out: str | Path = "runs/reproduce/table2",
    seeds: int = DEFAULT_SEEDS["table2"],
    iterations: int = ITERATIONS,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    report_only: bool = False,
) -> list[dict[str, Any]]:
    """VAE, IntroVAE and Soft-IntroVAE with Table 5's settings; our mean ± std next to the paper's."""
    datasets, methods = _pick(datasets, DATASETS, "dataset"), _pick(methods, METHODS, "method")
    settings = Settings("table2", Path(out), seeds, iterations, workers, dict(overrides or {}), report_only)
    settings.check()
    jobs = [
        settings.job(f"{m}-{d}", s, f"{m}-{d}", dataset=d, method=m) for d in datasets for m in methods for s in range(seeds)
    ]
    collected = settings.execute(jobs)
    table = _summarize(collected, ["dataset", "method"])
    for row in table:
        paper = PAPER_TABLE2[row["dataset"]][row["method"]]
        row["paper_gnelbo_1e7"], row["paper_kl"], row["paper_jsd"] = paper
    write_csv(settings.out / "table2.csv", table)

    lines = _header(settings, "Table 2: VAE, IntroVAE and Soft-IntroVAE on the 2D datasets", collected)
    lines += [
        "Ours: mean ± std over seeds; paper: mean over 5 seeds. gnELBO in 1e-7; JSD is the paper's definition "
        "(½[KL(M‖P) + KL(M‖Q)] on histograms), the textbook JSD beside it. Lower is better for all.",
        "",
    ]
    lines += markdown_table(
        ["dataset", "method", "seeds", "gnELBO", "paper", "KL", "paper", "JSD", "paper", "textbook JSD", "min/run"],
        [
            [row["dataset"], row["method"], _seeds(row), mean_std(row, "gnelbo", 1e7), row["paper_gnelbo_1e7"], mean_std(row, "kl"),
             row["paper_kl"], mean_std(row, "jsd_official"), row["paper_jsd"], mean_std(row, "jsd_textbook"), mean_std(row, "wall_minutes")]
            for row in table
        ],
    )  # fmt: skip
    write_markdown(settings.out / "table2.md", lines)

    cells = {(m, d): _first_arrays(collected, {"dataset": d, "method": m}) for d in datasets for m in methods}
    cells = {k: v for k, v in cells.items() if v is not None}
    plot_method_grid(cells, methods, datasets, settings.out / "figure2.png", f"Samples and exp(ELBO), {iterations} iterations")
    return table


# ---- Figure 3: stability in the margin -------------------------------------------------------


def stability(
    out: str | Path = "runs/reproduce/stability",
    seeds: int = DEFAULT_SEEDS["stability"],
    iterations: int = ITERATIONS,
    margins: Sequence[float] | None = None,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    report_only: bool = False,
) -> list[dict[str, Any]]:
    """IntroVAE on 8 Gaussians over margins m; Soft-IntroVAE with IntroVAE's β's (it has no m)."""
    margins = [float(m) for m in (margins or MARGINS)]
    if any(m <= 0 for m in margins):
        raise UserError(f"margins must be > 0, got {margins}")
    settings = Settings("stability", Path(out), seeds, iterations, workers, dict(overrides or {}), report_only)
    settings.check()
    intro = load_config("introvae-8gaussians").method
    shared = {"method.beta_rec": intro.beta_rec, "method.beta_kl": intro.beta_kl, "method.beta_neg": intro.beta_neg}
    jobs = [settings.job("soft-introvae-8gaussians", s, "soft-introvae", shared, method="soft-introvae", margin="–") for s in range(seeds)]
    for m in margins:
        jobs += [
            settings.job("introvae-8gaussians", s, f"introvae-m{m:g}", {"method.margin": m}, method="introvae", margin=m)
            for s in range(seeds)
        ]
    collected = settings.execute(jobs)
    table = _summarize(collected, ["method", "margin"])
    write_csv(settings.out / "stability.csv", table)

    lines = _header(settings, "Figure 3: IntroVAE's sensitivity to the margin m on 8 Gaussians", collected)
    lines += [
        f"IntroVAE: β_rec {intro.beta_rec}, β_kl {intro.beta_kl}, β_neg {intro.beta_neg} (Table 5) with m swept; "
        "Soft-IntroVAE: the same β's, no margin. JSD is the paper's definition.",
        "",
    ]
    lines += markdown_table(
        ["method", "m", "seeds", "KL", "JSD", "gnELBO (1e-7)", "min/run"],
        [
            [row["method"], row["margin"], _seeds(row), mean_std(row, "kl"), mean_std(row, "jsd_official"),
             mean_std(row, "gnelbo", 1e7), mean_std(row, "wall_minutes")]
            for row in table
        ],
    )  # fmt: skip
    intro_rows = [r for r in table if r["method"] == "introvae" and "kl_mean" in r]
    soft_rows = [r for r in table if r["method"] == "soft-introvae" and "kl_mean" in r]
    if intro_rows and soft_rows:
        curves = {
            name: np.array([[r[f"{metric}_mean"], r[f"{metric}_std"]] for r in intro_rows])
            for name, metric in (("KL", "kl"), ("JSD", "jsd_official"))
        }
        flat = {name: (soft_rows[0][f"{metric}_mean"], soft_rows[0][f"{metric}_std"]) for name, metric in (("KL", "kl"), ("JSD", "jsd_official"))}
        margins_done = np.array([r["margin"] for r in intro_rows])
        plot_stability(margins_done, curves, flat, settings.out / "stability.png", f"8 Gaussians, {iterations} iterations")
        spread = {name: float(c[:, 0].max() - c[:, 0].min()) for name, c in curves.items()}
        lines += ["", f"IntroVAE's range over m: KL {spread['KL']:.3g}, JSD {spread['JSD']:.3g}."]
    write_markdown(settings.out / "stability.md", lines)
    return table


# ---- Figure 21: posterior collapse -----------------------------------------------------------


def _kl_curve(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs of the logged KL of real data, on the steps all runs logged."""
    curves = [{r["step"]: r["kl"] for r in train_log(path) if "kl" in r} for path in paths]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(steps), np.array([np.mean([c[s] for c in curves]) for s in steps])


def collapse(
    out: str | Path = "runs/reproduce/collapse",
    seeds: int = DEFAULT_SEEDS["collapse"],
    iterations: int = ITERATIONS,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    report_only: bool = False,
) -> list[dict[str, Any]]:
    """8 Gaussians with β_kl 1.0, β_rec 0.5: the VAE's KL of real data → 0, Soft-IntroVAE's stays up."""
    settings = Settings("collapse", Path(out), seeds, iterations, workers, dict(overrides or {}), report_only)
    settings.check()
    soft = {**COLLAPSE_SETTINGS, "method.beta_neg": COLLAPSE_BETA_NEG}
    jobs = [settings.job("vae-8gaussians", s, "vae", COLLAPSE_SETTINGS, method="vae") for s in range(seeds)]
    jobs += [settings.job("soft-introvae-8gaussians", s, "soft-introvae", soft, method="soft-introvae") for s in range(seeds)]
    collected = settings.execute(jobs)
    table = _summarize(collected, ["method"])
    finished = {m: [j.path for j, metrics in collected if j.label["method"] == m and metrics is not None] for m in ("vae", "soft-introvae")}
    curves = {m: _kl_curve(paths) for m, paths in finished.items() if paths}
    for row in table:
        if row["method"] in curves:
            steps, kl = curves[row["method"]]
            row["kl_real_last"] = float(kl[-1])
            tail = kl[steps > steps[-1] * 0.9] if len(steps) > 1 else kl
            row["kl_real_last10pct"] = float(tail.mean())
    write_csv(settings.out / "collapse.csv", table)

    warmup = load_config("soft-introvae-8gaussians", {**settings.overrides, "train.steps": iterations}).method.vae_warmup_steps
    lines = _header(settings, "Figure 21: posterior collapse on 8 Gaussians (β_kl 1.0, β_rec 0.5)", collected)
    lines += [
        f"Soft-IntroVAE with β_neg {COLLAPSE_BETA_NEG} (its first {warmup} iterations are the VAE warm-up). "
        "'KL of real data' is the batch-mean KL(q(z|x) ‖ N(0, I)) logged during training, averaged over seeds; "
        "the final histogram KL / JSD compare samples with data.",
        "",
    ]
    lines += markdown_table(
        ["method", "seeds", "KL of real data, last logged", "mean over the last 10%", "histogram KL", "JSD", "min/run"],
        [
            [row["method"], row["runs"], _value(row, "kl_real_last"), _value(row, "kl_real_last10pct"), mean_std(row, "kl"),
             mean_std(row, "jsd_official"), mean_std(row, "wall_minutes")]
            for row in table
        ],
    )  # fmt: skip
    write_markdown(settings.out / "collapse.md", lines)
    samples = {m: a for m in curves if (a := _first_arrays(collected, {"method": m})) is not None}
    plot_collapse(curves, samples, warmup, settings.out / "collapse.png", f"Posterior collapse, 8 Gaussians, {iterations} iterations")
    return table


def plan(out: str | Path, seeds: int, iterations: int = ITERATIONS, report_only: bool = False, **_: Any) -> str:
    """What a call of table2, stability or collapse with these arguments will do, in one line."""
    return f"reporting from {out}" if report_only else f"seeds x iterations = {seeds} x {iterations} into {out}"


__all__ = ["DATASETS", "DEFAULT_SEEDS", "ITERATIONS", "METHODS", "PAPER_TABLE2", "collapse", "plan", "stability", "table2"]
