"""The paper's OOD detection (§6.5, Table 7) on this machine: a β-VAE and Soft-IntroVAE with the same
preset and budget, each scored by :func:`softintrovae.ood.run_ood` on every out-set available here,
their AUROCs next to the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..ood import DatasetSpec, load_scored_images, run_ood
from ..checkpoint import TrainedModel
from ..checkpoint import require_images
from .common import COMPARED_METHODS, compared_plan, compared_runs, markdown_table, write_json, write_markdown

# Paper Table 7 (AUROC by the ELBO, mean of 3 seeds): (in, out) -> (VAE, Soft-IntroVAE)
PAPER_TABLE7 = {
    ("mnist", "fashion-mnist"): (0.992, 0.999),
    ("fashion-mnist", "mnist"): (0.996, 0.999),
    ("cifar10", "svhn"): (0.378, 0.9987),
    ("svhn", "cifar10"): (0.936, 0.966),
}
OOD_CANDIDATES = ("digits", "mnist")  # 28x28 grey out-sets for a Fashion-MNIST model, used when present


def available_out_sets(image_shape: tuple[int, ...], candidates: tuple[str, ...] = OOD_CANDIDATES) -> tuple[list[str], list[str]]:
    """(out-sets that load on this machine with the model's image shape, notes on those skipped)."""
    found, skipped = [], []
    for name in candidates:
        try:
            load_scored_images(DatasetSpec(name), "train", image_shape, limit=2, seed=0)
        except UserError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        found.append(name)
    return found, skipped


def reproduce_ood(
    out: str | Path = "runs/reproduce/ood",
    runs: Sequence[str] | None = None,
    preset: str = "fashion-mnist-small",
    overrides: dict[str, Any] | None = None,
    samples: int = 5,
    limit: int = 2000,
    progress: bool = True,
) -> dict:
    """Table 7 on this machine: a β-VAE and a Soft-IntroVAE with the same preset and budget (trained
    into OUT/vae and OUT/soft-introvae, or ``runs`` = [VAE run, Soft-IntroVAE run] reused), scored on
    every available out-set; writes OUT/ood.md and OUT/ood.json, histograms in OUT/<method>/."""
    out = Path(out)
    paths = compared_runs(out, runs, preset, overrides or {}, "ood")
    results = {}
    for method, path in paths.items():
        model = TrainedModel.load(path)
        require_images(model, "OOD detection scores images, so it needs an image run")
        found, skipped = available_out_sets(model.input_shape)
        if not found:
            raise UserError(f"no out-of-distribution dataset loads on this machine ({'; '.join(skipped)})")
        results[method] = run_ood(model, found, score="elbo", samples=samples, limit=limit, report_dir=out / method, progress=progress)
        results[method]["skipped"] = skipped
    write_json(out / "ood.json", results)
    write_markdown(out / "ood.md", table7_markdown(results))
    return results


def table7_markdown(results: dict) -> list[str]:
    """The lines of OUT/ood.md: both models' AUROCs by the ELBO and by importance-weighted log p(x), and the paper's."""
    vae, soft = (results[m] for m in COMPARED_METHODS)
    in_name = DatasetSpec.parse(soft["in"]).name
    lines = [
        f"AUROC of {soft['reference']} against each out-set; ELBO (β = 1) and importance-weighted log p(x) "
        f"with M = {soft['samples']}; up to {max(soft['counts'].values())} images per set. Paper: Table 7, by the ELBO, mean of 3 seeds.",
        "",
    ]
    rows = []
    for out_set in soft["auroc"]:
        paper = PAPER_TABLE7.get((in_name, out_set))
        paper_cells = [f"{v:.4g}" for v in paper] if paper else ["–", "–"]
        cells = [f"{r['auroc_by_score'][score][out_set]:.4f}" for score in ("elbo", "iw") for r in (vae, soft)]
        rows.append([in_name, out_set, *cells, *paper_cells])
    header = ["in", "out", "VAE (ELBO)", "Soft-IntroVAE (ELBO)", "VAE (IW)", "Soft-IntroVAE (IW)", "paper VAE", "paper Soft-IntroVAE"]
    lines += markdown_table(header, rows)
    skipped = sorted(set(vae.get("skipped", []) + soft.get("skipped", [])))
    if skipped:
        lines += ["", "Out-sets not available here: " + "; ".join(skipped) + "."]
    lines += ["", f"Runs: VAE `{vae['run']}` (step {vae['step']}), Soft-IntroVAE `{soft['run']}` (step {soft['step']})."]
    return lines


def plan(out: str | Path, runs: Sequence[str] | None = None, **_: Any) -> str:
    """What a call of :func:`reproduce_ood` with these arguments will do, in one line."""
    return compared_plan("scoring", out, runs)


__all__ = ["OOD_CANDIDATES", "PAPER_TABLE7", "available_out_sets", "plan", "reproduce_ood", "table7_markdown"]
