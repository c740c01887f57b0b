"""The paper's OOD detection (§6.5, Table 7) on this machine: for each in-distribution dataset, a
β-VAE and Soft-IntroVAE with the same preset and budget, each scored by
:func:`softintrovae.ood.run_ood` on the paper's out-set for it (and sklearn's digits for 28×28 grey
sets) where they load, the AUROCs next to the paper's.

Rows: ``datasets`` names the in-distribution sets (``fashion-mnist,mnist`` gives Table 7's two
MNIST rows), ``roots`` where each dataset lives (``mnist=PATH``; Debian's Fashion-MNIST is found by
itself). Runs train into ``OUT/<in-set>/<method>``; with ``runs`` two finished runs are scored
instead (their own in-set, reports in ``OUT/<method>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import TrainedModel, require_images
from ..errors import UserError
from ..config import DataConfig
from ..data import load_images
from ..ood import DatasetSpec, load_scored_images, run_ood
from .common import COMPARED_METHODS, compared_plan, compared_runs, markdown_table, write_json, write_markdown

# Paper Table 7 (AUROC by the ELBO, mean of 3 seeds): (in, out) -> (VAE, Soft-IntroVAE)
PAPER_TABLE7 = {
    ("mnist", "fashion-mnist"): (0.992, 0.999),
    ("fashion-mnist", "mnist"): (0.996, 0.999),
    ("cifar10", "svhn"): (0.378, 0.9987),
    ("svhn", "cifar10"): (0.936, 0.966),
}
OOD_CANDIDATES = ("digits", "mnist")  # 28x28 grey out-sets for a Fashion-MNIST model, used when present


def out_set_candidates(in_set: str) -> tuple[str, ...]:
    """The paper's out-sets for ``in_set`` (Table 7; sklearn's digits too for the MNIST family), else
    the 28×28 grey candidates."""
    paper = tuple(out for (inside, out) in PAPER_TABLE7 if inside == in_set)
    if not paper:
        return OOD_CANDIDATES
    return (*paper, "digits") if in_set in ("fashion-mnist", "mnist") else paper


def parse_roots(roots: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    """``["mnist=PATH", ...]`` (or a mapping) → {dataset: root}."""
    if roots is None or isinstance(roots, dict):
        return dict(roots or {})
    parsed = {}
    for text in roots:
        spec = DatasetSpec.parse(text)
        if spec.root is None:
            raise UserError(f"--roots takes NAME=ROOT entries, got {text!r}")
        parsed[spec.name] = spec.root
    return parsed


def available_out_sets(image_shape: tuple[int, ...], candidates: Sequence[str] = OOD_CANDIDATES, roots: dict[str, str] | None = None,
                       exclude: str | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """(out-sets, as NAME or NAME=ROOT, that load on this machine with the model's image shape; notes
    on those skipped). ``exclude`` is the in-set itself."""
    found, skipped = [], []
    for name in candidates:
        if name == exclude:
            continue
        spec = DatasetSpec(name, (roots or {}).get(name))
        try:
            load_scored_images(spec, "train", image_shape, limit=2, seed=0)
        except UserError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        found.append(spec.label)
    return found, skipped


def check_in_sets(datasets: Sequence[str], roots: dict[str, str], default_root: str | None = None) -> None:
    """Before anything trains: one line naming the first in-distribution set of ``datasets`` that does
    not load here (its root from ``roots``, else ``default_root``, else the dataset's default folder)."""
    for name in datasets:
        DatasetSpec.parse(name)  # a known image dataset
        root = roots.get(name, default_root)
        try:
            load_images(DataConfig(name=name, root=root), "train")
        except UserError as exc:
            raise UserError(f"in-distribution set {name}: {exc} (in reproduce ood: --roots {name}=ROOT)") from exc


def reproduce_ood(
    out: str | Path = "runs/reproduce/ood",
    runs: Sequence[str] | None = None,
    preset: str = "fashion-mnist-small",
    datasets: Sequence[str] | None = None,
    roots: Sequence[str] | dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    samples: int = 5,
    limit: int = 2000,
    progress: bool = True,
) -> dict:
    """Table 7 on this machine: per in-set of ``datasets`` (default: the preset's own), a β-VAE and a
    Soft-IntroVAE with the same preset and budget (trained into OUT/<in-set>/<method>, or ``runs`` =
    [VAE run, Soft-IntroVAE run] reused), scored on every available out-set; writes OUT/ood.md and
    OUT/ood.json, histograms beside each model's report. Returns {in-set: {method: results}}."""
    out, roots = Path(out), parse_roots(roots)
    if runs is not None and datasets:
        raise UserError("--runs scores two finished runs of one dataset: give --runs or --datasets, not both")
    if runs is not None:
        plans = {None: (compared_runs(out, runs, preset, {}, "ood"), out)}
    else:
        check_in_sets(datasets or [], roots, (overrides or {}).get("data.root"))
        plans = {}
        for in_set in datasets or [None]:
            where = out if in_set is None else out / in_set
            data = {} if in_set is None else {"data.name": in_set, **({"data.root": roots[in_set]} if in_set in roots else {})}
            plans[in_set] = (compared_runs(where, None, preset, {**(overrides or {}), **data}, "ood"), where)
    results = {}
    for in_set, (paths, where) in plans.items():
        row = {}
        for method, path in paths.items():
            model = TrainedModel.load(path)
            require_images(model, "OOD detection scores images, so it needs an image run")
            name = model.config.data.name
            found, skipped = available_out_sets(model.input_shape, out_set_candidates(name), roots, exclude=name)
            if not found:
                raise UserError(f"no out-of-distribution dataset for {name} loads on this machine ({'; '.join(skipped)})")
            report = where / method if in_set is None else path / "ood"
            row[method] = run_ood(model, found, score="elbo", samples=samples, limit=limit, report_dir=report, progress=progress)
            row[method]["skipped"] = skipped
        results[in_set or row[COMPARED_METHODS[0]]["in"]] = row
    single = runs is not None or not datasets
    write_json(out / "ood.json", next(iter(results.values())) if single else results)
    write_markdown(out / "ood.md", table7_markdown(results))
    return next(iter(results.values())) if single else results


def table7_markdown(results: dict) -> list[str]:
    """The lines of OUT/ood.md: both models' AUROCs by the ELBO and by importance-weighted log p(x)
    for every (in, out) pair, and the paper's."""
    rows, skipped, footers = [], set(), []
    first = next(iter(results.values()))[COMPARED_METHODS[1]]
    for row in results.values():
        vae, soft = (row[m] for m in COMPARED_METHODS)
        in_name = DatasetSpec.parse(soft["in"]).name
        for out_set in soft["auroc"]:
            paper = PAPER_TABLE7.get((in_name, DatasetSpec.parse(out_set).name))
            paper_cells = [f"{v:.4g}" for v in paper] if paper else ["–", "–"]
            cells = [f"{r['auroc_by_score'][score][out_set]:.4f}" for score in ("elbo", "iw") for r in (vae, soft)]
            rows.append([in_name, DatasetSpec.parse(out_set).name, *cells, *paper_cells])
        skipped |= set(vae.get("skipped", []) + soft.get("skipped", []))
        footers.append(f"{in_name}: VAE `{vae['run']}` (step {vae['step']}), Soft-IntroVAE `{soft['run']}` (step {soft['step']})")
    lines = [
        f"AUROC of each in-distribution set's held-out images against each out-set; ELBO (β = 1) and importance-weighted "
        f"log p(x) with M = {first['samples']}; up to {max(first['counts'].values())} images per set. "
        "Paper: Table 7, by the ELBO, mean of 3 seeds.",
        "",
    ]
    header = ["in", "out", "VAE (ELBO)", "Soft-IntroVAE (ELBO)", "VAE (IW)", "Soft-IntroVAE (IW)", "paper VAE", "paper Soft-IntroVAE"]
    lines += markdown_table(header, rows)
    if skipped:
        lines += ["", "Out-sets not available here: " + "; ".join(sorted(skipped)) + "."]
    lines += ["", "Runs: " + "; ".join(footers) + "."]
    return lines


def plan(out: str | Path, runs: Sequence[str] | None = None, datasets: Sequence[str] | None = None, **_: Any) -> str:
    """What a call of :func:`reproduce_ood` with these arguments will do, in one line."""
    if datasets and not runs:
        return f"training or reusing the VAE and Soft-IntroVAE for {', '.join(datasets)} in {Path(out)}/<dataset>"
    return compared_plan("scoring", out, runs)


__all__ = ["OOD_CANDIDATES", "PAPER_TABLE7", "available_out_sets", "check_in_sets", "out_set_candidates", "plan", "reproduce_ood", "table7_markdown"]
