"""`softintrovae sample / reconstruct / interpolate` on a tiny image run, and the bilinear latent grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from softintrovae.cli import main
from softintrovae.checkpoint import TrainedModel
from softintrovae.data import build_data
from softintrovae.models import eval_mode
from softintrovae.pictures import bilinear_latents
from softintrovae.rundir import RunDir

from .conftest import TINY, as_cli_sets, tiny_image

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def image_run(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "images.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), labels=np.arange(40) % 2)
    out = tmp_path / "run"
    assert main(["train", "npz", "--out", str(out), *as_cli_sets(tiny_image(npz, train__steps=4))]) == 0
    return out


def test_bilinear_grid_has_the_corners_and_is_linear_along_edges():
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * 7
    grid = bilinear_latents(corners, size=8).view(8, 8, 2)
    assert torch.equal(grid[0, 0], corners[0]) and torch.equal(grid[0, -1], corners[1])
    assert torch.equal(grid[-1, 0], corners[2]) and torch.equal(grid[-1, -1], corners[3])
    assert torch.allclose(grid[3, 5], torch.tensor([5.0, 3.0]))  # z = (j, i) for these corners


def test_interpolation_corners_decode_to_the_corner_images_reconstructions(image_run):
    model = TrainedModel.load(image_run)
    images = build_data(model.config).sample(4, torch.Generator().manual_seed(0))
    with eval_mode(model.encoder, model.decoder):
        mu, _ = model.encoder(images)
        grid = model.decoder(bilinear_latents(mu, 8))
        reconstructions = model.decoder(mu)
    assert torch.allclose(grid[[0, 7, 56, 63]], reconstructions, atol=1e-6)


def test_picture_commands_write_pngs(image_run, tmp_path, capsys):
    assert main(["sample", str(image_run), "-n", "10"]) == 0
    assert main(["reconstruct", str(image_run), "-n", "4", "--out", str(tmp_path / "rec.png")]) == 0
    assert main(["interpolate", str(image_run), "--size", "5", "--out", str(tmp_path / "interp.png")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0].endswith("pictures/samples_step0000004.png")
    assert printed[1:] == [str(tmp_path / p) for p in ("rec.png", "interp_linear.png", "interp_bilinear.png")]
    assert all(Path(p).stat().st_size > 1000 for p in printed)


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "{run}", "-n", "0"], "argument -n/--n: must be an integer >= 1, got 0"),
        (["interpolate", "{run}", "--size", "1"], "argument --size: must be an integer between 2 and 64, got 1"),
        (["reconstruct", "{missing}"], "does not exist"),
        (["sample", "{run2d}"], "is a 2D run"),
    ],
)
def test_bad_picture_input_is_one_line(image_run, tmp_path, capsys, args, message):
    run2d = tmp_path / "run2d"
    if "{run2d}" in args:
        sets = [a for k, v in {**TINY, "train.steps": 2}.items() for a in ("--set", f"{k}={v}")]
        assert main(["train", "vae-8gaussians", "--out", str(run2d), *sets]) == 0
    capsys.readouterr()
    argv = [a.format(run=image_run, missing=tmp_path / "nope", run2d=run2d) for a in args]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_feature_net_command_trains_and_saves(tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / "labelled.npz"
    images = rng.integers(0, 60, (120, 8, 8), dtype=np.uint8)
    labels = np.arange(120) % 2
    images[labels == 1] += 150  # two easily told classes
    np.savez(npz, images=images, labels=labels)
    out = tmp_path / "net.pt"
    assert main(["feature-net", "train", "--dataset", "npz", "--root", str(npz), "--epochs", "2", "--out", str(out)]) == 0
    assert out.is_file() and "held-out accuracy" in capsys.readouterr().out
    code = main(["feature-net", "train", "--dataset", "8gaussians"])
    assert code == 2 and "unknown image dataset '8gaussians'" in capsys.readouterr().err


def test_evaluate_adds_fid_and_kid_with_the_datasets_feature_net(image_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOFTINTROVAE_FEATURE_NETS", str(tmp_path / "nets"))
    monkeypatch.setenv("HOME", str(tmp_path))  # the real-feature cache stays inside the test
    wanted = "fid40_train_npznet,kid40_train_npznet"
    code = main(["evaluate", str(image_run), "--metrics", wanted])
    assert code == 2 and "feature-net train --dataset npz" in capsys.readouterr().err
    root = RunDir(image_run).load_config().data.root
    assert main(["feature-net", "train", "--dataset", "npz", "--root", root, "--epochs", "1"]) == 0
    assert main(["evaluate", str(image_run), "--metrics", wanted]) == 0
    final = [r for r in RunDir(image_run).read_log() if r["kind"] == "final"][-1]
    assert final["fid40_train_npznet"] >= 0 and math.isfinite(final["kid40_train_npznet"])
    capsys.readouterr()
    assert main(["evaluate", str(image_run), "--metrics", "fid40_train_othernet"]) == 2
    assert "not this run's FID/KID protocol; computed: fid40_train_npznet" in capsys.readouterr().err
    assert main(["evaluate", str(image_run), "--metrics", "fid_10k"]) == 2
    assert "must look like fid10k_train_fmnistnet" in capsys.readouterr().err
