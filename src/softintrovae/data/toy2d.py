"""The 2D toy distributions of paper §6.1, generated on the fly from a seed.

Each follows SPEC §3 (the official code's recipe), so that KL/JSD/gnELBO compare with Table 2.
Functions take a sample count and a ``torch.Generator`` and return ``(n, 2)`` float32 points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """Centres at radius 2 every 45°, noise σ = 0.02, every point divided by 1.414."""
    angle = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (centres + 0.02 * torch.randn(n, 2, generator=g)) / 1.414


def twenty_five_gaussians(n: int, g: torch.Generator) -> Tensor:
    """A 5×5 grid of centres at {−4, −2, 0, 2, 4}², noise σ = 0.05, divided by 2.828 (WGAN-GP)."""
    centres = (torch.randint(0, 5, (n, 2), generator=g).float() - 2.0) * 2.0
    return (centres + 0.05 * torch.randn(n, 2, generator=g)) / 2.828


def spiral(n: int, g: torch.Generator) -> Tensor:
    """Two spiral arms ("2spirals"): n = √U·540°, arm 2 the negation of arm 1, /3, + 0.1·N(0, I)."""
    half = n // 2
    t = torch.sqrt(torch.rand(half, 1, generator=g)) * math.radians(540)
    arm_x = -torch.cos(t) * t + torch.rand(half, 1, generator=g) * 0.5
    arm_y = torch.sin(t) * t + torch.rand(half, 1, generator=g) * 0.5
    arm = torch.cat([arm_x, arm_y], dim=1)
    points = torch.cat([arm, -arm])
    if n % 2:  # odd n: one more point from the first arm
        points = torch.cat([points, arm[:1]])
    return points / 3 + 0.1 * torch.randn(n, 2, generator=g)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """x1 ~ U[−2, 2), x2 = U[0, 1) − 2·Bernoulli(½) + (⌊x1⌋ mod 2), both ×2."""
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1).remainder(2)
    return torch.stack([x1, x2], dim=1) * 2


def rings(n: int, g: torch.Generator) -> Tensor:
    """Circles of radius 1, 0.75, 0.5, 0.25 (equal shares) ×3, resampled with replacement, + 0.08·N(0, I)."""
    per_ring = -(-n // 4)
    angles = torch.arange(per_ring) * (2 * math.pi / per_ring)
    circle = torch.stack([angles.cos(), angles.sin()], dim=1)
    points = torch.cat([r * circle for r in (1.0, 0.75, 0.5, 0.25)]) * 3.0
    picks = torch.randint(0, points.shape[0], (n,), generator=g)
    return points[picks] + 0.08 * torch.randn(n, 2, generator=g)


@dataclass(frozen=True)
class Toy2DSpec:
    sample: Callable[[int, torch.Generator], Tensor]
    limit: float  # plots and metrics use the square [−limit, limit]²


TOY2D: dict[str, Toy2DSpec] = {
    "8gaussians": Toy2DSpec(eight_gaussians, 2.0),
    "25gaussians": Toy2DSpec(twenty_five_gaussians, 2.0),
    "spiral": Toy2DSpec(spiral, 4.0),
    "checkerboard": Toy2DSpec(checkerboard, 4.0),
    "rings": Toy2DSpec(rings, 4.0),
}


class Toy2DStream:
    """An endless stream of fresh batches; batch ``k`` depends only on (seed, k), so resuming is exact.

    Process ``rank`` > 0 of a data-parallel job draws its own points: batch ``k`` depends on
    (seed, k, rank); rank 0 draws what a single process draws.
    """

    input_shape = (2,)
    num_classes = 0
    steps_per_epoch = None  # endless: no epochs

    def __init__(self, name: str, batch_size: int, seed: int = 0, rank: int = 0):
        self.name, self.batch_size, self.seed, self.rank = name, batch_size, seed, rank
        self.spec = TOY2D[name]
        self.limit = self.spec.limit

    @property
    def source(self) -> "Toy2DStream":
        """The stream evaluation samples from (itself)."""
        return self

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.spec.sample(n, generator)

    def batch(self, step: int) -> Tensor:
        # torch's CPU generator keeps 32 bits of a seed: mix (seed, step) into them
        entropy = [self.seed, step] + ([self.rank] if self.rank else [])
        key = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        return self.sample(self.batch_size, torch.Generator().manual_seed(key))

    def batches(self, start_step: int = 0) -> Iterator[Tensor]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def state_dict(self, step: int) -> dict[str, Any]:
        """Nothing to keep: batch k is drawn afresh from (seed, k)."""
        return {"kind": "generated", "name": self.name, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any] | None, step: int, resuming: bool = True) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"generated": self.name, "input_shape": list(self.input_shape), "limit": self.limit}
