"""Image runs are normal runs: the residual Soft-IntroVAE through the shared trainer, run directory and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from softintrovae.cli import main
from softintrovae.config import load_config
from softintrovae.errors import UserError
from softintrovae.methods import SoftIntroVAE, per_kind
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.models.resnet import ResidualDecoder, ResidualEncoder
from softintrovae.checkpoint import load_checkpoint
from softintrovae.rundir import RunDir
from softintrovae.trainer import Trainer, resume, train

from .conftest import IMAGES, as_cli_sets, tiny_image



def test_cli_trains_an_image_run_with_grids_and_metrics(npz, tmp_path):
    out = tmp_path / "run"
    sets = as_cli_sets(tiny_image(npz, train__steps=6, train__eval_every=4, train__log_every=2))
    assert main(["train", "npz", "--out", str(out), *sets]) == 0
    for name in ("reconstructions.png", "samples.png", "plots/reconstructions_step0000004.png", "plots/samples_step0000004.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 6
    assert math.isfinite(metrics["rec_mse"]) and metrics["rec_mse"] > 0
    assert math.isfinite(metrics["kl"]) and metrics["kl"] >= 0
    records = RunDir(out).read_log()
    assert [r["kind"] for r in records if r["kind"] != "train"] == ["eval", "final"]
    assert "exp_elbo_fake" in [r for r in records if r["kind"] == "train"][-1]  # past the warm-up: Soft-IntroVAE updates


def test_resume_after_an_interruption_is_bit_identical(npz, tmp_path):
    overrides = tiny_image(npz, train__checkpoint_every=4)
    train("npz", out=tmp_path / "full", overrides={**overrides, "train.steps": 10})
    train("npz", out=tmp_path / "cut", overrides={**overrides, "train.steps": 7})
    run = RunDir(tmp_path / "cut")
    run.latest_checkpoint().unlink()  # the crash came after step 7: the last checkpoint left is step 4
    resume(run.path, {"train.steps": 10})
    full, cut = (load_checkpoint(RunDir(tmp_path / name).latest_checkpoint()) for name in ("full", "cut"))
    assert full["step"] == cut["step"] == 10
    for network in ("encoder", "decoder"):  # BatchNorm running statistics included
        for key, value in full[network].items():
            assert torch.equal(value, cut[network][key]), f"{network}.{key}"
    assert torch.equal(full["optimizers"][0]["state"][0]["exp_avg_sq"], cut["optimizers"][0]["state"][0]["exp_avg_sq"])


def test_epochs_resolve_to_steps_of_the_data_stream(npz, tmp_path):
    config = load_config("npz", tiny_image(npz, train__epochs=2, method__vae_warmup_epochs=1))
    trainer = Trainer(config, None)
    assert trainer.data.steps_per_epoch == 5
    assert trainer.total_steps == 10
    assert trainer.method.in_warmup(4) and not trainer.method.in_warmup(5)
    assert config.train.steps == 30000 and config.method.vae_warmup_steps == 3  # the config stays as given

    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__epochs=1))
    assert json.loads((result.run_dir / "metrics.json").read_text())["step"] == 5
    saved = RunDir(result.run_dir).load_config()
    assert saved.train.epochs == 1 and saved.train.steps == 30000

    with pytest.raises(UserError, match="train.epochs is 1, but data '8gaussians' has no epochs"):
        Trainer(load_config("soft-introvae-8gaussians", {"train.epochs": 1}), None)
    with pytest.raises(UserError, match="train.steps is ignored while train.epochs is 1"):
        resume(result.run_dir, {"train.steps": 20})


def test_a_run_counted_in_epochs_is_finished_only_at_its_last_epoch(npz, tmp_path):
    from softintrovae.sweep import finished_metrics

    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__epochs=1))
    assert finished_metrics(result.run_dir)["total_steps"] == 5
    trainer = Trainer.resume(result.run_dir, {"train.epochs": 2})  # extended: its old final metrics no longer hold
    assert finished_metrics(result.run_dir) is None
    trainer.fit()
    assert finished_metrics(result.run_dir)["step"] == 10


def test_missing_npz_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    sets = as_cli_sets(tiny_image(tmp_path / "absent.npz", train__steps=2))
    capsys.readouterr()
    assert main(["train", "npz", "--out", str(out), *sets]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softintrovae: error: npz file") and "absent.npz" in lines[0]
    assert not out.exists()  # nothing half-made is left behind


def test_batch_norm_networks_see_each_kind_in_its_own_batch():
    torch.manual_seed(0)
    encoder, decoder = ResidualEncoder((3, 8, 8), (4, 8), z_dim=4), ResidualDecoder((3, 8, 8), (4, 8), z_dim=4)
    reconstructions, prior_samples = torch.rand(2, 6, 3, 8, 8).unbind()
    mu, logvar = per_kind(encoder, torch.cat([reconstructions, prior_samples]), separately=True)
    halves = [encoder(reconstructions), encoder(prior_samples)]
    assert torch.equal(mu, torch.cat([halves[0][0], halves[1][0]]))
    assert torch.equal(logvar, torch.cat([halves[0][1], halves[1][1]]))
    assert not torch.allclose(encoder(torch.cat([reconstructions, prior_samples]))[0], mu)  # joint batch statistics differ

    z = torch.randn(12, 4)
    assert torch.equal(per_kind(decoder, z, separately=True), torch.cat([decoder(z[:6]), decoder(z[6:])]))

    config = load_config("npz", {"data.root": "unused.npz"}).method

    def method(enc, dec):
        optimizers = [torch.optim.Adam(n.parameters()) for n in (enc, dec)]
        return SoftIntroVAE(enc, dec, *optimizers, config, scale=1 / 192, z_dim=4)

    assert method(encoder, decoder).encode_kinds_separately and method(encoder, decoder).decode_kinds_separately
    mlp = method(MLPEncoder(2, 2), MLPDecoder(2, 2))  # the 2D path keeps its single batch of 2B
    assert not mlp.encode_kinds_separately and not mlp.decode_kinds_separately


def test_fid_and_kid_when_the_dataset_has_a_feature_net(npz, tmp_path, monkeypatch):
    from softintrovae.data.images import load_npz
    from softintrovae.metrics import fid
    from softintrovae.metrics.features import FEATURE_NETS_ENV, train_feature_net

    images, labels = load_npz(npz)
    train_feature_net(images, labels, tmp_path / "nets" / "npz.pt", epochs=1, batch_size=16, progress=False)
    monkeypatch.setenv(FEATURE_NETS_ENV, str(tmp_path / "nets"))
    monkeypatch.setattr(fid, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=2, eval__fid_samples=16))
    for name in ("fid16_train_npznet", "kid16_train_npznet", "kid16_train_npznet_std"):
        assert math.isfinite(result.metrics[name]), name
    assert list((tmp_path / "cache").glob("npz_train-n40-npznet-*.pt"))
