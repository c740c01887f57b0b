"""Progressive growing: the level schedule, the data served at each level, and an EMA of the decoder.

Training of a style-based model (:mod:`softintrovae.models.style`) walks through levels 4×4, 8×8,
... up to the image size. Each level trains for ``growth.per_level`` epochs (or images); every level
after the first spends its first ``growth.blend`` epochs (or images) blending its new blocks in,
with alpha rising smoothly from 0 to 1 (half a cosine, as ALAE); a level may have its own batch size,
learning rate (set when it starts, when Adam's moments also start afresh) and β_neg (the paper
lowers β_neg as the resolution grows).

Everything here is a function of the training step: the level and alpha of a step, the images its
batch holds and the settings in force. A run resumed in the middle of a blend therefore continues
the blend exactly where it stopped.

The real images of a batch are average-pooled to the level's resolution; during a blend they are
mixed with their own 2× lower-resolution version in the same proportion as the networks' outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from itertools import count

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .models.style import Progressive


@dataclass(frozen=True)
class Level:
    index: int
    resolution: int
    start_step: int
    steps: int
    blend_steps: int
    batch_size: int  # per process
    lr: float | None
    beta_neg: float | None
    images_before: int  # training images (all processes) consumed before the level's first step


def _per_level(values: list, levels: int, name: str) -> list:
    if not values:
        return [None] * levels
    if len(values) == 1:
        return list(values) * levels
    if len(values) != levels:
        raise UserError(f"growth.{name} has {len(values)} entries, but the model has {levels} levels (give one per level, or one for all)")
    return list(values)


def blend_alpha(t: float) -> float:
    """The blend factor after fraction t of the blend: 0 → 0, ½ → ½, 1 → 1, smooth at both ends."""
    return 0.5 - 0.5 * math.cos(math.pi * min(max(t, 0.0), 1.0))


class GrowthSchedule:
    """Levels and their settings as a function of the training step."""

    def __init__(self, growth, levels: int, dataset_size: int, batch_size: int, world_size: int = 1):
        durations = _per_level(growth.per_level, levels, "per_level")
        blends = _per_level(growth.blend, levels, "blend")
        batches = [b or batch_size for b in _per_level(growth.batch_sizes, levels, "batch_sizes")]
        lrs = _per_level(growth.lr, levels, "lr")
        betas = _per_level(growth.beta_neg, levels, "beta_neg")
        self.levels: list[Level] = []
        step = images = 0
        for i in range(levels):
            unit = dataset_size if growth.unit == "epochs" else 1
            per_step = batches[i] * world_size
            steps = max(1, math.ceil(durations[i] * unit / per_step))
            blend_steps = min(steps, math.ceil(blends[i] * unit / per_step)) if i > 0 else 0
            self.levels.append(Level(i, 4 * 2**i, step, steps, blend_steps, batches[i], lrs[i], betas[i], images))
            step, images = step + steps, images + steps * per_step
        self.total_steps = step
        self.world_size = world_size
        self.reset_optimizers = growth.reset_optimizers

    def level_at(self, step: int) -> Level:
        for level in reversed(self.levels):
            if step >= level.start_step:
                return level
        raise ValueError(f"step must be >= 0, got {step}")

    def at(self, step: int) -> tuple[Level, float]:
        """(the level of ``step``, alpha); past the end, the last level with alpha 1."""
        level = self.level_at(step)
        if level.blend_steps == 0:
            return level, 1.0
        return level, blend_alpha((step - level.start_step) / level.blend_steps)

    def is_level_end(self, step: int) -> bool:
        """True after the last step of a level that another level follows (a level's pictures are due)."""
        return any(step == lv.start_step + lv.steps for lv in self.levels[:-1])

    def images_before(self, step: int) -> int:
        """Training images (all processes) consumed by steps 0..step−1."""
        level = self.level_at(step)
        return level.images_before + (step - level.start_step) * level.batch_size * self.world_size

    def steps_for_images(self, images: int) -> int:
        """The number of steps that consume at least ``images`` training images."""
        step = 0
        while step < self.total_steps and self.images_before(step) < images:
            step += 1
        return step

    def apply(self, step: int, networks: list[nn.Module], method, optimizers: list[torch.optim.Optimizer]) -> None:
        """Put the networks, the method and the optimizers in the state of ``step`` (before it runs)."""
        level, alpha = self.at(step)
        for network in networks:
            network.set_progress(level.index, alpha)
        if level.beta_neg is not None and method.config.beta_neg != level.beta_neg:
            method.set_config(dataclasses.replace(method.config, beta_neg=level.beta_neg))
        if step == level.start_step:
            for optimizer in optimizers:
                if level.lr is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = level.lr
                if self.reset_optimizers and step > 0:
                    optimizer.state.clear()

    def describe(self) -> list[dict]:
        return [
            {"level": lv.index, "resolution": lv.resolution, "steps": lv.steps, "blend_steps": lv.blend_steps,
             "batch_size": lv.batch_size, "lr": lv.lr, "beta_neg": lv.beta_neg}
            for lv in self.levels
        ]


def images_at_level(x: Tensor, resolution: int, alpha: float) -> Tensor:
    """Images (B, C, H, W) average-pooled to resolution; while alpha < 1, blended with their 2× coarser version."""
    if x.shape[-1] != resolution:
        x = F.adaptive_avg_pool2d(x, resolution)
    if alpha < 1.0:
        coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(coarse, x, alpha)
    return x


class ProgressiveStream:
    """An :class:`~softintrovae.data.ImageStream` served level by level: the batch of step k has the
    level's batch size and resolution and continues the epochs' permutations where step k−1 ended
    (process ``rank`` takes its own slice). Evaluation samples the wrapped stream (``source``)."""

    def __init__(self, stream, schedule: GrowthSchedule):
        self.stream, self.schedule = stream, schedule
        self.input_shape, self.num_classes = stream.input_shape, stream.num_classes
        self.steps_per_epoch = stream.steps_per_epoch

    @property
    def source(self):
        return self.stream

    def __len__(self) -> int:
        return len(self.stream)

    def batch_index(self, step: int) -> Tensor:
        """The images of step ``step``: the level's batch size, continuing where step − 1 ended."""
        level = self.schedule.at(step)[0]
        return self.stream.indices(self.schedule.images_before(step) + self.stream.rank * level.batch_size, level.batch_size)

    def at_level(self, step: int, batch: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
        level, alpha = self.schedule.at(step)
        x, y = batch
        return images_at_level(x, level.resolution, alpha if level.blend_steps else 1.0), y

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        return self.at_level(step, self.stream.take(self.batch_index(step)))

    def batches(self, start_step: int = 0):
        for step, batch in zip(count(start_step), self.stream.batches(start_step, self.batch_index)):
            yield self.at_level(step, batch)

    def state_dict(self, step: int) -> dict:
        return self.stream.state_dict(step)

    def load_state_dict(self, state: dict | None, step: int, resuming: bool = True) -> None:
        self.stream.load_state_dict(state, step, resuming)

    def describe(self) -> dict:
        return self.stream.describe()


class EMA:
    """An exponential moving average of a module's weights, with a half-life counted in training
    images: after each step of b images, ema ← ema + (1 − d)(θ − ema) with d = ½^(b / half_life).
    Buffers (e.g. the growth level) are copied as they are."""

    def __init__(self, module: nn.Module, half_life: int):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.half_life = half_life

    def decay(self, images: int) -> float:
        return 0.5 ** (images / self.half_life)

    @torch.no_grad()
    def update(self, module: nn.Module, images: int) -> None:
        weight = 1.0 - self.decay(images)
        for ema_param, param in zip(self.module.parameters(), module.parameters()):
            ema_param.lerp_(param, weight)
        for ema_buffer, buffer in zip(self.module.buffers(), module.buffers()):
            ema_buffer.copy_(buffer)
        if isinstance(module, Progressive):
            self.module.set_progress(*module.progress)


def build_growth(config, data, world_size: int = 1) -> GrowthSchedule | None:
    """The growth schedule of a style-based run (None for other architectures)."""
    if config.model.arch != "style":
        return None
    if config.train.epochs:
        raise UserError(
            f"train.epochs is {config.train.epochs}, but a style run's length is growth.per_level: set train.epochs=0"
        )
    return GrowthSchedule(config.growth, len(config.model.channels), len(data), config.data.batch_size, world_size)
