"""The 2D toy distributions: determinism, shapes and the geometry SPEC §3 describes."""

from __future__ import annotations

import math

import pytest
import torch

from softintrovae.data import TOY2D, Toy2DStream


@pytest.mark.parametrize("name", sorted(TOY2D))
def test_batches_are_deterministic_per_step_and_differ_across_steps(name):
    a, b = Toy2DStream(name, 101, seed=3), Toy2DStream(name, 101, seed=3)
    assert a.batch(7).shape == (101, 2)
    assert torch.equal(a.batch(7), b.batch(7))
    assert not torch.equal(a.batch(7), a.batch(8))
    assert not torch.equal(a.batch(7), Toy2DStream(name, 101, seed=4).batch(7))
    stream = a.batches(start_step=7)
    assert torch.equal(next(stream), a.batch(7)) and torch.equal(next(stream), a.batch(8))


def test_eight_gaussians_points_sit_near_their_centres():
    x = TOY2D["8gaussians"].sample(4000, torch.Generator().manual_seed(0)) * 1.414
    angles = torch.arange(8) * math.pi / 4
    centres = 2 * torch.stack([angles.cos(), angles.sin()], 1)
    nearest = torch.cdist(x, centres).min(1)
    assert nearest.values.max() < 0.15  # σ = 0.02
    assert torch.bincount(nearest.indices, minlength=8).min() > 350  # every mode is used


def test_checkerboard_only_fills_alternate_squares():
    x = TOY2D["checkerboard"].sample(5000, torch.Generator().manual_seed(0)) / 2
    cells = torch.floor(x).long()
    assert x.abs().max() <= 2
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_rings_have_four_radii():
    x = TOY2D["rings"].sample(8000, torch.Generator().manual_seed(0))
    radius = x.norm(dim=1) / 3
    for r in (1.0, 0.75, 0.5, 0.25):
        share = ((radius - r).abs() < 0.06).float().mean().item()
        assert share > 0.15, r


def test_spiral_arms_are_point_symmetric_and_odd_sizes_work():
    x = TOY2D["spiral"].sample(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, 2)
    x = TOY2D["spiral"].sample(20000, torch.Generator().manual_seed(0))
    assert x.mean(0).abs().max() < 0.05
    assert x.abs().max() < 4
