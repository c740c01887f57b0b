"""The command line end to end, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from softintrovae.cli import main

from .conftest import TINY

SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "soft-introvae-8gaussians", "--out", str(out), "--set", "train.steps=30",
                              "--set", "method.vae_warmup_steps=10", *SETS)
    assert code == 0
    assert f"run directory: {out}" in stdout
    for name in ("samples.png", "density.png", "metrics.json", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert "train soft-introvae-8gaussians --out" in (out / "command.txt").read_text()
    code, stdout, _ = run_cli(capsys, "evaluate", str(out))
    assert code == 0
    metrics = json.loads(stdout.strip().splitlines()[-1])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved.pop("step") == saved.pop("total_steps") == 30 and saved.pop("train_seconds") > 0
    assert saved == pytest.approx(metrics)
    code, _, _ = run_cli(capsys, "train", "--resume", str(out), "--set", "train.steps=35")
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 35


def test_config_file_and_presets(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("data: {name: rings, batch_size: 32}\nmethod: {name: vae}\ntrain: {steps: 3}\n")
    code, stdout, _ = run_cli(capsys, "train", str(config), "--out", str(tmp_path / "r"), *SETS)
    assert code == 0
    code, stdout, _ = run_cli(capsys, "presets")
    names = [line.split()[0] for line in stdout.splitlines()]
    for method in ("vae", "introvae", "soft-introvae"):
        for dataset in ("8gaussians", "spiral", "checkerboard", "rings"):
            assert f"{method}-{dataset}" in names
    assert "demo" in names


def test_demo_prints_where_its_outputs_are(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(capsys, "demo", "--out", str(out), "--set", "train.steps=12", "--set", "method.vae_warmup_steps=4", *SETS)
    assert code == 0
    for name in ("samples.png", "density.png", "metrics.json"):
        assert str(out / name) in stdout
    assert "KL" in stdout and "JSD" in stdout


def _corrupt_run(tmp_path):
    out = tmp_path / "corrupt"
    assert main(["train", "vae-8gaussians", "--out", str(out), "--set", "train.steps=2", *SETS]) == 0
    (out / "checkpoints" / "step_0000002.pt").write_bytes(b"\x00garbage")
    return out


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: {name: vae\n")
    return path


BAD_INPUTS = {
    "unknown preset": lambda p: ["train", "no-such-preset"],
    "unknown key": lambda p: ["train", "vae-8gaussians", "--set", "method.betakl=1"],
    "unknown section": lambda p: ["train", "vae-8gaussians", "--set", "optimizer.lr=1"],
    "ill-typed value": lambda p: ["train", "vae-8gaussians", "--set", "train.steps=many"],
    "negative beta": lambda p: ["train", "vae-8gaussians", "--set", "method.beta_rec=-0.5"],
    "unknown method": lambda p: ["train", "vae-8gaussians", "--set", "method.name=gan"],
    "unknown dataset": lambda p: ["train", "vae-8gaussians", "--set", "data.name=moons"],
    "override syntax": lambda p: ["train", "vae-8gaussians", "--set", "method.beta_kl"],
    "missing run dir": lambda p: ["evaluate", str(p / "nowhere")],
    "not a run dir": lambda p: ["evaluate", str(p)],
    "missing resume dir": lambda p: ["train", "--resume", str(p / "nowhere")],
    "corrupt checkpoint": lambda p: ["evaluate", str(_corrupt_run(p))],
    "malformed yaml": lambda p: ["train", str(_bad_yaml(p))],
    "missing config file": lambda p: ["train", str(p / "absent.yaml")],
    "bad flag": lambda p: ["train", "vae-8gaussians", "--bogus"],
    "no command": lambda p: [],
    "preset and resume": lambda p: ["train", "vae-8gaussians", "--resume", str(p)],
    "bad device": lambda p: ["train", "vae-8gaussians", "--set", "train.device=tpu"],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_exit_code_2(case, tmp_path, capsys):
    argv = BAD_INPUTS[case](tmp_path)
    capsys.readouterr()
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softintrovae: error: "), err


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "softintrovae", "presets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "soft-introvae-8gaussians" in proc.stdout


HEAVY_MODULES = ("torch", "matplotlib", "numpy")
_IMPORTS_AFTER = """
import sys
from softintrovae.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy:", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["presets"], ["train", "--help"], ["evaluate", "--help"]], ids=" ".join)
def test_help_version_and_presets_do_not_import_torch(argv):
    """They start at once: the commands import the library (torch, matplotlib) only when they run."""
    script = _IMPORTS_AFTER.format(heavy=HEAVY_MODULES)
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "heavy: []", proc.stdout


def test_reproduce_help_shows_the_experiments_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "ood: importance samples M (default 5)" in out and "seeds per setting (default: table2 5, stability 3, collapse 3)" in out
    assert "(paper: 30000)" in out


def test_the_package_api_loads_on_first_use():
    script = "import sys, softintrovae; assert 'torch' not in sys.modules; from softintrovae import train, load_config, SoftIntroVAE, UserError; print(train.__module__, SoftIntroVAE.__module__)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["softintrovae.trainer", "softintrovae.methods"]
