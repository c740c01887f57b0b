"""Sweeps beyond one process: the Ray Tune backend (killed driver and re-run, a two-node cluster,
ASHA early stopping, its one-line errors) and the local backend's devices.

The Ray scenarios run in one process inside a private network namespace (``unshare``, as root), so
that Ray listens on loopback only (see tests/ray_scenarios.py); they are skipped where Ray is not
installed or namespaces are not permitted.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import softintrovae
from softintrovae import sweep_local
from softintrovae.cli import main
from softintrovae.errors import UserError
from softintrovae.sweep import check_devices, parse_devices, sweep, worker_device
from softintrovae.sweep import Job
from softintrovae.sweep_ray import TrialRun, check_shared_storage, write_storage_marker

from .conftest import TINY

PRESET = "soft-introvae-8gaussians"
HAS_RAY = importlib.util.find_spec("ray") is not None


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# ---- the local backend's devices ---------------------------------------------------------------------


def test_devices_go_to_workers_round_robin():
    devices = parse_devices("cuda:0, cuda:1")
    assert devices == ["cuda:0", "cuda:1"]
    assert [worker_device(devices, k) for k in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_device(None, 3) is None


def test_each_worker_takes_the_next_device_as_it_starts():
    """The pool's initializer, as two workers run it one after the other."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads, counter = torch.get_num_threads(), multiprocessing.get_context("spawn").Value("i", 0)
    try:
        seen = []
        for _ in range(3):
            sweep_local._worker_setup(None, counter, ["cuda:0", "cuda:1"])
            seen.append(sweep_local._worker_device)
    finally:
        sweep_local._worker_device = None
        torch.set_num_threads(threads)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert seen == ["cuda:0", "cuda:1", "cuda:0"] and counter.value == 3


def test_a_device_that_does_not_exist_is_refused():
    with pytest.raises(UserError, match=r"'gpu0' is not a device"):
        parse_devices("cuda:0,gpu0")
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UserError, match=re.escape(f"{missing!r} does not exist here")):
        check_devices(["cpu", missing])


def test_local_workers_train_and_resume_on_their_device(tmp_path):
    base = {**TINY, "train.steps": 4, "train.checkpoint_every": 2, "method.vae_warmup_steps": 2}
    sweep(PRESET, {"method.beta_neg": [0.9]}, tmp_path, overrides=base, devices=["cpu"])
    run = tmp_path / "method.beta_neg=0.9" / "seed0"
    assert "device: cpu" in (run / "config.yaml").read_text()  # the preset says auto
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "step_0000004.pt").unlink()
    sweep(PRESET, {"method.beta_neg": [0.9]}, tmp_path, overrides=base, devices=["cpu"])
    assert "(resumed)" in (run / "command.txt").read_text() and json.loads((run / "metrics.json").read_text())["step"] == 4


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--devices", "cuda:0,tpu"], "'tpu' is not a device"),
        (["--early-stop", "kl"], "--early-stop need --backend ray"),
        (["--address", "127.0.0.1:6379", "--cpus-per-run", "2"], "--address, --cpus-per-run need --backend ray"),
        (["--backend", "ray", "--devices", "cuda:0"], "--devices is for --backend local"),
        (["--backend", "ray", "--gpus-per-run", "-1"], "must be a finite number >= 0"),
        (["--backend", "ray", "--cpus-per-run", "0"], "must be a finite number > 0"),
        (["--set", "train.eval_every=0", "--backend", "ray", "--early-stop", "kl"], "--early-stop needs evaluations during training: set train.eval_every"),
    ],
)
def test_flags_of_the_other_backend_are_one_line(tmp_path, capsys, flags, message):
    assert main(["sweep", PRESET, "--grid", "method.beta_neg=0.5", "--out", str(tmp_path / "s"), *flags]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "s").exists()


# ---- the Ray backend without Ray running ------------------------------------------------------------


def test_without_ray_the_ray_backend_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    assert main(["sweep", PRESET, "--grid", "method.beta_neg=0.5", "--backend", "ray", "--out", str(tmp_path / "s")]) == 2
    assert "needs Ray, which is not installed: pip install 'softintrovae[ray]'" in one_error_line(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed")
def test_an_unreachable_address_is_one_line_and_touches_nothing(tmp_path, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "s"
    argv = ["sweep", PRESET, "--grid", "method.beta_neg=0.5", "--backend", "ray", "--out", str(out), "--address", f"127.0.0.1:{port}"]
    run = out / "method.beta_neg=0.5" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}\n")
    assert main(argv) == 2
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in one_error_line(capsys)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["method.beta_neg=0.5", "method.beta_neg=0.5/seed0", "method.beta_neg=0.5/seed0/metrics.json"]
    assert (run / "metrics.json").read_text() == "{}\n"


def test_the_shared_storage_check_names_the_directory(tmp_path):
    token = write_storage_marker(tmp_path)
    check_shared_storage(tmp_path, token)
    for where, seen in ((tmp_path, "another token"), (tmp_path / "elsewhere", token)):
        with pytest.raises(UserError, match=re.escape(f"the sweep directory {str(where)!r} is not shared with Ray node")):
            check_shared_storage(where, seen)


def test_a_trial_stops_cleanly_with_a_checkpoint_and_resumes_after_replaying_its_evaluations(tmp_path):
    """A trial's training, as Tune drives it (no Ray needed): results at each evaluation, stop, resume."""
    overrides = {**TINY, "train.steps": 8, "train.eval_every": 4, "train.checkpoint_every": 1000, "method.vae_warmup_steps": 2}
    run = tmp_path / "method.beta_neg=0.9" / "seed0"
    job = Job(PRESET, {**overrides, "method.beta_neg": 0.9, "train.seed": 0, "data.seed": 0}, run)
    trial = TrialRun(job, ["softintrovae", "(test)", PRESET], metric="jsd_official")
    first = trial.next_result()
    assert first["step"] == 4 and isinstance(first["jsd_official"], float) and "done" not in first
    trial.stop()  # as ASHA's stop: after the evaluation, with a checkpoint there
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_0000004.pt"]
    assert not (run / "metrics.json").exists() and not (run / "lock").exists()

    again = TrialRun(job, ["softintrovae", "(test)", PRESET], metric="jsd_official")
    assert again.next_result() == first  # replayed from metrics.jsonl, for the scheduler
    last = again.next_result()
    assert last["done"] and last["outcome"] == "finished" and last["step"] == 8
    assert "(resumed)" in (run / "command.txt").read_text()

    unknown = TrialRun(Job(PRESET, job.overrides, tmp_path / "other"), ["softintrovae", "(test)", PRESET], metric="fid")
    with pytest.raises(UserError, match="--early-stop 'fid' is not among the metrics of an evaluation"):
        unknown.next_result()


def test_a_run_stopped_early_is_not_trained_again_and_counts_as_stopped(tmp_path):
    base = {**TINY, "train.steps": 8, "train.eval_every": 4, "method.vae_warmup_steps": 2}
    run = tmp_path / "method.beta_neg=0.9" / "seed0"
    trial = TrialRun(Job(PRESET, {**base, "method.beta_neg": 0.9, "train.seed": 0, "data.seed": 0}, run), ["softintrovae", "(test)", PRESET])
    trial.next_result()
    trial.stop()
    (run / "stopped.txt").write_text("stopped early at step 4\n")
    table = sweep(PRESET, {"method.beta_neg": [0.9]}, tmp_path, overrides=base)  # the local backend
    assert table == [{"method.beta_neg": 0.9, "runs": 0, "stopped": 1}]
    assert (tmp_path / "results.csv").read_text().splitlines()[1] == "0.9,0,0,1"
    again = TrialRun(trial.job, ["softintrovae", "(test)", PRESET])  # the Ray backend's trial
    assert again.next_result()["step"] == 4  # its evaluation, replayed for the scheduler
    assert again.next_result() == {"outcome": "stopped", "done": True}
    assert not (run / "metrics.json").exists() and [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_0000004.pt"]


# ---- Ray in a private network namespace -------------------------------------------------------------

RUN_OVERRIDES = {**TINY, "train.steps": 200, "train.checkpoint_every": 25, "method.vae_warmup_steps": 50}
ASHA_OVERRIDES = {**TINY, "train.steps": 300, "train.eval_every": 100, "train.checkpoint_every": 100, "method.vae_warmup_steps": 50}


def _namespace_problem() -> str | None:
    if not HAS_RAY:
        return "Ray is not installed"
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return "needs root, unshare and ip to run Ray inside a private network namespace"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=60)
    return None if probe.returncode == 0 else f"network namespaces are not permitted here ({probe.stderr.decode().strip()})"


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("ray")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    src = str(Path(softintrovae.__file__).parents[1])
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    script = Path(__file__).with_name("ray_scenarios.py")
    command = f"ip link set lo up && exec {sys.executable} {script} {out} '{json.dumps(RUN_OVERRIDES)}' '{json.dumps(ASHA_OVERRIDES)}'"
    try:
        # a private PID namespace too: whatever Ray leaves running ends with the scenarios
        done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", command], env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_a_killed_ray_sweep_finishes_on_rerun_bit_identical_to_the_local_backend(scenarios):
    finished, started = scenarios["killed_finished"], scenarios["killed_started"]
    assert finished and started  # killed after one run finished and another had saved a checkpoint
    assert scenarios["rerun_code"] == 0, scenarios["rerun_output"]
    assert scenarios["rerun_mtimes"] == scenarios["killed_mtimes"]  # finished runs were skipped
    for run in started:
        assert "(resumed)" in scenarios["commands"][run]  # unfinished ones resumed from their checkpoint
    assert scenarios["killed_csv"] == scenarios["local_csv"]  # same form, same metrics to the last bit
    assert scenarios["killed_md"].replace("killed", "local") == scenarios["local_md"]


@pytest.mark.slow
def test_a_ray_sweep_on_a_two_node_cluster_uses_both_nodes(scenarios):
    assert scenarios["cluster_code"] == 0, scenarios["cluster_output"]
    nodes = {re.search(r"node (\w+)\)", command).group(1) for command in scenarios["cluster_commands"]}
    assert len(scenarios["cluster_commands"]) == 4 and len(nodes) == 2
    assert scenarios["cluster_csv"] == scenarios["local_csv"]


@pytest.mark.slow
def test_asha_stops_the_bad_configuration_which_keeps_its_checkpoint(scenarios):
    stopped = scenarios["asha_stopped"]
    assert stopped and all("optim.lr_decoder=1e-12" in run for run in stopped)
    assert all("stopped early at step 100: jsd_official" in text for text in stopped.values())
    assert all(names == ["step_0000100.pt"] for names in scenarios["asha_checkpoints"].values())
    good, bad = scenarios["asha_table"]
    assert good["runs"] == 1 and "stopped" not in good
    assert bad["runs"] == 0 and bad["stopped"] == 1 and "diverged" not in bad  # stopped, not failed
    assert scenarios["asha_csv"].splitlines()[2].startswith("1e-12,0,0,1,")


@pytest.mark.slow
def test_a_trials_user_error_is_the_sweeps_one_line(scenarios):
    errors = scenarios["errors"]
    assert re.fullmatch(r"the sweep directory '.*error-storage' is not shared with Ray node \S+: put it on storage .*", errors["storage"])
    assert errors["metric"].startswith("--early-stop 'fid' is not among the metrics of an evaluation (kl, jsd_official")
