"""The order in which a finite dataset is served: shuffled epochs, sharded by process, a pure
function of (seed, step), so that a resumed run sees the batches an uninterrupted one would.

:class:`EpochStream` is the base of every stream over a finite set of samples (images held in
memory, images read on demand through a ``DataLoader``, vectors of points). A subclass says how to
fetch samples by index (:meth:`EpochStream.take`); the base decides which indices each step gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError, warn

IndexPlan = Callable[[int], Tensor]  # step -> the indices of that step's batch


def seed_key(*entropy: int) -> int:
    """32 bits mixed from several integers (torch's CPU generator keeps only 32 bits of a seed)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


class EpochStream:
    """Shuffled mini-batches of a dataset of ``size`` samples; batch ``k`` depends only on (seed, k).

    Each epoch draws its own permutation from (seed, epoch); every sample appears once per epoch.
    In a data-parallel job each step takes ``world_size`` consecutive batches of the permutation
    and process ``rank`` trains on the ``rank``-th: disjoint shards that cover the epoch, as
    ``DistributedSampler`` gives (``batch_size`` is per process).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    unit = "samples"  # what a sample is called in messages

    def __init__(self, size: int, batch_size: int, seed: int = 0, drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if size == 0:
            raise UserError(f"the dataset is empty (no {self.unit})")
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        global_batch = batch_size * world_size
        if drop_last and global_batch > size:
            raise UserError(f"batch size {global_batch} ({world_size} x {batch_size}) is larger than the dataset ({size} {self.unit})")
        self.size, self.batch_size, self.seed, self.rank, self.world_size = size, batch_size, seed, rank, world_size
        self.steps_per_epoch = size // global_batch if drop_last else -(-size // global_batch)
        self._epoch, self._permutation = -1, torch.empty(0, dtype=torch.int64)

    def take(self, index: Tensor) -> Any:
        """The batch of the samples ``index`` (a subclass fetches them)."""
        raise NotImplementedError

    @property
    def source(self) -> "EpochStream":
        """The stream evaluation samples from (itself)."""
        return self

    def __len__(self) -> int:
        return self.size

    def permutation(self, epoch: int) -> Tensor:
        """The order of the samples in ``epoch`` (the last one is cached: consecutive steps share it)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(seed_key(self.seed, epoch))
            self._permutation = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        return self._permutation

    def batch_index(self, step: int) -> Tensor:
        """The indices of global step ``step``'s batch for this process."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = (position * self.world_size + self.rank) * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def indices(self, start: int, count: int) -> Tensor:
        """Indices of the samples at positions start..start+count−1 of the endless sequence of epochs
        (each epoch in its own permutation), for streams whose batch size changes (progressive growing)."""
        parts, position = [], start
        while count > 0:
            epoch, offset = divmod(position, self.size)
            part = self.permutation(epoch)[offset : offset + count]
            parts.append(part)
            position, count = position + len(part), count - len(part)
        return torch.cat(parts)

    def batch(self, step: int) -> Any:
        return self.take(self.batch_index(step))

    def batches(self, start_step: int = 0, plan: IndexPlan | None = None) -> Iterator[Any]:
        """Batch ``start_step``, then the following ones; ``plan`` (default :meth:`batch_index`) says
        which indices a step takes."""
        plan = plan or self.batch_index
        for step in count(start_step):
            yield self.take(plan(step))

    def sample_index(self, n: int, generator: torch.Generator) -> Tensor:
        """n distinct random indices (with replacement only when n exceeds the dataset)."""
        if n <= self.size:
            return torch.randperm(self.size, generator=generator)[:n]
        return torch.randint(self.size, (n,), generator=generator)

    def describe(self) -> dict[str, Any]:
        """What ``RUN/data.json`` records of the data."""
        return {self.unit: self.size, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "steps_per_epoch": self.steps_per_epoch}  # fmt: skip

    # ---- the position a checkpoint records -----------------------------------------------------

    def state_dict(self, step: int) -> dict[str, Any]:
        """Where the sampler stands before global step ``step``: the epoch and the samples of it served."""
        epoch, position = divmod(step, self.steps_per_epoch)
        served = position * self.world_size * self.batch_size
        return {"kind": "epochs", "seed": self.seed, "size": self.size, "batch_size": self.batch_size,
                "world_size": self.world_size, "epoch": epoch, "served_in_epoch": served}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any] | None, step: int, resuming: bool = True) -> None:
        """Check that resuming at ``step`` continues the checkpoint's sampler where it stood; warn (the
        run goes on) when the data or the batch layout changed, since the order then differs.
        Nothing to check when not ``resuming`` (evaluating a checkpoint)."""
        if not resuming or not state or state.get("kind") != "epochs":
            return
        here = self.state_dict(step)
        changed = [f"{key} {state[key]} then, {here[key]} now" for key in ("size", "seed", "batch_size", "world_size") if state.get(key) != here[key]]
        if changed:
            warn(
                f"the data stream differs from the checkpoint's ({'; '.join(changed)}): training continues at "
                f"epoch {here['epoch']}, but its batches are not those an uninterrupted run would have seen"
            )


class ImageEpochStream(EpochStream):
    """An :class:`EpochStream` of images whose batches are (x (B, C, H, W) float in [0, 1], y (B,) or None)."""

    unit = "images"

    def sample_labelled(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """n distinct random images (with replacement only when n exceeds the dataset) and their
        labels (None for unlabelled data), for evaluation and pictures."""
        return self.take(self.sample_index(n, generator))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n distinct random images, as :meth:`sample_labelled` without the labels."""
        return self.sample_labelled(n, generator)[0]

    def real_images(self, limit: int | None = None) -> Tensor:
        """Training images as uint8 (N, C, H, W) for FID/KID."""
        raise NotImplementedError
