"""SIGKILL a training at a random step (or in the middle of a checkpoint write), resume, and get
the uninterrupted run's parameters bit for bit (CPU, fp32): 2D runs, image runs and sweeps.

The kill comes from outside, as a scheduler's would: the test watches the run's metrics.jsonl and
kills the process group once a randomly drawn step is logged. The kill during a checkpoint write
uses the test hook ``SOFTINTROVAE_TEST_KILL_DURING_CHECKPOINT`` (see ``softintrovae.checkpoint``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from softintrovae.cli import main
from softintrovae.errors import RunWarning
from softintrovae.checkpoint import KILL_DURING_CHECKPOINT_ENV, load_checkpoint
from softintrovae.rundir import RunDir
from softintrovae.sweep import sweep
from softintrovae.trainer import resume, train

from .conftest import tiny_overrides

pytestmark = pytest.mark.slow

PRESET = "soft-introvae-8gaussians"
STEPS = 120  # warm-up, both phases and both learning-rate milestones
OVERRIDES_2D = tiny_overrides(
    train__steps=STEPS, train__log_every=1, train__checkpoint_every=10,
    method__vae_warmup_steps=15, optim__milestones=[50, 90],
)  # fmt: skip


def cli_sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]


def start(argv: list[str], **env) -> subprocess.Popen:
    """``softintrovae ARGV`` in its own process group with one torch thread (as the reference runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "softintrovae", *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def logged_steps(runs: list[Path]) -> int:
    """Training steps logged so far, summed over run directories (torn last lines ignored)."""
    total = 0
    for run in runs:
        steps = [r["step"] for r in RunDir(run).read_log() if r.get("kind") == "train"]
        total += max(steps, default=0)
    return total


def kill_at(proc: subprocess.Popen, runs: list[Path], step: int, timeout: float = 120) -> None:
    """SIGKILL ``proc``'s process group once ``step`` training steps are logged in ``runs``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if logged_steps(runs) >= step:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way (exit {proc.returncode}): {err}"


def assert_same_training(run: Path, reference: Path) -> None:
    """Same final step, weights, BatchNorm statistics, Adam moments, random state and training log."""
    got, want = (load_checkpoint(RunDir(p).latest_checkpoint()) for p in (run, reference))
    assert got["step"] == want["step"]
    for network in ("encoder", "decoder"):
        for name, value in want[network].items():
            assert torch.equal(got[network][name], value), f"{network}.{name}"
    for opt_got, opt_want in zip(got["optimizers"], want["optimizers"]):
        for index, moments in opt_want["state"].items():
            for key, value in moments.items():
                assert torch.equal(opt_got["state"][index][key], value), f"optimizer state {index}.{key}"
    assert torch.equal(got["rng"]["cpu"], want["rng"]["cpu"])
    train_log = lambda p: [r for r in RunDir(p).read_log() if r["kind"] == "train"]  # noqa: E731
    assert train_log(run) == train_log(reference)


@pytest.fixture(scope="module")
def reference_2d(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("reference") / "2d"
    train(PRESET, out=out, overrides=OVERRIDES_2D)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_2d_run_killed_at_a_random_step_resumes_bit_for_bit(tmp_path, seed, reference_2d, capsys):
    out = tmp_path / "run"
    proc = start(["train", PRESET, "--out", str(out), *cli_sets(OVERRIDES_2D)])
    target = random.Random(seed).randrange(12, STEPS * 2 // 3)
    if seed == 0:  # while it trains, a second writer is refused
        deadline = time.monotonic() + 60
        while logged_steps([out]) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert main(["train", "--resume", str(out)]) == 2
        assert f"is in use by process {proc.pid}" in capsys.readouterr().err
    kill_at(proc, [out], target)
    # nothing computed before the last checkpoint is lost (the kill may land while step c is being saved)
    every = OVERRIDES_2D["train.checkpoint_every"]
    assert load_checkpoint(RunDir(out).latest_checkpoint())["step"] >= (target // every - 1) * every
    with pytest.warns(RunWarning, match=f"took over the lock .* left by process {proc.pid}"):
        resume(out)
    assert_same_training(out, reference_2d)
    assert not RunDir(out).lock_path.exists()


def test_2d_run_killed_during_a_checkpoint_write_resumes_bit_for_bit(tmp_path, reference_2d):
    out = tmp_path / "run"
    proc = start(["train", PRESET, "--out", str(out), *cli_sets(OVERRIDES_2D)], **{KILL_DURING_CHECKPOINT_ENV: "60"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    run = RunDir(out)
    torn = run.checkpoint_dir / f".step_0000060.pt.tmp-{proc.pid}"
    assert torn.is_file() and torn.stat().st_size > 0  # the write was under way
    assert run.latest_checkpoint().name == "step_0000050.pt"  # the torn file never became a checkpoint
    with pytest.warns(RunWarning, match="took over the lock"):
        resume(out)
    assert not torn.exists()
    assert_same_training(out, reference_2d)


# --- image runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_overrides(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    return {
        "data.root": str(path), "data.batch_size": 8, "model.channels": [4, 8], "model.z_dim": 4,
        "method.vae_warmup_steps": 5, "train.epochs": 0, "train.steps": 40, "train.log_every": 1,
        "train.checkpoint_every": 10, "train.eval_every": 0, "train.progress": False,
    }  # fmt: skip


def kill_resume_and_compare(tmp_path, overrides: dict, seed: int) -> Path:
    """Train the npz preset uninterrupted, then again from the CLI killed at a random step and
    resumed; both end with the same training state. Returns the resumed run."""
    reference, out = tmp_path / "reference", tmp_path / "run"
    train("npz", out=reference, overrides=overrides)
    proc = start(["train", "npz", "--out", str(out), *cli_sets(overrides)])
    kill_at(proc, [out], random.Random(seed).randrange(12, 28))
    with pytest.warns(RunWarning, match="took over the lock"):
        resume(out)
    assert_same_training(out, reference)  # BatchNorm running statistics included
    return out


def test_image_run_killed_at_a_random_step_resumes_bit_for_bit(tmp_path, image_overrides, single_thread):
    kill_resume_and_compare(tmp_path, image_overrides, seed=3)


def test_streamed_image_run_with_workers_killed_at_a_random_step_resumes_bit_for_bit(tmp_path, image_overrides, single_thread):
    """The images read on demand (a memory-mapped .npz) by two DataLoader worker processes."""
    out = kill_resume_and_compare(tmp_path, {**image_overrides, "data.cache": "stream", "data.workers": 2}, seed=5)
    assert json.loads((out / "data.json").read_text())["workers"] == 2
    assert load_checkpoint(RunDir(out).latest_checkpoint())["data"]["epoch"] == 8  # 40 steps of 5 per epoch


# --- sweeps ---------------------------------------------------------------------------------------


def test_sweep_killed_at_a_random_step_finishes_bit_for_bit(tmp_path, single_thread):
    overrides = tiny_overrides(train__steps=50, train__log_every=1, train__checkpoint_every=10, method__vae_warmup_steps=10)
    grid = {"method.beta_neg": [0.5, 1.0]}
    out = tmp_path / "sweep"
    argv = ["sweep", PRESET, "--grid", "method.beta_neg=0.5,1.0", "--workers", "1", "--out", str(out), *cli_sets(overrides)]
    proc = start(argv)
    runs = [out / f"method.beta_neg={v}" / "seed0" for v in grid["method.beta_neg"]]
    kill_at(proc, runs, random.Random(4).randrange(12, 80))
    sweep(PRESET, grid, out, overrides=overrides)  # the same sweep again: finishes what was lost
    for value, run in zip(grid["method.beta_neg"], runs):
        reference = tmp_path / f"reference-{value}"
        train(PRESET, out=reference, overrides={**overrides, "method.beta_neg": value, "train.seed": 0, "data.seed": 0})
        assert_same_training(run, reference)
