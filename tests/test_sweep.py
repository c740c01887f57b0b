"""Sweeps: aggregation on known inputs, skip/resume after an interruption, bad grid syntax."""

from __future__ import annotations

import json

import pytest

from softintrovae.cli import main
from softintrovae.errors import TrainingDiverged, UserError
from softintrovae.sweep import PAPER_BETAS, aggregate, as_configurations, best_per_metric, expand_grid, paper_grid, parse_grid, plan, run_name, sweep, train_or_resume

from .conftest import TINY


def test_parse_grid_types_values_and_rejects_bad_syntax():
    assert parse_grid(["method.beta_kl=0.1,1e-2", "train.steps=5"]) == {"method.beta_kl": [0.1, 0.01], "train.steps": [5]}
    assert parse_grid(["data.root=a=b,c"]) == {"data.root": ["a=b", "c"]}  # the key ends at the first =
    for bad in ("method.beta_kl", "method.beta_kl=", "=1,2", "method.beta_kl=0.1,,0.2"):
        with pytest.raises(UserError, match=r"must look like section.key=value1,value2,... or be a named grid \(paper\)$"):
            parse_grid([bad])


def test_paper_grid_follows_the_papers_ranges_with_beta_neg_tied_to_beta_kl():
    vae, soft, intro = paper_grid("vae"), paper_grid("soft-introvae"), paper_grid("introvae")
    assert len(vae) == 81  # the paper's VAE run count: 9 x 9
    for configuration in soft + intro:
        beta_kl, beta_neg = configuration["method.beta_kl"], configuration["method.beta_neg"]
        assert beta_kl <= beta_neg <= 5 * beta_kl + 1e-9
    assert {c["method.beta_rec"] for c in soft} == set(PAPER_BETAS) and min(PAPER_BETAS) == 0.05 and max(PAPER_BETAS) == 1.0
    assert all("method.margin" not in c for c in soft)
    # the points README names: β_neg ∈ {1, 2, 3, 5}·β_kl, m ∈ {1, 2, 4, 6, 8, 10}
    assert len(soft) == 4 * 81 and sorted({round(c["method.beta_neg"] / c["method.beta_kl"], 6) for c in soft}) == [1, 2, 3, 5]
    assert len(intro) == 6 * len(soft) and sorted({c["method.margin"] for c in intro}) == [1, 2, 4, 6, 8, 10]


def test_each_seed_of_a_configuration_sets_train_seed_and_data_seed(tmp_path):
    jobs = plan("vae-8gaussians", [{"method.beta_kl": 0.1}, {"method.beta_kl": 0.2}], 2, {"train.steps": 5}, tmp_path)
    assert [(j.overrides["train.seed"], j.overrides["data.seed"]) for j in jobs] == [(0, 0), (1, 1), (0, 0), (1, 1)]
    assert [j.path.relative_to(tmp_path).as_posix() for j in jobs] == [
        "method.beta_kl=0.1/seed0", "method.beta_kl=0.1/seed1", "method.beta_kl=0.2/seed0", "method.beta_kl=0.2/seed1"
    ]
    assert [j.overrides["method.beta_kl"] for j in jobs] == [0.1, 0.1, 0.2, 0.2] and all(j.overrides["train.steps"] == 5 for j in jobs)
    assert [j.label for j in jobs] == [{"method.beta_kl": 0.1}] * 2 + [{"method.beta_kl": 0.2}] * 2
    assert all(j.source == "vae-8gaussians" and j.overrides["train.progress"] is False for j in jobs)


def test_plan_refuses_a_bad_configuration_before_any_job(tmp_path):
    with pytest.raises(UserError, match="method.no_such_key"):
        plan("vae-8gaussians", [{"method.beta_kl": 0.1}, {"method.no_such_key": 1}], 1, {}, tmp_path)


def test_run_name_joins_the_overrides_and_names_no_override_base():
    assert run_name({"method.beta_kl": 0.1, "method.beta_rec": 1.0}) == "method.beta_kl=0.1,method.beta_rec=1.0"
    assert run_name({}) == "base"


def test_expand_grid_crosses_named_and_key_grids():
    grid = expand_grid(["paper", "train.steps=5,6"], "vae")
    assert len(grid) == 162 and grid[0] == {"method.beta_rec": 0.05, "method.beta_kl": 0.05, "train.steps": 5}
    assert expand_grid(["method.margin=1,2", "method.beta_kl=0.5"], "introvae") == [
        {"method.margin": 1, "method.beta_kl": 0.5},
        {"method.margin": 2, "method.beta_kl": 0.5},
    ]
    with pytest.raises(UserError, match="named grid"):
        expand_grid(["papers"], "vae")


def test_as_configurations_crosses_a_dict_of_values_and_copies_a_list():
    assert as_configurations({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    given = [{"a": 1}]
    configurations = as_configurations(given)
    assert configurations == given and configurations[0] is not given[0]

def test_aggregate_counts_diverged_runs_apart():
    table = aggregate([({"m": 1}, {"step": 3, "kl": 1.0}), ({"m": 1}, None), ({"m": 2}, None), ({"m": 2}, None)])
    assert table[0] == {"m": 1, "runs": 1, "diverged": 1, "kl_mean": 1.0, "kl_std": 0.0}
    assert table[1] == {"m": 2, "runs": 0, "diverged": 2}


def test_aggregate_mean_std_and_best_on_known_inputs():
    rows = [
        ({"m": 1}, {"step": 3, "kl": 1.0, "jsd": 4.0}),
        ({"m": 1}, {"step": 3, "kl": 3.0, "jsd": 4.0}),
        ({"m": 2}, {"step": 3, "kl": 0.5, "jsd": 6.0}),
        ({"m": 3}, {"step": 3, "kl": 1.0, "jsd": 7.0}),
        ({"m": 3}, {"step": 3, "kl": 2.0, "jsd": 7.0}),
        ({"m": 3}, {"step": 3, "kl": 3.0, "jsd": 7.0}),
    ]
    table = aggregate(rows)
    assert table[0] == {"m": 1, "runs": 2, "kl_mean": 2.0, "kl_std": pytest.approx(2**0.5), "jsd_mean": 4.0, "jsd_std": 0.0}
    assert table[1]["runs"] == 1 and table[1]["kl_std"] == 0.0
    assert table[2]["kl_std"] == pytest.approx(1.0)  # the sample std, over n − 1 = 2
    assert best_per_metric(table, ["m"]) == {"kl": "m=2", "jsd": "m=1"}


def test_sweep_skips_finished_runs_and_resumes_unfinished_ones(tmp_path):
    grid = {"method.beta_neg": [0.5, 1.0]}
    base = {**TINY, "train.steps": 8, "train.checkpoint_every": 4, "method.vae_warmup_steps": 2}
    table = sweep("soft-introvae-8gaussians", grid, tmp_path, seeds=2, overrides=base)
    assert [row["runs"] for row in table] == [2, 2]
    finished = tmp_path / "method.beta_neg=0.5" / "seed0"
    unfinished = tmp_path / "method.beta_neg=1.0" / "seed1"
    # simulate a crash after the step-4 checkpoint of one run: later checkpoint and final metrics lost
    (unfinished / "checkpoints" / "step_0000008.pt").unlink()
    (unfinished / "metrics.json").unlink()
    before = (finished / "metrics.json").stat().st_mtime_ns
    again = sweep("soft-introvae-8gaussians", grid, tmp_path, seeds=2, overrides=base)
    assert (finished / "metrics.json").stat().st_mtime_ns == before  # skipped, not retrained
    assert json.loads((unfinished / "metrics.json").read_text())["step"] == 8
    assert "(resumed)" in (unfinished / "command.txt").read_text()
    for row, row_again in zip(table, again):  # resuming reproduces the uninterrupted result
        assert row_again == pytest.approx(row)
    assert "Best (lowest mean) per metric" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("method.beta_neg,runs,diverged,stopped,kl_mean")


def test_a_diverged_run_is_counted_and_the_sweep_goes_on(tmp_path):
    table = sweep("vae-8gaussians", {"optim.lr_encoder": [2e-4, 1e30]}, tmp_path, overrides={**TINY, "train.steps": 4})
    assert [(row["runs"], row.get("diverged", 0)) for row in table] == [(1, 0), (0, 1)]
    assert "non-finite loss at step" in (tmp_path / "optim.lr_encoder=1e+30" / "seed0" / "diverged.txt").read_text()
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("optim.lr_encoder,runs,diverged,") and rows[1].startswith("0.0002,1,0,") and rows[2].startswith("1e+30,0,1,")


def test_a_diverged_training_leaves_its_reason_and_raises(tmp_path, monkeypatch):
    from softintrovae import trainer

    def diverging_train(source, out, overrides, argv, callbacks=None):
        out.mkdir()  # as a real training: the run directory exists before the first step
        raise TrainingDiverged("non-finite loss at step 3")

    monkeypatch.setattr(trainer, "train", diverging_train)
    with pytest.raises(TrainingDiverged):
        train_or_resume("vae-8gaussians", {}, tmp_path / "run", ["softintrovae", "(batch)", "vae-8gaussians"])
    assert (tmp_path / "run" / "diverged.txt").read_text() == "non-finite loss at step 3\n"


def test_sweep_cli_bad_grid_is_one_line(tmp_path, capsys):
    code = main(["sweep", "vae-8gaussians", "--grid", "method.beta_kl:0.1", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "must look like" in err[0]
    code = main(["sweep", "vae-8gaussians", "--grid", "method.nope=1,2", "--out", str(tmp_path / "x")])
    assert code == 2 and "unknown config key 'method.nope'" in capsys.readouterr().err
