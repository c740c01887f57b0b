"""Run directory, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import pytest
import torch

from softintrovae.config import load_config
from softintrovae.errors import TrainingDiverged, UserError
from softintrovae.checkpoint import load_checkpoint
from softintrovae.rundir import RunDir
from softintrovae.methods import Stepper
from softintrovae.trainer import Trainer, build_training_method, resume, train

from .conftest import tiny_image, tiny_overrides

PRESET = "soft-introvae-8gaussians"


def schedule(**extra):
    # warm-up, both phases and both learning-rate milestones happen inside 40 steps
    return tiny_overrides(**{"method__vae_warmup_steps": 6, "optim__milestones": [14, 30], "train__checkpoint_every": 5, **extra})


def final_params(run_dir):
    state = load_checkpoint(RunDir(run_dir).latest_checkpoint())
    return state["encoder"], state["decoder"], state["optimizers"]


def assert_identical(a, b):
    for sa, sb in zip(a[:2], b[:2]):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_training_n_steps_equals_n_half_then_resume(tmp_path):
    train(PRESET, out=tmp_path / "full", overrides=schedule(train__steps=40))
    train(PRESET, out=tmp_path / "half", overrides=schedule(train__steps=20))
    resume(tmp_path / "half", {"train.steps": 40})
    assert_identical(final_params(tmp_path / "full"), final_params(tmp_path / "half"))
    # the Adam moments match too
    full_opt, half_opt = final_params(tmp_path / "full")[2], final_params(tmp_path / "half")[2]
    assert torch.equal(full_opt[1]["state"][0]["exp_avg_sq"], half_opt[1]["state"][0]["exp_avg_sq"])


def test_train_seconds_add_up_over_resumes(tmp_path):
    train(PRESET, out=tmp_path / "half", overrides=schedule(train__steps=20))
    first = load_checkpoint(RunDir(tmp_path / "half").latest_checkpoint())["train_seconds"]
    resume(tmp_path / "half", {"train.steps": 40})
    total = json.loads((tmp_path / "half" / "metrics.json").read_text())["train_seconds"]
    assert 0 < first <= total


def test_resume_without_a_checkpoint_starts_over_with_a_clean_log(tmp_path):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=10, train__log_every=2))
    for checkpoint in RunDir(out).checkpoints():  # a crash before the first checkpoint was kept
        checkpoint.unlink()
    (out / "metrics.json").unlink()
    resume(out)
    steps = [r["step"] for r in RunDir(out).read_log() if r["kind"] == "train"]
    assert steps == [2, 4, 6, 8, 10]  # no stale records from the lost attempt


def test_evaluation_does_not_change_training(tmp_path):
    train(PRESET, out=tmp_path / "a", overrides=schedule(train__steps=20, train__eval_every=0))
    train(PRESET, out=tmp_path / "b", overrides=schedule(train__steps=20, train__eval_every=3))
    assert_identical(final_params(tmp_path / "a"), final_params(tmp_path / "b"))


def test_run_directory_tells_its_story(tmp_path):
    out = tmp_path / "run"
    result = train(PRESET, out=out, overrides=schedule(train__steps=12, train__log_every=4, train__eval_every=10))
    assert {"config.yaml", "command.txt", "metrics.jsonl", "metrics.json", "samples.png", "density.png"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "plots" / "samples_step0000010.png").is_file()
    records = RunDir(out).read_log()
    assert [r["step"] for r in records if r["kind"] == "train"] == [4, 8, 12]
    assert [r["kind"] for r in records if r["kind"] != "train"] == ["eval", "final"]
    assert set(result.metrics) == {"kl", "jsd_official", "jsd_textbook", "gnelbo"}
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert len(RunDir(out).checkpoints()) == 2  # keep_checkpoints
    assert RunDir(out).load_config().method.beta_neg == 0.9
    with pytest.raises(UserError, match="already holds a run"):
        train(PRESET, out=out, overrides=schedule(train__steps=12))


def test_checkpoints_load_with_weights_only(tmp_path):
    train(PRESET, out=tmp_path / "r", overrides=schedule(train__steps=5))
    path = RunDir(tmp_path / "r").latest_checkpoint()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 5 and "rng" in state and len(state["optimizers"]) == 2


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    train(PRESET, out=tmp_path / "r", overrides=schedule(train__steps=5))
    run = RunDir(tmp_path / "r")
    good = run.latest_checkpoint()

    def torn_save(state, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    trainer = Trainer.resume(run.path, {"train.steps": 10})
    trainer.step = 10
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    assert run.latest_checkpoint() == good
    assert load_checkpoint(good)["step"] == 5
    assert not [p for p in run.checkpoint_dir.iterdir() if p.name.startswith(".")]  # no temp file left


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from softintrovae.methods import SoftIntroVAE

    original = SoftIntroVAE.step

    def poisoned(self, x, step, labels=None):
        losses = original(self, x, step, labels)
        if step == 12:
            losses["loss_encoder"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(SoftIntroVAE, "step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 12 \(loss_encoder=nan\).*step_0000010\.pt"):
        train(PRESET, out=tmp_path / "r", overrides=schedule(train__steps=20))
    run = RunDir(tmp_path / "r")
    assert load_checkpoint(run.latest_checkpoint())["step"] == 10


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(PRESET, out=tmp_path / "r", overrides=schedule(train__steps=5))
    RunDir(tmp_path / "r").latest_checkpoint().write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        Trainer.resume(tmp_path / "r")


def test_resume_may_only_change_train_settings(tmp_path):
    train(PRESET, out=tmp_path / "r", overrides=schedule(train__steps=5))
    with pytest.raises(UserError, match="cannot change 'method.beta_kl'"):
        Trainer.resume(tmp_path / "r", {"method.beta_kl": 0.5})


def test_config_validation_names_the_field():
    with pytest.raises(UserError, match="train.precision must be one of fp32, bf16-mixed, fp16-mixed, got 'fp8'"):
        load_config(PRESET, {"train.precision": "fp8"})


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "r"
    args = [sys.executable, "-m", "softintrovae", "train", PRESET, "--out", str(out)]
    for key, value in schedule(train__steps=100000, train__checkpoint_every=100000).items():
        args += ["--set", f"{key}={value}"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "continue with: softintrovae train --resume" in err
    step = load_checkpoint(RunDir(out).latest_checkpoint())["step"]
    assert 0 < step < 100000
    result = resume(out, {"train.steps": step + 3})
    assert math.isfinite(result.metrics["kl"])


def test_the_method_gets_its_scale_and_each_network_its_optimizer(npz):
    """s = 1 / input dimensions (SPEC §2: 0.5 in 2D, 1/(C·H·W) for images) unless method.scale sets it;
    the encoder's Adam holds the encoder's parameters at optim.lr_encoder, the decoder's the decoder's."""
    # none of the numbers is torch's default (Adam: lr 1e-3, betas (0.9, 0.999); MultiStepLR: gamma 0.1)
    optim = {"optim__lr_encoder": 2e-3, "optim__lr_decoder": 3e-4, "optim__betas": [0.5, 0.99], "optim__lr_gamma": 0.5}
    trainer = Trainer(load_config(PRESET, schedule(**optim)), None)
    method = trainer.method
    assert method.scale == 0.5 and method.config.vae_warmup_steps == 6
    pairs = ((method.optimizer_encoder, trainer.encoder, 2e-3), (method.optimizer_decoder, trainer.decoder, 3e-4))
    for optimizer, network, lr in pairs:
        assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in network.parameters()]
        assert optimizer.param_groups[0]["lr"] == lr and optimizer.param_groups[0]["betas"] == (0.5, 0.99)
    assert [s.optimizer for s in trainer.schedulers] == [method.optimizer_encoder, method.optimizer_decoder]
    assert all(sorted(s.milestones) == [14, 30] and s.gamma == 0.5 for s in trainer.schedulers)
    assert Trainer(load_config(PRESET, schedule(method__scale=0.25)), None).method.scale == 0.25
    images = Trainer(load_config("npz", tiny_image(npz, train__steps=2)), None)
    assert images.method.scale == pytest.approx(1 / (3 * 8 * 8))



def test_build_training_method_hands_warmup_autocast_stepper_and_reconstruction_to_the_method():
    trainer = Trainer(load_config(PRESET, schedule()), None)
    stepper, autocast = Stepper(), lambda: nullcontext()

    def reconstruction(x, y):
        return (x - y).abs().sum(1)

    method, _, _ = build_training_method(
        trainer.config, trainer.encoder, trainer.decoder, (2,), warmup_steps=9, autocast=autocast, stepper=stepper, reconstruction=reconstruction
    )
    assert method.config.vae_warmup_steps == 9 and trainer.config.method.vae_warmup_steps == 6
    assert method.autocast is autocast and method.stepper is stepper and method.perceptual is reconstruction
    assert build_training_method(trainer.config, trainer.encoder, trainer.decoder, (2,))[0].config.vae_warmup_steps == 6

def test_evaluation_draws_from_the_ema_decoder_when_the_run_keeps_one(monkeypatch):
    from softintrovae import trainer as trainer_module

    trainer = Trainer(load_config(PRESET, schedule(train__ema_half_life=64)), None)
    evaluated = []
    monkeypatch.setattr(trainer_module, "run_evaluation", lambda evaluator, encoder, decoder, *args, **kwargs: evaluated.append(decoder) or {})
    trainer.evaluate(final=True)
    assert evaluated == [trainer.ema.module] and trainer.ema.module is not trainer.decoder
