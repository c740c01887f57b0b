"""The paper's content transfer (§6.4, Table 4) on this machine: Soft-IntroVAE against a plain VAE
with the same translation architecture, data and budget, their transfer errors on held-out classes
and Figure-7 matrices of the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import TrainedModel
from ..translation import ACTIVE_UNIT_THRESHOLD, evaluate_transfer, translate
from .common import COMPARED_METHODS, compared_plan, compared_runs, finished_metrics, markdown_table, train_log, write_json, write_markdown

PAPER_TABLE4 = {"LORD (supervised)": 0.078, "Soft-IntroVAE (unsupervised)": 0.084}  # Cars3D, LPIPS


def reproduce_translation(
    out: str | Path = "runs/reproduce/translation",
    runs: Sequence[str] | None = None,
    preset: str = "translation-rendered-small",
    overrides: dict[str, Any] | None = None,
    pairs: int = 2000,
    seed: int = 0,
) -> dict:
    """A plain VAE and Soft-IntroVAE with the same translation architecture, data and budget (trained into
    OUT/vae and OUT/soft-introvae, reused when finished, or ``runs`` = [VAE run, Soft-IntroVAE run]);
    their transfer errors on held-out classes and Figure-7 matrices of the same images. Writes
    OUT/translation.md, OUT/translation.json and OUT/<method>_transfer.png."""
    out = Path(out)
    results = {}
    for method, path in compared_runs(out, runs, preset, overrides or {}, "translation").items():
        model = TrainedModel.load(path)  # once, for both the errors and the matrix
        found = evaluate_transfer(model, pairs=pairs, seed=seed)
        matrix = translate(model, seed=seed, out=out / f"{method}_transfer.png")
        log = train_log(path)
        last = log[-1] if log else {}
        results[method] = {
            "run": str(path),
            "method": model.method,
            **{k: found[k] for k in ("step", "pairs", "transfer", "copy_content", "copy_class", "reconstruction", "latents", "lpips_note")},
            "kl_content": last.get("kl_content"),
            "kl_class": last.get("kl_class"),
            "train_minutes": (finished_metrics(path) or {}).get("train_seconds", float("nan")) / 60,
            "matrix": str(matrix.path),
        }
    write_json(out / "translation.json", results)
    write_markdown(out / "translation.md", translation_markdown(results))
    return results


def translation_markdown(results: dict) -> list[str]:
    """The lines of OUT/translation.md: both models' transfer errors between the two copy answers, their latent usage."""
    vae, soft = (results[m] for m in COMPARED_METHODS)
    metrics = ("mse", "ssim", "lpips") if "lpips" in soft["transfer"] else ("mse", "ssim")
    columns = {"mse": "MSE ↓", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}

    def errors(found: dict) -> list[str]:
        return [f"{found[k]:.4f}" for k in metrics]

    def usage(row: dict, latent: str) -> str:
        u = row.get("latents", {}).get(latent)
        return f"{u['kl']:.3g} ({u['kl_offset']:.2g}), {u['active_units']}/{u['dims']}" if u else "–"

    lines = [
        f"Content transfer on held-out classes: decode(class of A, content of B) against the rendered image of A's "
        f"object in B's pose, {soft['pairs']} random pairs of different classes; MSE per pixel in [0, 1].",
        "",
    ]
    header = ["", *(columns[k] for k in metrics), "reconstruction MSE", "content KL (offset), active", "class KL (offset), active", "steps", "train min"]
    rows = [
        [name, *errors(row["transfer"]), f"{row['reconstruction']['mse']:.4f}", usage(row, "content"), usage(row, "class"),
         row["step"], f"{row['train_minutes']:.1f}"]
        for name, row in (("VAE", vae), ("Soft-IntroVAE", soft))
    ]  # fmt: skip
    rows += [
        ["answer B itself (copy content)", *errors(soft["copy_content"]), *[""] * 5],
        ["answer A itself (copy class)", *errors(soft["copy_class"]), *[""] * 5],
    ]
    lines += markdown_table(header, rows)
    lines += [
        "",
        "KL: mean over the held-out images, in nats; offset: the part of it that is a shift shared by all images "
        f"(½‖E_x μ‖², no information about x); active: latent units whose posterior mean varies across images "
        f"(variance > {ACTIVE_UNIT_THRESHOLD}).",
    ]
    if "lpips" not in metrics:
        lines += ["", f"LPIPS skipped: {soft['lpips_note']}."]
    lines += [
        "",
        "Paper, Table 4 (Cars3D, LPIPS, not comparable with these numbers): "
        + ", ".join(f"{k} {v}" for k, v in PAPER_TABLE4.items())
        + ".",
        "",
        f"Runs: VAE `{vae['run']}`, Soft-IntroVAE `{soft['run']}`; matrices: `{Path(vae['matrix']).name}`, `{Path(soft['matrix']).name}`.",
    ]
    return lines


def plan(out: str | Path, runs: Sequence[str] | None = None, **_: Any) -> str:
    """What a call of :func:`reproduce_translation` with these arguments will do, in one line."""
    return compared_plan("evaluating", out, runs)


__all__ = ["PAPER_TABLE4", "plan", "reproduce_translation", "translation_markdown"]
