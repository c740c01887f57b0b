"""K runs of one 2D configuration, differing only in their seed, trained as one batched model.

On a GPU a 2D step (MLPs of width 256, batch 512) is launch-bound: hundreds of small kernels, each
too small to fill the device. Stacking the K runs' parameters
(:mod:`softintrovae.models.stacked`) makes every layer one batched kernel over the K runs, so one
step trains K runs for about the launches of one. On a CPU, where the step is compute-bound, it
saves only the per-step overheads (``benchmarks/train_step_2d.py --runs K`` measures both).

Each run keeps what it has when trained alone by :class:`~softintrovae.trainer.Trainer` with
``train.seed`` = ``data.seed`` = its seed (as a sweep's seeds are): its initial weights, its data
stream, its noise stream (``Method.run_generators``), its own gradient and Adam state (Adam is
elementwise over the stacked parameters). Only float rounding differs, because the K runs' matrix
products are computed as one batched product (tests/test_stacked.py).

Methods whose losses are means over the batch stack: ``vae`` and ``soft-introvae``. IntroVAE's
hinge ``[m − mean KL]₊`` is not a mean of per-row terms, so a mean over K runs' rows would not be
the mean of the runs' losses; it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import Config, config_from_dict
from .data import Toy2DStream, build_data
from .errors import UserError
from .models import build_models
from .models.stacked import StackedDecoder, StackedEncoder
from .trainer import autocast_for, build_training_method, resolve_device

STACKABLE_METHODS = ("vae", "soft-introvae")


def seeded(config: Config, seed: int) -> Config:
    """The config of one run of a seed sweep: ``train.seed`` and ``data.seed`` set to ``seed``."""
    data = config.to_dict()
    data["train"]["seed"] = data["data"]["seed"] = seed
    return config_from_dict(data)


class StackedRuns:
    """The runs of ``config`` with ``seeds``, stepped together as one batched model."""

    def __init__(self, config: Config, seeds: Sequence[int]):
        if config.method.name not in STACKABLE_METHODS:
            raise UserError(f"method.name {config.method.name!r} cannot be stacked (allowed: {', '.join(STACKABLE_METHODS)})")
        if config.model.arch != "mlp":
            raise UserError(f"model.arch {config.model.arch!r} cannot be stacked: only the 2D mlp")
        self.config, self.seeds = config, list(seeds)
        self.device = resolve_device(config.train.device)
        encoders, decoders, self.streams, generators = [], [], [], []
        for seed in self.seeds:
            run = seeded(config, seed)
            torch.manual_seed(seed)  # as Trainer: seed, data, networks, then the training's noise
            data = build_data(run)
            if not isinstance(data, Toy2DStream):
                raise UserError(f"data.name {config.data.name!r} cannot be stacked: only the 2D distributions")
            encoder, decoder = build_models(run.model, data.input_shape, data.num_classes)
            encoders.append(encoder)
            decoders.append(decoder)
            self.streams.append(data)
            generators.append(self._noise_generator(seed))
        rows = config.data.batch_size
        self.encoder = StackedEncoder(encoders, rows).to(self.device)
        self.decoder = StackedDecoder(decoders, rows).to(self.device)
        self.method, self.optimizers, self.schedulers = build_training_method(
            config, self.encoder, self.decoder, self.streams[0].input_shape, autocast=autocast_for(self.device, config.train.precision)
        )
        self.method.run_generators = generators
        self.step = 0

    def _noise_generator(self, seed: int) -> torch.Generator:
        """The stream a run alone draws its noise from: the global generator after its networks' init."""
        generator = torch.Generator(self.device)
        if self.device.type == "cpu":
            generator.set_state(torch.get_rng_state())
        else:  # the networks are initialised on the CPU; the device's generator is as seeded
            generator.manual_seed(seed)
        return generator

    @property
    def runs(self) -> int:
        return len(self.seeds)

    def batch(self, step: int) -> Tensor:
        """(K·B, 2): each run's own batch ``step``, run-major."""
        return torch.cat([stream.batch(step) for stream in self.streams]).to(self.device)

    def train_step(self) -> dict[str, Tensor]:
        """One update of every run; the losses returned are means over the runs."""
        losses = self.method.step(self.batch(self.step), self.step)
        for scheduler in self.schedulers:
            scheduler.step()
        self.step += 1
        return losses

    def networks(self, run: int) -> tuple[nn.Module, nn.Module]:
        """Run ``run``'s (encoder, decoder) as ordinary networks, on the CPU."""
        config = seeded(self.config, self.seeds[run])
        encoder, decoder = build_models(config.model, self.streams[run].input_shape, 0)
        encoder.load_state_dict(self.encoder.run_state_dict(run))
        decoder.load_state_dict(self.decoder.run_state_dict(run))
        return encoder, decoder


__all__ = ["STACKABLE_METHODS", "StackedRuns", "seeded"]
