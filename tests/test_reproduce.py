"""`softintrovae reproduce table2|stability|collapse` end to end on a tiny budget, and its bad inputs."""

from __future__ import annotations

import csv

import pytest

from softintrovae.cli import main
from softintrovae.config import load_config
from softintrovae.experiments.toy2d import PAPER_TABLE2, _remaining_cost
from softintrovae.sweep import Job

from .conftest import TINY

TINY_SET = [a for k, v in {**TINY, "method.vae_warmup_steps": 2, "train.log_every": 1}.items() if k != "train.progress" for a in ("--set", f"{k}={v}")]


# Paper Table 5 (SPEC §3), as written there: β_rec/β_kl, β_rec/β_kl/β_neg/m, β_rec/β_kl/β_neg.
TABLE5 = {
    "8gaussians": ("0.8/0.05", "0.3/0.5/1.0/1.0", "0.2/0.3/0.9"),
    "spiral": ("1.0/0.05", "0.2/0.5/0.5/2.0", "0.2/0.5/1.0"),
    "checkerboard": ("0.8/0.1", "0.4/0.2/0.2/8.0", "0.2/0.1/0.2"),
    "rings": ("0.8/0.05", "0.8/0.5/0.5/5.0", "0.2/0.2/1.0"),
}


@pytest.mark.parametrize("dataset", TABLE5)
def test_every_2d_preset_holds_table5s_hyper_parameters_and_the_papers_schedule(dataset):
    keys = {"vae": ("beta_rec", "beta_kl"), "introvae": ("beta_rec", "beta_kl", "beta_neg", "margin"), "soft-introvae": ("beta_rec", "beta_kl", "beta_neg")}
    for (method, names), row in zip(keys.items(), TABLE5[dataset]):
        config = load_config(f"{method}-{dataset}")
        assert config.method.name == method and config.data.name == dataset
        assert {n: getattr(config.method, n) for n in names} == dict(zip(names, map(float, row.split("/"))))
        # §6.1 / SPEC §3: batch 512, 30,000 iterations with 2,000 of VAE warm-up, lr 2e-4, γ_r = 1e-8, z_dim 2
        assert (config.data.batch_size, config.train.steps, config.method.vae_warmup_steps) == (512, 30_000, 2000)
        assert (config.optim.lr_encoder, config.optim.lr_decoder, config.method.gamma_r) == (2e-4, 2e-4, 1e-8)
        assert (config.model.z_dim, config.model.hidden_dim, config.model.hidden_layers) == (2, 256, 4)


def _reproduce(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["reproduce", *args, *TINY_SET])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table2_end_to_end_with_paper_values_skip_and_report_only(tmp_path, capsys):
    out = tmp_path / "t2"
    code, printed, _ = _reproduce(capsys, "table2", "--datasets", "8gaussians,rings", "--seeds", "2", "--iterations", "6", "--workers", "2", "--out", str(out))
    assert code == 0 and "| 8gaussians | soft-introvae | 2 |" in printed
    rows = _rows(out / "table2.csv")
    assert [(r["dataset"], r["method"], r["runs"]) for r in rows] == [
        (d, m, "2") for d in ("8gaussians", "rings") for m in ("vae", "introvae", "soft-introvae")
    ]
    assert float(rows[2]["paper_kl"]) == PAPER_TABLE2["8gaussians"]["soft-introvae"][1]
    assert all(float(r["kl_mean"]) >= 0 and float(r["gnelbo_mean"]) > 0 for r in rows)
    assert (out / "figure2.png").stat().st_size > 10_000
    assert (out / "soft-introvae-rings" / "seed1" / "final_eval.npz").exists()

    run = out / "vae-8gaussians" / "seed0" / "metrics.json"
    before = run.stat().st_mtime_ns
    code, _, _ = _reproduce(capsys, "table2", "--datasets", "8gaussians,rings", "--seeds", "2", "--iterations", "6", "--out", str(out))
    assert code == 0 and run.stat().st_mtime_ns == before  # finished runs are skipped
    code, printed, _ = _reproduce(capsys, "table2", "--datasets", "8gaussians", "--methods", "vae", "--seeds", "5", "--iterations", "6", "--out", str(out), "--report-only")
    assert code == 0 and "| 8gaussians | vae | 2 |" in printed and not (out / "vae-8gaussians" / "seed4").exists()


def test_table2_resumes_a_run_cut_short(tmp_path, capsys):
    out = tmp_path / "t2"
    args = ("table2", "--datasets", "spiral", "--methods", "soft-introvae", "--seeds", "1", "--iterations", "8", "--out", str(out))
    assert _reproduce(capsys, *args, "--set", "train.checkpoint_every=4")[0] == 0
    first = _rows(out / "table2.csv")[0]
    run = out / "soft-introvae-spiral" / "seed0"
    (run / "checkpoints" / "step_0000008.pt").unlink()  # a crash after the step-4 checkpoint
    (run / "metrics.json").unlink()
    assert _reproduce(capsys, *args, "--set", "train.checkpoint_every=4")[0] == 0
    again = _rows(out / "table2.csv")[0]
    assert "(resumed)" in (run / "command.txt").read_text()
    assert [again[k] for k in ("kl_mean", "jsd_official_mean", "gnelbo_mean")] == [first[k] for k in ("kl_mean", "jsd_official_mean", "gnelbo_mean")]


def test_stability_end_to_end(tmp_path, capsys):
    out = tmp_path / "st"
    code, printed, _ = _reproduce(capsys, "stability", "--margins", "1,5", "--seeds", "2", "--iterations", "6", "--out", str(out))
    assert code == 0 and "IntroVAE's range over m" in printed
    rows = _rows(out / "stability.csv")
    assert [(r["method"], r["margin"], r["runs"]) for r in rows] == [("soft-introvae", "–", "2"), ("introvae", "1.0", "2"), ("introvae", "5.0", "2")]
    assert (out / "stability.png").stat().st_size > 10_000
    config = (out / "soft-introvae" / "seed0" / "config.yaml").read_text()
    assert "beta_kl: 0.5" in config and "beta_rec: 0.3" in config  # IntroVAE's betas for the flat reference


def test_collapse_end_to_end(tmp_path, capsys):
    out = tmp_path / "co"
    code, printed, _ = _reproduce(capsys, "collapse", "--seeds", "1", "--iterations", "8", "--out", str(out))
    assert code == 0 and "KL of real data" in printed
    rows = {r["method"]: r for r in _rows(out / "collapse.csv")}
    assert set(rows) == {"vae", "soft-introvae"} and all(float(r["kl_real_last"]) >= 0 for r in rows.values())
    config = (out / "soft-introvae" / "seed0" / "config.yaml").read_text()
    assert "beta_kl: 1.0" in config and "beta_rec: 0.5" in config and "beta_neg: 5.0" in config
    assert (out / "collapse.png").stat().st_size > 10_000


def test_longest_remaining_work_starts_first(tmp_path):
    jobs = {m: Job(f"{m}-8gaussians", {}, tmp_path / m) for m in ("vae", "introvae", "soft-introvae")}
    costs = {m: _remaining_cost(job) for m, job in jobs.items()}
    assert costs["soft-introvae"] > costs["introvae"] > costs["vae"] == 30000
    assert costs["soft-introvae"] == 2000 + 3 * 28000  # warm-up steps cost a VAE step


@pytest.mark.parametrize(
    "args, message",
    [
        (["table2", "--datasets", "moons"], "unknown dataset 'moons'"),
        (["table2", "--methods", "gan"], "unknown method 'gan'"),
        (["table2", "--margins", "1,2"], "--margins applies to 'reproduce stability'"),
        (["stability", "--margins", "1,x"], "must be a comma-separated list of numbers"),
        (["stability", "--margins", "0,2"], "margins must be > 0"),
        (["collapse", "--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
        (["collapse", "--iterations", "0"], "argument --iterations: must be an integer >= 1, got 0"),
        (["figure9"], "invalid choice: 'figure9'"),
        (["table2", "--report-only"], "has no finished runs to report yet"),
        (["table2", "--set", "method.nope=1"], "unknown config key 'method.nope'"),
    ],
)
def test_bad_reproduce_input_is_one_line(tmp_path, capsys, args, message):
    code = main(["reproduce", *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_other_settings_in_the_same_directory_are_refused(tmp_path, capsys):
    out = tmp_path / "co"
    assert _reproduce(capsys, "collapse", "--seeds", "1", "--iterations", "4", "--out", str(out))[0] == 0
    code, _, err = _reproduce(capsys, "collapse", "--seeds", "1", "--iterations", "5", "--out", str(out))
    assert code == 2 and "holds a collapse reproduction with 4 iterations" in err and len(err.strip().splitlines()) == 1
