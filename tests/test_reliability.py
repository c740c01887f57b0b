"""Faults a long training meets: corrupt checkpoints, a full disk, a second writer, NaN/inf."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import softintrovae
from softintrovae import methods
from softintrovae.cli import main
from softintrovae.errors import RunWarning, TrainingDiverged, UserError
from softintrovae.methods import SoftIntroVAE
from softintrovae.checkpoint import _HashingWriter, checksum_path, load_checkpoint
from softintrovae.rundir import RunDir
from softintrovae.trainer import Trainer, evaluate, resume, train

from .conftest import tiny_overrides

PRESET = "soft-introvae-8gaussians"


def schedule(**extra):
    return tiny_overrides(**{"method__vae_warmup_steps": 3, "optim__milestones": [8], "train__checkpoint_every": 5, **extra})


def states_equal(a: dict, b: dict, keys=("encoder", "decoder")) -> bool:
    return all(torch.equal(a[k][name], b[k][name]) for k in keys for name in a[k])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, single_thread):
    """The final checkpoint of a 10-step run that nothing went wrong in."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=10))
    return load_checkpoint(RunDir(out).latest_checkpoint())


# --- checkpoints: checksum, fallback, full disk -----------------------------------------------------


def flip_a_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data: same length, still a valid zip
    path.write_bytes(bytes(raw))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped byte": flip_a_byte,
    "emptied": lambda p: p.write_bytes(b""),
    "not a checkpoint": lambda p: (p.write_bytes(b"PK\x03\x04 junk"), checksum_path(p).unlink()),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, uninterrupted):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=10))
    latest = RunDir(out).latest_checkpoint()
    assert latest.name == "step_0000010.pt"
    DAMAGE[damage](latest)
    (out / "metrics.json").unlink()
    with pytest.warns(RunWarning, match=r"step_0000010\.pt.*corrupt.*using the previous checkpoint step_0000005\.pt \(step 5\)"):
        trainer = Trainer.resume(out)
    assert trainer.step == 5
    assert (latest.parent / "step_0000010.pt.corrupt").is_file()  # kept for inspection, never loaded again
    trainer.fit()
    # redoing the lost steps gives exactly what the uninterrupted run has
    assert states_equal(load_checkpoint(RunDir(out).latest_checkpoint()), uninterrupted)


def test_the_checksum_catches_what_torch_load_does_not(tmp_path):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=5))
    path = RunDir(out).latest_checkpoint()
    assert path.with_name(path.name + ".sha256").read_text().split() == [
        hashlib.sha256(path.read_bytes()).hexdigest(),
        path.name,
    ]
    flip_a_byte(path)
    torch.load(path, weights_only=True)  # loads the altered weights without a word
    with pytest.raises(UserError, match=r"corrupt: its SHA-256 does not match step_0000005\.pt\.sha256"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="no usable checkpoint"):
        evaluate(out)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, capsys, monkeypatch):
    write = _HashingWriter.write

    def full_disk(self, data):  # the disk fills up during the step-10 checkpoint
        if "step_0000010" in self.file.name and self.written > 0:
            self.file.write = lambda data: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return write(self, data)

    monkeypatch.setattr(_HashingWriter, "write", full_disk)
    out = tmp_path / "run"
    args = [f"{k}={v}" for k, v in schedule(train__steps=12).items()]
    code = main(["train", PRESET, "--out", str(out), *[a for s in args for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "could not write checkpoint" in err[0] and "No space left on device" in err[0]
    assert "step_0000005.pt' is intact" in err[0]
    run = RunDir(out)
    assert [p.name for p in run.checkpoints()] == ["step_0000005.pt"]
    assert load_checkpoint(run.latest_checkpoint())["step"] == 5
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["step_0000005.pt", "step_0000005.pt.sha256"]
    assert not run.lock_path.exists()


# --- the lock -------------------------------------------------------------------------------------


def write_lock(run: RunDir, pid: int, host: str | None = None) -> None:
    run.lock_path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": "earlier"}) + "\n")


def test_a_live_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=5))
    run = RunDir(out)
    assert not run.lock_path.exists()  # released when training ended
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(run, other.pid)
        code = main(["train", "--resume", str(out), "--set", "train.steps=6"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"is in use by process {other.pid} on {socket.gethostname()}" in err[0], err
        with pytest.raises(UserError, match="in use by process"):
            evaluate(out)
    finally:
        other.kill()
        other.wait()
    # the holder is gone (as after SIGKILL): its lock no longer blocks
    with pytest.warns(RunWarning, match=f"took over the lock .* left by process {other.pid} .*no longer running"):
        resume(out, {"train.steps": 6})
    assert not run.lock_path.exists()
    assert load_checkpoint(run.latest_checkpoint())["step"] == 6


def test_a_lock_from_another_host_blocks_until_it_goes_stale(tmp_path):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=5))
    run = RunDir(out)
    write_lock(run, 1, host="another-node")
    with pytest.raises(UserError, match="in use by process 1 on another-node"):
        resume(out, {"train.steps": 6})
    an_hour_ago = time.time() - 3600  # no heartbeat for an hour: that job is gone
    os.utime(run.lock_path, (an_hour_ago, an_hour_ago))
    with pytest.warns(RunWarning, match="not been refreshed for 60 minutes"):
        resume(out, {"train.steps": 6})


def test_lock_and_leftovers_are_cleaned_when_training_fails(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(PRESET, out=out, overrides=schedule(train__steps=5))
    run = RunDir(out)
    leftover = run.checkpoint_dir / ".step_0000010.pt.tmp-99999"  # a writer killed mid-write
    leftover.write_bytes(b"half")
    orphan = run.checkpoint_dir / "step_0000010.pt.sha256"  # killed between checksum and rename
    orphan.write_text("0" * 64 + "  step_0000010.pt\n")
    monkeypatch.setattr(SoftIntroVAE, "step", lambda self, x, step, labels=None: {"loss_encoder": torch.tensor(float("inf"))})
    with pytest.raises(TrainingDiverged):
        resume(out, {"train.steps": 10})
    assert not leftover.exists() and not orphan.exists() and not run.lock_path.exists()


# --- NaN / inf ------------------------------------------------------------------------------------


def poison(monkeypatch, at_steps, where):
    """Make the decoder phase's loss (``where="loss"``) or its gradient NaN at the given step indices."""
    current = {"step": -1}
    step = SoftIntroVAE.step

    def tracking_step(self, x, index, labels=None):
        current["step"] = index
        if not getattr(self, "_poison_hooked", False):
            self._poison_hooked = True
            first = next(self.decoder.parameters())
            first.register_hook(lambda g: g * float("nan") if where == "gradient" and current["step"] in at_steps else g)
        return step(self, x, index, labels)

    decoder_loss = methods.soft_introvae_decoder_loss

    def poisoned_decoder_loss(*args, **kwargs):
        loss = decoder_loss(*args, **kwargs)
        return loss * float("nan") if where == "loss" and current["step"] in at_steps else loss

    monkeypatch.setattr(SoftIntroVAE, "step", tracking_step)
    monkeypatch.setattr(methods, "soft_introvae_decoder_loss", poisoned_decoder_loss)


def test_a_nan_gradient_stops_before_it_reaches_a_checkpoint(tmp_path, monkeypatch):
    # step index 9 produces the state saved as step 10: that checkpoint must never be written
    poison(monkeypatch, {9}, "gradient")
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient at step 9 \(gradient of loss_decoder\).*step_0000005\.pt"):
        train(PRESET, out=out, overrides=schedule(train__steps=20))
    run = RunDir(out)
    assert [p.name for p in run.checkpoints()] == ["step_0000005.pt"]
    state = load_checkpoint(run.latest_checkpoint())
    assert all(torch.isfinite(v).all() for net in ("encoder", "decoder") for v in state[net].values())
    assert not run.lock_path.exists()


def test_a_nan_loss_names_the_loss_and_the_step(tmp_path, monkeypatch):
    poison(monkeypatch, {7}, "loss")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7 \(loss_decoder=nan\).*step_0000005\.pt"):
        train(PRESET, out=tmp_path / "run", overrides=schedule(train__steps=20))


def test_skip_undoes_both_phases_of_the_batch_and_goes_on(tmp_path, monkeypatch):
    # the decoder phase fails after the encoder phase has already stepped: both must be undone
    poison(monkeypatch, {5}, "loss")
    out = tmp_path / "run"
    with pytest.warns(RunWarning, match=r"non-finite loss at step 5 \(loss_decoder=nan\): batch skipped"):
        train(PRESET, out=out, overrides=schedule(train__steps=6, train__on_nonfinite="skip"))
    run = RunDir(out)
    before, after = (load_checkpoint(p) for p in run.checkpoints())
    assert (before["step"], after["step"]) == (5, 6)
    assert states_equal(before, after)
    for opt_before, opt_after in zip(before["optimizers"], after["optimizers"]):
        for index, moments in opt_before["state"].items():
            assert all(torch.equal(v, opt_after["state"][index][k]) for k, v in moments.items())
    assert after["skipped_steps"] == 1
    assert {"step": 6, "kind": "skipped", "batch": 5, "loss": "loss_decoder", "what": "loss"} in run.read_log()
    result = resume(out, {"train.steps": 9})  # and training goes on past it
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    assert load_checkpoint(run.latest_checkpoint())["step"] == 9


def test_skip_stops_after_too_many_batches_in_a_row(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(4, 100)), "gradient")
    overrides = schedule(train__steps=20, train__on_nonfinite="skip", train__max_consecutive_skips=3)
    with pytest.warns(RunWarning), pytest.raises(TrainingDiverged, match=r"at step 7 .* 4 batches in a row \(train.max_consecutive_skips is 3\)"):
        train(PRESET, out=tmp_path / "run", overrides=overrides)


# --- safe by default ------------------------------------------------------------------------------


def test_the_package_never_unpickles_or_evaluates_what_it_reads():
    forbidden = [r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"\bimport pickle\b", r"yaml\.load\(", r"yaml\.unsafe_load",
                 r"allow_pickle=True", r"weights_only=False", r"yaml\.Loader\b"]  # fmt: skip
    sources = sorted(Path(softintrovae.__file__).parent.rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        for pattern in forbidden:
            assert not re.search(pattern, text), f"{path.name}: {pattern}"
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, f"{path.name}: {call}"


def test_skip_restores_batchnorm_statistics_of_an_image_run(tmp_path, monkeypatch):
    npz = tmp_path / "images.npz"
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    overrides = {
        "data.root": str(npz), "data.batch_size": 8, "model.channels": [4, 8], "model.z_dim": 4,
        "method.vae_warmup_steps": 2, "train.epochs": 0, "train.steps": 5, "train.checkpoint_every": 4,
        "train.eval_every": 0, "train.progress": False, "train.on_nonfinite": "skip",
    }  # fmt: skip
    poison(monkeypatch, {4}, "gradient")
    with pytest.warns(RunWarning, match=r"non-finite gradient at step 4 \(gradient of loss_decoder\)"):
        train("npz", out=tmp_path / "run", overrides=overrides)
    before, after = (load_checkpoint(p) for p in RunDir(tmp_path / "run").checkpoints())
    assert (before["step"], after["step"]) == (4, 5)
    assert any("running_mean" in name for name in before["encoder"])
    assert states_equal(before, after)  # weights and BatchNorm running statistics


def test_a_full_disk_while_logging_is_one_line(tmp_path, capsys, monkeypatch):
    from softintrovae import rundir

    def full_disk(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and mode == "a":
            raise OSError(28, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full_disk, raising=False)
    out = tmp_path / "run"
    code = main(["train", PRESET, "--out", str(out), *[a for k, v in schedule(train__steps=6).items() for a in ("--set", f"{k}={v}")]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "metrics.jsonl' (No space left on device)" in err[0], err
    assert not RunDir(out).lock_path.exists()


def test_a_lock_held_by_a_zombie_process_is_taken_over(tmp_path):
    """A killed writer that nobody reaped (its parent died too) no longer holds the run."""
    import subprocess
    import sys
    import time

    from softintrovae.runlock import RunLock, _process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _process_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not _process_alive(child.pid)
    lock = tmp_path / "lock"
    lock.write_text(json.dumps({"pid": child.pid, "host": RunLock(lock).record["host"], "since": "then"}) + "\n")
    taker = RunLock(lock)
    with pytest.warns(RunWarning, match=f"left by process {child.pid}"):
        taker.acquire()
    taker.release()
    child.wait()


def test_a_held_lock_is_kept_fresh_by_its_heartbeat(tmp_path):
    """While a run is written its lock's time is renewed well inside the time after which another host
    may take it over; one heartbeat, run synchronously, renews an hour-old lock."""
    from types import SimpleNamespace

    from softintrovae import runlock

    assert runlock.LOCK_HEARTBEAT_SECONDS * 4 <= runlock.LOCK_STALE_SECONDS
    lock = runlock.RunLock(tmp_path / "lock")
    lock.acquire()
    try:
        assert lock._heartbeat is not None and lock._heartbeat.is_alive()
    finally:
        lock.release()
    (tmp_path / "lock").write_text("{}")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "lock", (an_hour_ago, an_hour_ago))
    beats = iter([False, True])  # the stop event's wait: one heartbeat, then stop
    lock._stop = SimpleNamespace(wait=lambda seconds: next(beats))
    lock._refresh()
    assert (tmp_path / "lock").stat().st_mtime > an_hour_ago + 3000
