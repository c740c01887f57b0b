"""A trained model as an artifact: ``softintrovae.load`` of a run whose data are gone, for every model
family, and ``softintrovae export`` to a .safetensors file that loads to identical outputs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import softintrovae
from softintrovae import checkpoint
from softintrovae.cli import main

from .conftest import TINY, style_overrides, tiny_image, write_npz

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(path, n=24, size=16, channels=3):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), labels=np.arange(n) % 3)
    return path


# family (= model.arch) → (preset, overrides given the path for its data file)
FAMILIES = {
    "mlp": ("soft-introvae-8gaussians", lambda data: {**TINY, "train.steps": 3, "method.vae_warmup_steps": 1}),
    "resnet": ("npz", lambda data: tiny_image(_images(data, size=8), train__steps=3, model__conditional=True)),
    "style": ("fashion-mnist-style", lambda data: style_overrides(write_npz(data))),
    "translation": (
        "translation-rendered-small",
        lambda data: {
            "data.name": "npz", "data.root": str(_images(data)), "data.batch_size": 8, "model.channels": [4, 4],
            "model.z_dim": 3, "model.class_z_dim": 4, "model.hidden_dim": 8, "train.steps": 3, "train.eval_every": 0,
            "train.progress": False,
        },
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """(family, run directory) of a tiny run trained a few steps, whose training data are then deleted."""
    preset, overrides = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    data = folder / "data.npz"
    result = softintrovae.train(preset, out=folder / "run", overrides=overrides(data))
    data.unlink(missing_ok=True)
    return request.param, result.run_dir


@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to build the training data fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the training data were read")

    monkeypatch.setattr(checkpoint, "build_data", refuse)


def inputs(model, n=4):
    """Random inputs, latents and (for a conditional model) labels that fit ``model``."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, *model.input_shape, generator=generator)
    z = torch.randn(n, model.latents.z_dim, generator=generator)
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    return x, z, labels


def outputs(model) -> dict[str, torch.Tensor]:
    x, z, labels = inputs(model)
    mu, logvar = model.encode(x, labels)
    return {
        "mu": mu,
        "logvar": logvar,
        "decoded": model.decode(z, labels),
        "samples": model.sample(5, generator=torch.Generator().manual_seed(2)),
        "reconstructions": model.reconstruct(x, labels),
    }


# ---- loading without the data -------------------------------------------------------------------


def test_load_needs_neither_the_data_nor_the_run_directory_for_a_checkpoint(trained, no_data):
    family, run = trained
    model = softintrovae.load(run)
    assert model.run_dir == run and model.step > 0
    assert model.config.model.arch == family
    assert (model.decoder_ema is not None) == (family == "style")  # the style run keeps an EMA decoder
    found = outputs(model)
    assert found["samples"].shape == (5, *model.input_shape)
    assert found["mu"].shape == (4, model.latents.z_dim)
    assert model.latents.grouped == (family == "translation")
    assert model.num_classes == (3 if family == "resnet" else 0)
    assert all(torch.isfinite(v).all() for v in found.values())
    from_file = softintrovae.load(model.checkpoint)  # a checkpoint file alone holds its config
    assert from_file.run_dir is None
    for key, value in outputs(from_file).items():
        assert torch.equal(value, found[key]), key


# ---- export and load ------------------------------------------------------------------------------


def read_header(path) -> dict:
    """The JSON header of a safetensors file (8 bytes of length, then JSON): no pickle anywhere."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def test_export_loads_to_identical_outputs_without_the_run_or_its_data(trained, tmp_path, no_data, capsys):
    family, run = trained
    out = tmp_path / "shared" / f"{family}.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    reference = softintrovae.load(run)
    expected = outputs(reference)
    moved = run.with_name("elsewhere")
    run.rename(moved)  # the file alone: no run directory, no data
    try:
        exported = softintrovae.load(out)
    finally:
        moved.rename(run)
    assert exported.run_dir is None and exported.decoder_ema is None and exported.checkpoint == out
    assert exported.config == reference.config and exported.step == reference.step
    assert exported.record() == reference.record()
    for key, value in outputs(exported).items():
        assert torch.equal(value, expected[key]), key

    metadata = read_header(out)["__metadata__"]
    assert metadata["format"] == "softintrovae-model" and json.loads(metadata["config"]) == reference.config.to_dict()
    record = json.loads(metadata["model"])
    assert record == {
        **reference.record(), "step": reference.step, "method": reference.method,
        "decoder": "ema" if family == "style" else "trained",
    }  # fmt: skip
    names = set(read_header(out)) - {"__metadata__"}
    assert names == {f"encoder.{k}" for k in reference.encoder.state_dict()} | {f"decoder.{k}" for k in reference.decoder.state_dict()}
    for key, value in reference.sampling_decoder.state_dict().items():  # the EMA decoder, when the run kept one
        assert torch.equal(exported.decoder.state_dict()[key], value), key
    if family == "style":
        assert any(not torch.equal(v, reference.decoder.state_dict()[k]) for k, v in reference.decoder_ema.state_dict().items())


# ---- bad files ------------------------------------------------------------------------------------


def test_bad_export_paths_and_files_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, foreign)
    real = tmp_path / "real.safetensors"
    assert main(["train", "vae-8gaussians", "--out", str(tmp_path / "run"), *[a for k, v in {**TINY, "train.steps": 2}.items() for a in ("--set", f"{k}={v}")]]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(real)]) == 0
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    capsys.readouterr()
    cases = [
        (["sample", str(tmp_path / "absent.safetensors")], "does not exist"),
        (["sample", str(garbage)], "is corrupt or not a safetensors file"),
        (["sample", str(truncated)], "is corrupt or not a safetensors file"),
        (["sample", str(foreign)], "not a softintrovae export"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt")], "must end in .safetensors"),
        (["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "m.safetensors").exists()
