"""Evaluation of trained models. Each evaluator returns metrics by name and writes its plots."""

from __future__ import annotations

from .toy2d import (
    compare_histograms,
    deterministic_negative_elbo,
    grid_normalized_elbo,
    histogram_density,
    histogram_jsd_official,
    histogram_jsd_textbook,
    histogram_kl,
    histogram_metrics,
    square_grid,
)

__all__ = [
    "compare_histograms",
    "deterministic_negative_elbo",
    "grid_normalized_elbo",
    "histogram_density",
    "histogram_jsd_official",
    "histogram_jsd_textbook",
    "histogram_kl",
    "histogram_metrics",
    "square_grid",
]
