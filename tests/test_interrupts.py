"""Ctrl-C and SIGTERM outside the training loop: every command stops with one line and exit status
130, releases the run's lock and records nothing as done; a training interrupted in its final
evaluation keeps its checkpoint, and `evaluate` finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from softintrovae.cli import main

from .test_bad_inputs import IMAGE_SETS, SETS, images, snapshot


@pytest.fixture(scope="module")
def finished(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "vae-8gaussians", "--out", str(root / "run"), "--set", "train.steps=2", *SETS]) == 0
    npz = root / "images.npz"
    np.savez(npz, images=images(), labels=np.arange(8) % 2)
    assert main(["train", "npz", "--out", str(root / "image_run"), "--set", f"data.root={npz}", *IMAGE_SETS]) == 0
    return root


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# (command with RUN / IMAGE_RUN / NPZ / NEW placeholders, the function that is interrupted)
COMMANDS = {
    "evaluate a 2D run": (["evaluate", "RUN"], "softintrovae.evaluation.Toy2DEvaluator.negative_elbos"),
    "evaluate an image run": (["evaluate", "IMAGE_RUN"], "softintrovae.evaluation.ImageEvaluator.held_out"),
    "ood": (["ood", "IMAGE_RUN", "--out", "npz=NPZ", "--limit", "4"], "softintrovae.checkpoint.TrainedModel.scores"),
    "sample": (["sample", "IMAGE_RUN"], "softintrovae.pictures.plot_image_grid"),
    "reconstruct": (["reconstruct", "IMAGE_RUN", "-n", "4", "--images", "NPZ"], "softintrovae.pictures.plot_image_grid"),
    "interpolate": (["interpolate", "IMAGE_RUN", "--images", "NPZ"], "softintrovae.pictures.plot_image_grid"),
    "resume while loading the checkpoint": (["train", "--resume", "RUN", "--set", "train.steps=4"], "softintrovae.rundir.load_latest_usable"),
    "train while loading the data": (["train", "vae-8gaussians", "--out", "NEW", *SETS], "softintrovae.trainer.build_data"),
    "feature net": (["feature-net", "train", "--dataset", "npz", "--root", "NPZ", "--out", "NEW"], "softintrovae.metrics.features.train_feature_net"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_interrupt_outside_training_is_one_line_and_exit_130(name, finished, tmp_path, monkeypatch, capsys):
    command, target = COMMANDS[name]
    places = {"RUN": tmp_path / "run", "IMAGE_RUN": tmp_path / "image_run", "NPZ": finished / "images.npz", "NEW": tmp_path / "new"}
    for kind in ("run", "image_run"):
        subprocess.run(["cp", "-r", finished / kind, tmp_path / kind], check=True)
    argv = [next((str(v) + part[len(k):] for k, v in places.items() if part.startswith(k)), part) for part in command]
    argv = [a.replace("npz=NPZ", f"npz={places['NPZ']}") for a in argv]
    before = {kind: snapshot(tmp_path / kind) for kind in ("run", "image_run")}
    monkeypatch.setattr(target, interrupt)
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "softintrovae: interrupted" and "Traceback" not in err, err  # after a progress bar, if any
    for kind, files in before.items():  # no lock left, no command recorded, no file half-changed
        assert snapshot(tmp_path / kind) == files, kind
    assert not (tmp_path / "new").exists()


def test_an_interrupted_final_evaluation_keeps_the_checkpoint_and_evaluate_finishes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr("softintrovae.evaluation.Toy2DEvaluator.negative_elbos", interrupt)
    assert main(["train", "vae-8gaussians", "--out", str(run), "--set", "train.steps=2", *SETS]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"softintrovae: interrupted during the final evaluation; the checkpoint of step 2 is saved; evaluate it with: softintrovae evaluate {run}"]
    assert (run / "checkpoints" / "step_0000002.pt").exists() and not (run / "metrics.json").exists() and not (run / "lock").exists()
    monkeypatch.undo()
    assert main(["evaluate", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["step"] == 2


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_real_signal_during_evaluate_is_one_line_and_exit_130(sig, tmp_path):
    """The issue's example, with a real signal: `evaluate` of a 2D run whose grid takes a while."""
    run = tmp_path / "run"
    sets = [*SETS, "--set", "train.steps=2", "--set", "eval.grid_size=4096", "--set", "eval.elbo_samples=256"]
    assert main(["train", "vae-8gaussians", "--out", str(run), *sets]) == 0
    before = snapshot(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "softintrovae", "evaluate", str(run)], env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "lock", process)  # it holds the run: loading, then the long grid
    time.sleep(1.0)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "softintrovae: interrupted" and "Traceback" not in err, err
    assert snapshot(run) == before  # no lock, and command.txt does not claim an evaluation


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, tmp_path, capsys):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", finished / "run", run], check=True)
    before = snapshot(run)
    for extra in ([], ["--set", "train.steps=2"]):
        capsys.readouterr()
        assert main(["train", "--resume", str(run), *extra]) == 0
        out = capsys.readouterr().out
        assert "has already trained all its steps and been evaluated: nothing to do" in out
        assert "final metrics: kl" in out
        assert snapshot(run) == before  # not evaluated again, no second final record, no command recorded


def test_a_run_that_never_saved_a_checkpoint_can_be_trained_afresh(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr("softintrovae.trainer.Trainer.save_checkpoint", interrupt)  # stops it before its first checkpoint
    assert main(["train", "vae-8gaussians", "--out", str(run), "--set", "train.steps=2", *SETS]) == 130
    assert (run / "config.yaml").exists() and not list(run.glob("checkpoints/*.pt"))
    monkeypatch.undo()
    assert main(["train", "vae-8gaussians", "--out", str(run), "--set", "train.steps=3", *SETS]) == 0
    assert json.loads((run / "metrics.json").read_text())["step"] == 3
    assert main(["train", "vae-8gaussians", "--out", str(run), *SETS]) == 2  # now it holds a run
    assert "already holds a run" in capsys.readouterr().err


def test_running_out_of_memory_is_one_line_and_leaves_no_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "vae-8gaussians", "--out", str(out), *SETS, "--set", f"model.hidden_dim={10**12}"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softintrovae: error: out of memory (tried to allocate"), lines
    assert "lower data.batch_size" in lines[0]
    assert not out.exists()  # the networks are built before the run directory


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_to_its_parent_alone_stops_its_workers(tmp_path):
    """The parent passes the signal on: the run in progress saves a checkpoint and stops, no new run
    starts, no lock is left, and one line says to run the same command again."""
    out = tmp_path / "sweep"
    argv = ["sweep", "vae-8gaussians", "--grid", "method.beta_kl=0.1,0.2", "--out", str(out), *SETS,
            "--set", "train.steps=100000", "--set", "train.checkpoint_every=20", "--set", "train.log_every=10"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "softintrovae", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(out / "method.beta_kl=0.1" / "seed0" / "checkpoints" / "step_0000020.pt", process, seconds=300)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("softintrovae: interrupted with 0 of 2 runs finished"), err
    assert "run the same command again to continue" in err and "Traceback" not in err, err
    assert not list(out.rglob("lock"))
    # it stopped after a step with a checkpoint of that step (resuming from one is tested in test_kill.py)
    assert sorted(p.name for p in out.glob("*/seed0/checkpoints/*.pt"))[-1] > "step_0000020.pt"
