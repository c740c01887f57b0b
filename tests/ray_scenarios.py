"""The Ray sweep scenarios of test_sweep_ray.py, run in one process inside a private network
namespace (Ray then listens on loopback only); each writes what it saw into ``OUT/report.json``.

- ``killed``: a 2x2 grid on a local Ray instance, its driver killed (SIGKILL, with all of Ray's processes)
  after one run finished and another saved a checkpoint, then run again; beside it the same sweep
  on the local backend;
- ``cluster``: the same sweep on a simulated two-node cluster (a head and a worker node, each with
  one CPU), driven by the command line with ``--address``;
- ``asha``: a good and a deliberately bad configuration one after the other with ``--early-stop``
  on that cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PRESET = "soft-introvae-8gaussians"
GRID = ["method.beta_neg=0.5,1.0", "method.beta_kl=0.3,0.5"]


def sets(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def driver(out: Path, overrides: dict, *extra: str, **popen) -> subprocess.Popen:
    grid = [arg for g in GRID for arg in ("--grid", g)]
    argv = [sys.executable, "-m", "softintrovae", "sweep", PRESET, *grid, *sets(overrides), "--backend", "ray", "--out", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def runs(out: Path) -> list[Path]:
    return sorted(out.glob("*/seed*"))


def kill_all_but_me() -> None:
    """SIGKILL every other process of this PID namespace (this script is its first), and reap them."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def killed(out: Path, overrides: dict, report: dict) -> None:
    from softintrovae.sweep import sweep

    sweep_dir = out / "killed"
    first = driver(sweep_dir, overrides, "--workers", "2")  # two runs at a time, however many CPUs
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        done = [r for r in runs(sweep_dir) if (r / "metrics.json").exists()]
        started = [r for r in runs(sweep_dir) if not (r / "metrics.json").exists() and any((r / "checkpoints").glob("step_*.pt"))]
        if done and started:
            break
        time.sleep(0.02)
    kill_all_but_me()  # the driver and the Ray instance it started, trials included: as a crash would
    report["killed_finished"] = [str(r) for r in runs(sweep_dir) if (r / "metrics.json").exists()]
    report["killed_started"] = [
        str(r) for r in runs(sweep_dir) if not (r / "metrics.json").exists() and any((r / "checkpoints").glob("step_*.pt"))
    ]
    report["killed_mtimes"] = {r: Path(r, "metrics.json").stat().st_mtime_ns for r in report["killed_finished"]}
    started = time.monotonic()
    again = driver(sweep_dir, overrides, "--workers", "2")
    report["rerun_output"] = again.communicate(timeout=300)[0]
    report["rerun_code"], report["rerun_seconds"] = again.returncode, time.monotonic() - started
    report["rerun_mtimes"] = {r: Path(r, "metrics.json").stat().st_mtime_ns for r in report["killed_finished"]}
    report["commands"] = {str(r): (r / "command.txt").read_text() for r in runs(sweep_dir)}
    report["killed_csv"] = (sweep_dir / "results.csv").read_text()
    report["killed_md"] = (sweep_dir / "results.md").read_text()
    local = out / "local"
    grid = {"method.beta_neg": [0.5, 1.0], "method.beta_kl": [0.3, 0.5]}
    sweep(PRESET, grid, local, workers=2, overrides={**overrides, "train.progress": False})
    report["local_csv"] = (local / "results.csv").read_text()
    report["local_md"] = (local / "results.md").read_text()


def cluster_scenarios(out: Path, overrides: dict, asha_overrides: dict, report: dict) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from softintrovae.sweep import sweep
    from softintrovae.sweep_ray import RayBackend

    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    report["cluster_start_seconds"] = time.monotonic() - started
    try:
        started = time.monotonic()
        on_cluster = driver(out / "cluster", overrides, "--address", cluster.address)
        report["cluster_output"] = on_cluster.communicate(timeout=300)[0]
        report["cluster_code"], report["cluster_seconds"] = on_cluster.returncode, time.monotonic() - started
        report["cluster_csv"] = (out / "cluster" / "results.csv").read_text()
        report["cluster_commands"] = [(r / "command.txt").read_text() for r in runs(out / "cluster")]

        ray.init(address=cluster.address, logging_level="WARNING")
        grid = [{"optim.lr_decoder": 2e-3}, {"optim.lr_decoder": 1e-12}]  # the second decoder never learns
        backend = RayBackend(early_stop="jsd_official", max_concurrent=1)  # one after the other: the good run is seen first
        started = time.monotonic()
        report["asha_table"] = sweep(PRESET, grid, out / "asha", overrides=asha_overrides, backend=backend)
        report["asha_seconds"] = time.monotonic() - started
        stopped = [r for r in runs(out / "asha") if (r / "stopped.txt").exists()]
        report["asha_stopped"] = {str(r): (r / "stopped.txt").read_text() for r in stopped}
        report["asha_checkpoints"] = {str(r): sorted(p.name for p in (r / "checkpoints").glob("step_*.pt")) for r in stopped}
        report["asha_csv"] = (out / "asha" / "results.csv").read_text()
        report["errors"] = one_line_errors(out, asha_overrides)
        ray.shutdown()
    finally:
        cluster.shutdown()


def one_line_errors(out: Path, overrides: dict) -> dict[str, str]:
    """What a trial's errors become on the driver: a node that does not see the sweep directory
    (the driver's token is not the one there), a metric the evaluations do not have."""
    from softintrovae import sweep_ray
    from softintrovae.errors import UserError
    from softintrovae.sweep import sweep

    errors, overrides = {}, {**overrides, "train.steps": 8, "train.eval_every": 4, "method.vae_warmup_steps": 2}
    original = sweep_ray.write_storage_marker
    for name, backend in {"storage": sweep_ray.RayBackend(), "metric": sweep_ray.RayBackend(early_stop="fid")}.items():
        if name == "storage":  # the trials get a token the directory they see does not hold
            sweep_ray.write_storage_marker = lambda out_: original(out_) + "-elsewhere"
        try:
            sweep(PRESET, [{"method.beta_neg": 0.9}], out / f"error-{name}", overrides=overrides, backend=backend)
        except UserError as exc:
            errors[name] = str(exc)
        finally:
            sweep_ray.write_storage_marker = original
    return errors


def main(out: str, overrides: str, asha_overrides: str) -> None:
    out_path, report = Path(out), {}
    try:
        killed(out_path, json.loads(overrides), report)
        cluster_scenarios(out_path, json.loads(overrides), json.loads(asha_overrides), report)
    finally:
        (out_path / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
