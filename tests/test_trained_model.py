"""One way in for a trained model: TrainedModel.load needs no training data and reads each file once."""

from __future__ import annotations

import pathlib
from collections import Counter

import numpy as np
import pytest
import torch

from softintrovae.checkpoint import TrainedModel, load_checkpoint, save_checkpoint
from softintrovae.cli import main
from softintrovae.errors import UserError
from softintrovae.rundir import RunDir
from softintrovae.trainer import train

from .conftest import TINY, as_cli_sets, tiny_image

pytestmark = pytest.mark.usefixtures("single_thread")


def other_images(path: pathlib.Path, count: int = 12, seed: int = 1) -> pathlib.Path:
    """A second .npz of 8x8 RGB images: what a user hands in once the training data are gone."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8))
    return path


@pytest.fixture
def runs(tmp_path, npz):
    """A residual and a translation run trained on ``npz``, and a 2D run; then the npz is moved away."""
    image = train("npz", out=tmp_path / "image", overrides=tiny_image(npz, train__steps=3)).run_dir
    translation = tmp_path / "translation"
    overrides = tiny_image(npz, train__steps=3, model__arch="translation", model__class_z_dim=3, model__hidden_dim=8)
    train("npz", out=translation, overrides=overrides)
    toy = train("soft-introvae-8gaussians", out=tmp_path / "toy", overrides={**TINY, "train.steps": 3, "method.vae_warmup_steps": 1}).run_dir
    npz.rename(tmp_path / "elsewhere.npz")
    return {"image": image, "translation": translation, "toy": toy, "given": other_images(tmp_path / "given.npz")}


def test_a_trained_run_is_used_without_its_training_data(runs, tmp_path):
    image, given = runs["image"], runs["given"]
    model = TrainedModel.load(image)
    assert model.input_shape == (3, 8, 8) and model.num_classes == 0 and model.latents.z_dim == 4 and model.step == 3
    assert model.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 3, 8, 8)
    x = torch.from_numpy(np.load(given)["images"]).permute(0, 3, 1, 2).float().div(255)
    assert model.reconstruct(x).shape == x.shape
    log_px = model.log_likelihood(x, samples=3)
    assert log_px.shape == (12,) and bool(torch.isfinite(log_px).all())

    assert main(["sample", str(image), "-n", "4"]) == 0
    assert main(["reconstruct", str(image), "-n", "4", "--images", str(given), "--out", str(tmp_path / "rec.png")]) == 0
    assert main(["interpolate", str(image), "--images", str(given), "--size", "3", "--out", str(tmp_path / "i.png")]) == 0
    report = tmp_path / "ood"
    assert main(["ood", str(image), "--in", f"npz={given}", "--out", f"npz={other_images(tmp_path / 'o.npz', seed=2)}",
                 "--samples", "2", "--report", str(report)]) == 0  # fmt: skip
    assert (report / "ood.json").is_file() and (tmp_path / "rec.png").is_file() and (tmp_path / "i_bilinear.png").is_file()

    matrix = tmp_path / "transfer.png"
    assert main(["translate", str(runs["translation"]), "--images", str(given), "--rows", "2", "--columns", "3", "--out", str(matrix)]) == 0
    assert matrix.stat().st_size > 1000
    toy = TrainedModel.load(runs["toy"])
    assert toy.input_shape == (2,) and toy.sample(7).shape == (7, 2)


def test_without_the_data_and_without_given_images_the_error_says_what_to_give(runs, capsys):
    assert main(["reconstruct", str(runs["image"]), "-n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "--images" in err[0], err


def test_a_checkpoint_file_alone_loads_with_the_config_it_holds(runs):
    checkpoint = RunDir(runs["image"]).latest_checkpoint()
    from_file, from_run = TrainedModel.load(checkpoint), TrainedModel.load(runs["image"])
    assert from_file.run_dir is None and from_file.config == from_run.config
    z = torch.randn(3, 4)
    torch.testing.assert_close(from_file.decode(z), from_run.decode(z), rtol=0, atol=0)


def test_a_checkpoint_from_before_the_model_record_needs_its_data_and_says_so(tmp_path, npz):
    run = train("npz", out=tmp_path / "old", overrides=tiny_image(npz, train__steps=2)).run_dir
    path = RunDir(run).latest_checkpoint()
    state = load_checkpoint(path)
    del state["model"], state["total_steps"]  # what older versions wrote
    save_checkpoint(path, state)
    assert TrainedModel.load(run).input_shape == (3, 8, 8)  # the data tell the shape
    npz.rename(tmp_path / "gone.npz")
    with pytest.raises(UserError, match="written before checkpoints recorded their input shape.*missing: npz file .* not found"):
        TrainedModel.load(run)


class FileReads:
    """Counts reads of config.yaml files and of checkpoint files."""

    def __init__(self, monkeypatch):
        self.counts: Counter[str] = Counter()
        read_text, read_bytes = pathlib.Path.read_text, pathlib.Path.read_bytes

        def counted_text(path, *args, **kwargs):
            if path.name == "config.yaml":
                self.counts["config"] += 1
            return read_text(path, *args, **kwargs)

        def counted_bytes(path, *args, **kwargs):
            if path.suffix == ".pt":
                self.counts["checkpoint"] += 1
            return read_bytes(path, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "read_text", counted_text)
        monkeypatch.setattr(pathlib.Path, "read_bytes", counted_bytes)

    def during(self, argv: list[str]) -> dict[str, int]:
        self.counts.clear()
        assert main(argv) == 0, argv
        return dict(self.counts)


def test_every_command_reads_the_config_and_the_checkpoint_once(tmp_path, npz, monkeypatch):
    image = train("npz", out=tmp_path / "image", overrides=tiny_image(npz, train__steps=3)).run_dir
    translation = tmp_path / "translation"
    train("npz", out=translation, overrides=tiny_image(npz, train__steps=2, model__arch="translation", model__class_z_dim=3, model__hidden_dim=8))
    given = other_images(tmp_path / "given.npz")
    reads = FileReads(monkeypatch)
    once = {"config": 1, "checkpoint": 1}
    for argv in (
        ["sample", str(image), "-n", "2"],
        ["reconstruct", str(image), "-n", "2"],
        ["interpolate", str(image), "--size", "3"],
        ["evaluate", str(image)],
        ["ood", str(image), "--out", f"npz={given}", "--samples", "1", "--limit", "8"],
        ["translate", str(translation), "--images", str(given), "--rows", "1", "--columns", "1"],
    ):
        assert reads.during(argv) == once, argv
    checkpoint = RunDir(image).latest_checkpoint()
    assert reads.during(["sample", str(checkpoint), "-n", "2", "--out", str(tmp_path / "s.png")]) == {"checkpoint": 1}
