"""Vector data of any dimension (``data.name: points``): reading .npy / .npz / .csv, standardisation
recorded in the run, a user's 2D file trained from the command line with the toy sets' metrics and
plots, likelihood metrics in other dimensions, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from softintrovae import load_config, resume, train
from softintrovae.checkpoint import load_checkpoint
from softintrovae.cli import main
from softintrovae.data import build_data
from softintrovae.data.points import PointStream, Standardization, load_points, square_limit
from softintrovae.errors import UserError
from softintrovae.rundir import RunDir

from .conftest import as_cli_sets, tiny_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_POINTS = tiny_overrides(train__steps=30, method__vae_warmup_steps=10, train__checkpoint_every=10)


def two_moons(n: int = 800, seed: int = 0) -> np.ndarray:
    """A user's 2D data far from the origin and at its own scale."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x * 40 + 100, y * 40 - 7], axis=1) + rng.normal(scale=2.0, size=(n, 2))


def test_points_load_from_npy_npz_and_csv_with_or_without_a_header(tmp_path):
    points = np.random.default_rng(0).normal(size=(20, 3))
    np.save(tmp_path / "p.npy", points)
    np.savez(tmp_path / "named.npz", points=points, other=np.zeros(3))
    np.savez(tmp_path / "single.npz", anything=points)
    np.savetxt(tmp_path / "plain.csv", points, delimiter=",")
    np.savetxt(tmp_path / "header.csv", points, delimiter=",", header="a,b,c", comments="")
    for name in ("p.npy", "named.npz", "single.npz", "plain.csv", "header.csv"):
        assert np.allclose(load_points(tmp_path / name), points), name
    np.save(tmp_path / "line.npy", points[:, 0])
    assert load_points(tmp_path / "line.npy").shape == (20, 1)


@pytest.mark.parametrize(
    "write, problem",
    [
        (lambda p: p.with_suffix(".txt").write_text("1,2\n"), "must end in .npy, .npz, .csv"),
        (lambda p: None, "not found"),
        (lambda p: np.save(p, np.array([[1.0, np.nan], [0.0, 1.0]])), "must be finite"),
        (lambda p: np.save(p, np.zeros((1, 2))), "at least 2 points"),
        (lambda p: np.save(p, np.zeros((4, 2, 2))), r"must be a real \(N, D\) array"),
        (lambda p: p.write_bytes(b"garbage"), "is not readable"),
    ],
)
def test_bad_points_files_are_one_line_errors(tmp_path, write, problem):
    path = tmp_path / "points.npy"
    write(path)
    with pytest.raises(UserError, match=problem):
        load_points(path.with_suffix(".txt") if "end in" in problem else path)


def test_standardisation_is_fitted_recorded_and_undone(tmp_path):
    raw = two_moons()
    np.save(tmp_path / "moons.npy", raw)
    stream = PointStream(tmp_path / "moons.npy", batch_size=64)
    assert np.allclose(stream.points.mean(0), 0, atol=1e-5) and np.allclose(stream.points.std(0, unbiased=False), 1, atol=1e-4)
    assert np.allclose(stream.standardization.invert(stream.points.double().numpy()), raw)
    assert stream.limit == square_limit(stream.standardization.apply(raw)) and 2 <= stream.limit <= 4
    assert Standardization.from_dict(stream.state_dict(0)["standardization"]).std.tolist() == stream.standardization.std.tolist()
    raw_stream = PointStream(tmp_path / "moons.npy", batch_size=64, standardize=False)
    assert torch.equal(raw_stream.points, torch.from_numpy(raw.astype(np.float32))) and raw_stream.limit > 140
    constant = np.concatenate([raw, np.full((len(raw), 1), 5.0)], axis=1)  # a constant coordinate keeps std 1
    assert Standardization.fit(constant).std[2] == 1.0


def test_a_users_2d_point_file_trains_from_the_cli_with_plots_and_metrics(tmp_path, capsys):
    np.savetxt(tmp_path / "moons.csv", two_moons(), delimiter=",", header="x,y", comments="")
    out = tmp_path / "run"
    argv = ["train", "points", "--out", str(out), "--set", f"data.root={tmp_path / 'moons.csv'}", *as_cli_sets(TINY_POINTS)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "final metrics: kl" in printed and "jsd_official" in printed and "gnelbo" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"kl", "jsd_official", "jsd_textbook", "gnelbo"} <= set(metrics) and metrics["step"] == 30
    for picture in ("samples.png", "density.png", "final_eval.npz"):
        assert (out / picture).is_file(), picture
    record = json.loads((out / "data.json").read_text())
    assert record["points"] == 800 and record["input_shape"] == [2] and 2 <= record["limit"] <= 4
    assert np.allclose(record["standardization"]["mean"], two_moons().mean(0))
    saved = load_checkpoint(RunDir(out).latest_checkpoint())["data"]
    assert saved["standardization"] == record["standardization"] and saved["size"] == 800


def test_points_of_other_dimensions_get_likelihood_and_reconstruction_metrics(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "five.npy", rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5)) + 3.0)
    result = train("points", out=tmp_path / "run", overrides={**TINY_POINTS, "data.root": str(tmp_path / "five.npy"), "model.z_dim": 3})
    assert set(result.metrics) == {"rec_mse", "kl", "elbo", "log_px_iw5"}
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert result.metrics["log_px_iw5"] >= result.metrics["elbo"] - 1e-3  # the IW bound is the tighter one
    samples = np.load(tmp_path / "run" / "samples.npz")["samples"]
    assert samples.shape == (500, 5)


def test_a_points_run_resumes_bit_for_bit_in_the_checkpoints_units(tmp_path):
    np.save(tmp_path / "moons.npy", two_moons())
    overrides = {**TINY_POINTS, "data.root": str(tmp_path / "moons.npy")}
    whole = train("points", out=tmp_path / "whole", overrides=overrides)
    train("points", out=tmp_path / "half", overrides={**overrides, "train.steps": 20})
    resumed = resume(tmp_path / "half", ["train.steps=30"])
    assert resumed.metrics == whole.metrics
    got, want = (load_checkpoint(RunDir(tmp_path / p).latest_checkpoint()) for p in ("half", "whole"))
    assert all(torch.equal(got["encoder"][k], v) for k, v in want["encoder"].items())
    np.save(tmp_path / "moons.npy", two_moons() * 2)  # the file changed: the model keeps its units
    stream = build_data(load_config("points", overrides))
    with pytest.warns(UserWarning, match="standardised with the checkpoint's mean and std"):
        stream.load_state_dict(got["data"], got["step"])
    assert np.allclose(stream.standardization.to_dict()["std"], got["data"]["standardization"]["std"])
