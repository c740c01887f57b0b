"""Out-of-distribution detection with a trained image run (paper §6.5, Table 7, Figure 8).

A model trained on one dataset scores held-out images of it (in-distribution) and images of other
datasets (out-of-distribution) with a likelihood (:mod:`softintrovae.likelihood`); the AUROC of
telling the two apart by that score, in-distribution as the positive class and higher score meaning
"more like the training data", is the paper's measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DataConfig
from .data import HAS_TEST_SPLIT, IMAGE_DATASETS, load_images
from .errors import UserError
from .checkpoint import TrainedModel, as_trained, require_images
from .files import check_writable
from .likelihood import SCORES
from .plots import plot_roc_curves, plot_score_histograms
from .rundir import atomic_write_text


@dataclass(frozen=True)
class DatasetSpec:
    """``NAME`` or ``NAME=ROOT`` on the command line (e.g. ``digits``, ``npz=other.npz``)."""

    name: str
    root: str | None = None

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        name, _, root = text.partition("=")
        if name not in IMAGE_DATASETS:
            raise UserError(f"unknown image dataset {name!r} in {text!r} (known: {', '.join(IMAGE_DATASETS)})")
        return cls(name, root or None)

    @property
    def label(self) -> str:
        return self.name if self.root is None else f"{self.name}={self.root}"


def load_scored_images(spec: DatasetSpec, split: str, image_shape: tuple[int, ...], limit: int, seed: int):
    """Up to ``limit`` float images of ``spec`` (a fixed random subset) and their labels.

    One line names a dataset whose images do not match the model's input shape.
    """
    data = DataConfig(name=spec.name, root=spec.root, image_size=image_shape[-1])
    images, labels = load_images(data, split)
    if tuple(images.shape[1:]) != tuple(image_shape):
        c, h, w = images.shape[1:]
        raise UserError(
            f"dataset {spec.label!r} has {c}x{h}x{w} images, but the model takes {'x'.join(map(str, image_shape))}"
        )
    if len(images) > limit:
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]
        images, labels = images[index], None if labels is None else labels[index]
    return images.float().div(255), labels


def _scores_and_target(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All scores and their binary targets: in-distribution positive (1), out-of-distribution 0."""
    scores = torch.cat([in_scores, out_scores]).double()
    target = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).long()
    return scores, target


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """AUROC of separating in- (positive) from out-of-distribution scores, higher = more "in"."""
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(*_scores_and_target(in_scores, out_scores)))


def roc_curve(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over all thresholds, as :func:`auroc` counts them."""
    from torchmetrics.functional.classification import binary_roc

    fpr, tpr, _ = binary_roc(*_scores_and_target(in_scores, out_scores))
    return fpr.numpy(), tpr.numpy()


def run_ood(
    run_dir: TrainedModel | str | Path,
    out_sets: list[str],
    in_set: str | None = None,
    score: str = "iw",
    samples: int = 5,
    limit: int = 2000,
    seed: int = 0,
    report_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Score in-train, in-test and each out-set with the run's latest checkpoint; write
    ``ood.json``, ``ood.md``, ``scores.png`` (histograms) and ``roc.png`` into ``report_dir``
    (default RUN_DIR/ood); return the JSON's content. Figures and ``auroc`` use ``score``;
    ``auroc_by_score`` has every score's AUROC (they come from the same forward passes)."""
    if score not in SCORES:
        raise UserError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    if limit < 2:
        raise UserError(f"--limit must be >= 2, got {limit}")
    if not out_sets:
        raise UserError("give at least one out-of-distribution dataset with --out")
    outs = [DatasetSpec.parse(text) for text in out_sets]
    model = as_trained(run_dir)
    config = model.config
    inside = DatasetSpec.parse(in_set) if in_set else DatasetSpec(config.data.name, config.data.root)
    shape = model.input_shape
    require_images(model, "OOD detection scores images, so it needs an image run")
    if model.num_classes:
        raise UserError("OOD scores of a class-conditional model would need the out-sets' labels; use an unconditional run")
    report = check_writable(Path(report_dir) if report_dir else (model.run_dir or model.checkpoint.parent) / "ood", "report folder", folder=True)

    every: dict[str, dict[str, torch.Tensor]] = {}  # set name -> score name -> (N,)
    loaded = {"in-train": load_scored_images(inside, "train", shape, limit, seed)}
    if inside.name in HAS_TEST_SPLIT:
        loaded["in-test"] = load_scored_images(inside, "test", shape, limit, seed)
    for spec in outs:
        loaded[spec.label] = load_scored_images(spec, "test" if spec.name in HAS_TEST_SPLIT else "train", shape, limit, seed)
    method = config.method
    total = sum(len(images) for images, _ in loaded.values())
    with tqdm(total=total, desc=f"ood scores ({score}, M={samples})", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for name, (images, _) in loaded.items():
            every[name] = model.scores(images, samples=samples, seed=seed, progress=bar)
    sets = {name: scores[score] for name, scores in every.items()}

    reference = "in-test" if "in-test" in sets else "in-train"
    results = {
        "run": str(model.run_dir or model.checkpoint),
        "step": model.step,
        "score": score,
        "samples": samples,
        "in": inside.label,
        "reference": reference,
        "counts": {name: len(values) for name, values in sets.items()},
        "mean_score": {name: float(values.mean()) for name, values in sets.items()},
        "auroc": {spec.label: auroc(sets[reference], sets[spec.label]) for spec in outs},
        "auroc_by_score": {
            name: {spec.label: auroc(every[reference][name], every[spec.label][name]) for spec in outs} for name in SCORES
        },
    }
    report.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report / "ood.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(report / "ood.md", ood_markdown(results))
    title = f"{config.name} (step {model.step}), score {score}, M={samples}"
    plot_score_histograms({name: values.numpy() for name, values in sets.items()}, report / "scores.png", title)
    curves = {spec.label: (*roc_curve(sets[reference], sets[spec.label]), results["auroc"][spec.label]) for spec in outs}
    plot_roc_curves(curves, report / "roc.png", f"{title}: {reference} vs out")
    results["report"] = str(report)
    return results


def ood_markdown(results: dict) -> str:
    lines = [
        f"Run `{results['run']}` (step {results['step']}), score `{results['score']}` with M = {results['samples']};",
        f"AUROC of {results['reference']} ({results['in']}, positive) against each out-set; higher score = more in-distribution.",
        "",
        "| in | out | AUROC | images (in / out) | mean score in | mean score out |",
        "|---|---|---|---|---|---|",
    ]
    ref = results["reference"]
    for name, value in results["auroc"].items():
        lines.append(
            f"| {results['in']} | {name} | {value:.4f} | {results['counts'][ref]} / {results['counts'][name]} | "
            f"{results['mean_score'][ref]:.4g} | {results['mean_score'][name]:.4g} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "DatasetSpec",
    "auroc",
    "load_scored_images",
    "ood_markdown",
    "roc_curve",
    "run_ood",
]
