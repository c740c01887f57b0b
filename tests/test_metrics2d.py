"""The 2D metrics on known inputs (SPEC §3 definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from softintrovae.metrics import (
    deterministic_negative_elbo,
    grid_normalized_elbo,
    histogram_density,
    histogram_jsd_official,
    histogram_jsd_textbook,
    histogram_kl,
    histogram_metrics,
    square_grid,
)

from .conftest import Progress


def test_identical_histograms_give_zero():
    points = np.random.default_rng(0).normal(size=(5000, 2))
    m = histogram_metrics(points, points.copy(), limit=2.0)
    assert m == pytest.approx({"kl": 0.0, "jsd_official": 0.0, "jsd_textbook": 0.0}, abs=1e-12)


def test_histogram_is_a_density():
    points = np.random.default_rng(0).uniform(-2, 2, size=(1000, 2))
    h = histogram_density(points, 2.0)  # 100 × 100 bins by default
    assert h.shape == (100, 100)
    assert h.sum() * (4 / 100) ** 2 == pytest.approx(1.0)


def test_histogram_rows_are_x_and_columns_y():
    # every point at (1, −1): the bin of x ∈ [0, 2) and y ∈ [−2, 0), density 1 / (2 · 2)
    h = histogram_density(np.tile([1.0, -1.0], (10, 1)), 2.0, bins=2)
    assert h.tolist() == [[0.0, 0.0], [0.25, 0.0]]


def test_histogram_metrics_use_the_bins_they_are_given_and_100_by_default():
    # (0.5, 0.5) and (1.5, 1.5) share a bin of 2 × 2 bins, not of 100 × 100
    m = histogram_metrics(np.full((10, 2), 0.5), np.full((10, 2), 1.5), limit=2.0, bins=2)
    assert m == pytest.approx({"kl": 0.0, "jsd_official": 0.0, "jsd_textbook": 0.0}, abs=1e-12)
    # Table 2's 100 × 100 bins by default: 0.005 and 0.015 share the bin [0, 0.02) over [−1, 1]
    # (with 99 or 101 bins a bin edge lies between them)
    m = histogram_metrics(np.full((10, 2), 0.005), np.full((10, 2), 0.015), limit=1.0)
    assert m == pytest.approx({"kl": 0.0, "jsd_official": 0.0, "jsd_textbook": 0.0}, abs=1e-12)


def test_kl_and_official_jsd_follow_the_batchmean_formula():
    p = np.array([[0.5, 0.0], [0.25, 0.25]])
    q = np.array([[0.25, 0.25], [0.25, 0.25]])
    expected_kl = (0.5 * math.log(0.5 / (0.25 + 1e-14)) + 2 * 0.25 * math.log(0.25 / (0.25 + 1e-14))) / 2
    assert histogram_kl(p, q) == pytest.approx(expected_kl)
    m = 0.5 * (p + q)

    def kl(a, b):
        return sum(ai * (math.log(ai) - math.log(bi + 1e-14)) for ai, bi in zip(a.flat, b.flat) if ai > 0) / 2

    assert histogram_jsd_official(p, q) == pytest.approx(0.5 * (kl(m, p) + kl(m, q)))


def test_textbook_jsd_of_disjoint_supports_is_log_two():
    p = np.array([[1.0, 0.0]])
    q = np.array([[0.0, 1.0]])
    assert histogram_jsd_textbook(p, q) == pytest.approx(math.log(2))
    assert histogram_kl(p, q) > 10  # log(1/1e-14) scale: disjoint is heavily penalised


def test_shifted_samples_score_worse_than_matching_samples():
    rng = np.random.default_rng(0)
    real = rng.normal(scale=0.5, size=(5000, 2))
    close = histogram_metrics(real, rng.normal(scale=0.5, size=(5000, 2)), limit=2.0)
    far = histogram_metrics(real, rng.normal(loc=1.0, scale=0.5, size=(5000, 2)), limit=2.0)
    assert far["kl"] > close["kl"] and far["jsd_official"] > close["jsd_official"]


class HalfEncoder(nn.Module):
    """μ = x/2 and σ² = 2 everywhere: KL = ½·Σ_d (μ_d² + 2 − 1 − log 2), not 0."""

    def forward(self, x):
        return x / 2, torch.full_like(x, math.log(2.0))


class IdentityDecoder(nn.Module):
    def forward(self, z):
        return z


def test_gnelbo_by_hand():
    # −ELBO(x) = KL(q(z|x) ‖ p(z)) + ‖x − D(μ)‖² with β = 1 and z = μ = x/2, D = identity
    data = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    grid = torch.tensor([[2.0, 2.0], [0.0, 0.0]])

    def by_hand(x, y):
        kl = 0.5 * ((x / 2) ** 2 + (y / 2) ** 2 + 2 * (1 - math.log(2)))
        return kl + (x / 2) ** 2 + (y / 2) ** 2

    ne_data = deterministic_negative_elbo(HalfEncoder(), IdentityDecoder(), data)
    ne_grid = deterministic_negative_elbo(HalfEncoder(), IdentityDecoder(), grid)
    assert ne_data.tolist() == pytest.approx([by_hand(1, 0), by_hand(0, 2)])
    assert ne_grid.tolist() == pytest.approx([by_hand(2, 2), by_hand(0, 0)])
    expected = (by_hand(1, 0) + by_hand(0, 2)) / 2 / (by_hand(2, 2) + by_hand(0, 0) + by_hand(1, 0) + by_hand(0, 2))
    assert grid_normalized_elbo(ne_data, ne_grid) == pytest.approx(expected)


def test_passes_of_batch_size_points_give_every_point_its_value_once():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    progress = Progress()
    in_passes = deterministic_negative_elbo(HalfEncoder(), IdentityDecoder(), x, batch_size=3, progress=progress)
    assert progress.updates == [3, 3, 3, 1]
    assert torch.equal(in_passes, deterministic_negative_elbo(HalfEncoder(), IdentityDecoder(), x))


def test_square_grid_is_row_major_in_y_then_x():
    assert square_grid(1.0, 3).tolist() == [[x, y] for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)]
