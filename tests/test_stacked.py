"""K runs stacked into one batched model train as K separate runs (softintrovae.stacked)."""

from __future__ import annotations

import pytest
import torch

from softintrovae.config import load_config
from softintrovae.errors import UserError
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.models.stacked import StackedDecoder, StackedEncoder
from softintrovae.stacked import StackedRuns, seeded
from softintrovae.trainer import Trainer

SMALL = {"model.hidden_dim": 32, "data.batch_size": 64, "method.vae_warmup_steps": 2, "optim.milestones": [4], "train.device": "cpu"}


def separate_run(config, seed, steps):
    """What the trainer's loop does to one run, without its run directory."""
    trainer = Trainer(seeded(config, seed), None)
    losses = []
    for step in range(steps):
        losses.append(trainer.method.step(trainer.data.batch(step), step))
        for scheduler in trainer.schedulers:
            scheduler.step()
    return trainer.encoder, trainer.decoder, losses


def flat(*modules):
    return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])


@pytest.mark.parametrize("preset", ["soft-introvae-8gaussians", "vae-rings"])
def test_stacked_runs_equal_separate_runs(preset):
    config = load_config(preset, SMALL)
    seeds, steps = [0, 3, 7], 6  # two warm-up steps, then the introspective steps across an lr drop
    stacked = StackedRuns(config, seeds)
    stacked_losses = [stacked.train_step() for _ in range(steps)]
    alone = [separate_run(config, seed, steps) for seed in seeds]
    for run, (encoder, decoder, _) in enumerate(alone):
        ours = flat(*stacked.networks(run))
        assert (ours - flat(encoder, decoder)).abs().max().item() <= 1e-5, f"run {run}"
        assert not torch.equal(ours, flat(*separate_run(config, seeds[run], 0)[:2]))  # training moved the weights
    for step in range(steps):  # the stacked losses are the runs' means
        for key, value in stacked_losses[step].items():
            mean = sum(losses[step][key] for _, _, losses in alone) / len(seeds)
            assert abs(value.item() - mean.item()) <= 1e-5 * max(1.0, abs(mean.item())), (step, key)


def test_stacked_network_evaluates_each_run_on_its_rows():
    torch.manual_seed(0)
    encoders, decoders = [MLPEncoder(hidden_dim=16) for _ in range(3)], [MLPDecoder(hidden_dim=16) for _ in range(3)]
    x, z = torch.randn(2 * 3 * 5, 2), torch.randn(2 * 3 * 5, 2)  # two blocks of 3 runs x 5 rows
    mu, logvar = StackedEncoder(encoders, rows_per_run=5)(x)
    decoded = StackedDecoder(decoders, rows_per_run=5)(z)
    for block in range(2):
        for k in range(3):
            rows = slice(5 * (3 * block + k), 5 * (3 * block + k + 1))
            expected_mu, expected_logvar = encoders[k](x[rows])
            torch.testing.assert_close(mu[rows], expected_mu)
            torch.testing.assert_close(logvar[rows], expected_logvar)
            torch.testing.assert_close(decoded[rows], decoders[k](z[rows]))


def test_what_cannot_be_stacked_is_refused():
    with pytest.raises(UserError, match="introvae"):
        StackedRuns(load_config("introvae-8gaussians", SMALL), [0, 1])
    decoder = MLPDecoder(hidden_dim=4)
    decoder.net.insert(1, torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="BatchNorm"):
        StackedDecoder([decoder, decoder], rows_per_run=4)
