"""Importing checkpoints of the official style-based trainer (FFHQ / CelebA-HQ): output parity with the
official networks at two levels, live and smoothed, inspection, errors, and ``softintrovae import-official``.

The fixture (``shared/fixtures/official-style-checkpoints``, beside the repository) is a checkpoint
written by the official code's own model in a small configuration (START 16, MAX 32, LAYER_COUNT 3,
latent 32, MAPPING_LAYERS 2), with that model's outputs at lod 1 (8×8) and lod 2 (16×16), blend 1,
eval mode, no noise, for the live and the smoothed networks. The official networks work on images in
[-1, 1], ours on [0, 1]: inputs are mapped by (x + 1)/2, decoded images by 2y − 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softintrovae
from softintrovae.checkpoint import load_checkpoint
from softintrovae.cli import main
from softintrovae.config import load_config, load_run_config
from softintrovae.errors import UserError
from softintrovae.models import build_models
from softintrovae.official import import_official, inspect_official, read_official
from softintrovae.official_style import official_style_state, unfused_kernel

from .conftest import use_with_every_command

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-style-checkpoints"
CHECKPOINT = FIXTURES / "style16-small_model_tmp_lod2.pth"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/official-style-checkpoints is absent")

# the fixture's configuration as settings of the ffhq256 preset
OVERRIDES = {"model.channels": [32, 32, 16], "model.z_dim": 32, "model.mapping_layers": 2, "data.image_size": 16}
TOLERANCE = 1e-5


def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "style16-small_io.npz"))


def at_level(images: torch.Tensor, lod: int) -> torch.Tensor:
    """Our decoder's eval-mode output (nearest-upsampled to 16×16) at the size of level ``lod``."""
    step = 16 // (4 * 2**lod)
    return images[..., ::step, ::step]


@needs_fixtures
@pytest.mark.parametrize("copy", ["live", "ema"])
@pytest.mark.parametrize("lod", [1, 2])
def test_imported_networks_compute_the_official_outputs(lod, copy):
    suffix = "_ema" if copy == "ema" else ""
    io = reference()
    encoder, decoder, info = import_official(CHECKPOINT, load_config("ffhq256", OVERRIDES), smoothed=copy == "ema")
    assert not encoder.training and not decoder.training
    encoder.set_progress(lod)
    decoder.set_progress(lod)
    with torch.no_grad():
        mu, logvar = encoder((torch.from_numpy(io[f"lod{lod}_x"]) + 1) / 2)
        decoded = at_level(decoder(torch.from_numpy(io[f"lod{lod}_z"])), lod) * 2 - 1
    for produced, key in ((mu, "mu"), (logvar, "logvar"), (decoded, "decoded")):
        expected = io[f"lod{lod}_{key}{suffix}"]
        assert produced.shape == expected.shape
        np.testing.assert_allclose(produced.numpy(), expected, rtol=0, atol=TOLERANCE, err_msg=f"{key}{suffix}")


@needs_fixtures
def test_inspect_reads_what_the_style_checkpoint_holds():
    info = inspect_official(CHECKPOINT)
    assert info == {"image_shape": (3, 16, 16), "channels": [32, 32, 16], "z_dim": 32, "mapping_layers": 2, "smoothed": True, "epoch": None}


@needs_fixtures
def test_every_official_tensor_but_the_fixed_blur_filters_is_used():
    models = read_official(CHECKPOINT)["models"]
    encoder, decoder = build_models(load_config("ffhq256", {**OVERRIDES, "model.style_variant": "official"}).model, (3, 16, 16))
    state = official_style_state(models, encoder, decoder)
    ours = sum(t.numel() for part in state.values() for k, t in part.items() if k not in ("level", "alpha"))
    networks = ("generator", "mapping_fl", "discriminator", "mapping_tl")
    official = sum(t.numel() for name in networks for k, t in models[name].items() if "blur" not in k)
    assert ours == official
    models["generator"] = {k: v for k, v in models["generator"].items() if k != "decode_block.1.noise_weight_2"}
    with pytest.raises(UserError, match=r"the checkpoint has nothing for the model's decoder\.blocks\.1\.noise2\.weight"):
        official_style_state(models, encoder, decoder)


def test_fused_resampling_of_the_official_blocks_equals_ours_with_the_mapped_kernels():
    """From 128×128 on, ALAE fuses upsampling into a stride-2 transposed convolution (and downsampling
    into a stride-2 convolution) whose 4×4 kernel sums the 3×3 kernel at four offsets (the 4×4 one
    averaged for downsampling); ours upsample then convolve (convolve then pool) with the 3×3 kernel."""
    torch.manual_seed(0)

    def summed(w):
        w = F.pad(w, (1, 1, 1, 1))
        return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]

    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    up = torch.randn(6, 5, 3, 3, dtype=torch.float64)  # official: (in, out, 3, 3)
    official = F.conv_transpose2d(x, summed(up), stride=2, padding=1)
    ours = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), unfused_kernel(up), padding=1)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-12)
    down = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    official = F.conv2d(x, summed(down) * 0.25, stride=2, padding=1)
    torch.testing.assert_close(F.avg_pool2d(F.conv2d(x, down, padding=1), 2), official, rtol=0, atol=1e-12)
    # the importer applies it to decoder blocks from 128x128 on (level 5 of ffhq256), not below
    config = load_config("ffhq256", {"model.channels": [4, 4, 4, 4, 4, 6, 5], "model.z_dim": 8, "model.style_variant": "official"})
    encoder, decoder = build_models(config.model, (3, 256, 256))
    models = {name: {} for name in ("generator", "mapping_fl", "discriminator", "mapping_tl")}
    models["generator"] = {"decode_block.6.conv_1.weight": up.float(), "decode_block.4.conv_1.weight": torch.zeros(4, 4, 3, 3)}
    with pytest.raises(UserError, match="nothing for the model's"):
        official_style_state(models, encoder, decoder)  # converts both, then misses the rest
    models["generator"]["decode_block.6.conv_1.weight"] = up.float().transpose(0, 1)  # (5, 6, 3, 3): an unfused shape
    with pytest.raises(UserError, match=r"decode_block\.6\.conv_1\.weight has shape \(6, 5, 3, 3\), the model expects \(5, 6, 3, 3\)"):
        official_style_state(models, encoder, decoder)


# ---- softintrovae import-official: a run directory of ours ----------------------------------------


def import_argv(out: Path, preset: str = "ffhq256", overrides: dict | None = None, *extra: str) -> list[str]:
    sets = [a for k, v in (OVERRIDES if overrides is None else overrides).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return ["import-official", str(CHECKPOINT), "--preset", preset, *sets, "--out", str(out), *extra]


@needs_fixtures
def test_import_official_writes_a_run_with_the_live_networks_and_the_smoothed_decoder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(import_argv(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "command.txt", "config.yaml"]
    assert load_run_config(out / "config.yaml") == load_config("ffhq256", {**OVERRIDES, "model.style_variant": "official"})
    state = load_checkpoint(out / "checkpoints" / "step_0000000.pt")
    assert state["imported"] == {
        "source": "official style-based Soft-IntroVAE trainer", "file": CHECKPOINT.name, "epoch": None, "level": 2, "encoder": "live",
    }  # fmt: skip
    assert "optimizers" not in state and {"encoder", "decoder", "decoder_ema"} <= set(state)
    model = softintrovae.load(out)
    assert (model.step, model.input_shape, model.num_classes) == (0, (3, 16, 16), 0)
    io = reference()
    mu, logvar = model.encode((torch.from_numpy(io["lod2_x"]) + 1) / 2)  # the live encoder
    decoded = model.decode(torch.from_numpy(io["lod2_z"])) * 2 - 1  # the sampling decoder: the smoothed one
    for produced, key in ((mu, "mu"), (logvar, "logvar"), (decoded, "decoded_ema")):
        np.testing.assert_allclose(produced.numpy(), io[f"lod2_{key}"], rtol=0, atol=TOLERANCE, err_msg=key)


@needs_fixtures
def test_smoothed_encoder_flag_keeps_the_smoothed_encoder(tmp_path):
    out = tmp_path / "run"
    assert main(import_argv(out, "celebahq256", None, "--smoothed-encoder")) == 0
    model = softintrovae.load(out)
    assert model.state["imported"]["encoder"] == "smoothed"
    io = reference()
    mu, logvar = model.encode((torch.from_numpy(io["lod2_x"]) + 1) / 2)
    np.testing.assert_allclose(mu.numpy(), io["lod2_mu_ema"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(logvar.numpy(), io["lod2_logvar_ema"], rtol=0, atol=TOLERANCE)


@needs_fixtures
@pytest.mark.parametrize("name, step, level", [("ffhq_fid_17.55_epoch_270.pth", 270, 2), ("model_tmp_lod1.pth", 0, 1)])
def test_the_file_name_gives_the_epoch_and_the_level(name, step, level, tmp_path):
    """The style trainer stores neither in the file: its names do (released: ..._epoch_N, in training: ..._lodL)."""
    (tmp_path / name).write_bytes(CHECKPOINT.read_bytes())
    assert inspect_official(tmp_path / name)["epoch"] == (step or None)
    argv = import_argv(tmp_path / "run")
    argv[1] = str(tmp_path / name)
    assert main(argv) == 0
    model = softintrovae.load(tmp_path / "run")
    assert model.step == step and model.state["imported"]["level"] == level
    assert model.encoder.progress == model.decoder.progress == model.decoder_ema.progress == (level, 1.0)
    io = reference()
    decoded = at_level(model.decode(torch.from_numpy(io[f"lod{level}_z"])), level) * 2 - 1
    np.testing.assert_allclose(decoded.numpy(), io[f"lod{level}_decoded_ema"], rtol=0, atol=TOLERANCE)


@needs_fixtures
def test_a_checkpoint_without_smoothed_copies_imports_without_an_ema_decoder(tmp_path, capsys):
    checkpoint = read_official(CHECKPOINT)
    checkpoint["models"] = {k: v for k, v in checkpoint["models"].items() if not k.endswith("_s")}
    path = tmp_path / "live_only.pth"
    torch.save(checkpoint, path)
    argv = import_argv(tmp_path / "run")
    argv[1] = str(path)
    assert main(argv) == 0
    model = softintrovae.load(tmp_path / "run")
    assert model.decoder_ema is None
    io = reference()
    decoded = model.decode(torch.from_numpy(io["lod2_z"])) * 2 - 1
    np.testing.assert_allclose(decoded.numpy(), io["lod2_decoded"], rtol=0, atol=TOLERANCE)
    capsys.readouterr()
    argv[-1] = str(tmp_path / "other")
    assert main([*argv, "--smoothed-encoder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no smoothed copies" in err[0] and not (tmp_path / "other").exists()


@needs_fixtures
@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        (
            "ffhq256",
            {},
            "does not fit ffhq256: generator.const has shape (1, 32, 4, 4), the model expects (1, 512, 4, 4) — "
            "set model.z_dim=32 model.channels=[32,32,16] model.mapping_layers=2 data.image_size=16",
        ),
        (
            "celebahq256",
            {**OVERRIDES, "model.z_dim": 64},
            "does not fit celebahq256: generator.decode_block.0.style_1.weight has shape (64, 32), the model expects (64, 64) — set model.z_dim=32",
        ),
        ("cifar10", {}, "official style checkpoints hold the style-based networks, but cifar10 has model.arch resnet"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_preset_is_one_line_exit_2_and_no_run(preset, overrides, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(import_argv(out, preset, overrides)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@needs_fixtures
def test_an_imported_style_run_is_sampled_reconstructed_interpolated_and_exported_but_not_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(import_argv(out)) == 0
    use_with_every_command(out, tmp_path, (16, 16, 3))
    exported, model = softintrovae.load(tmp_path / "model.safetensors"), softintrovae.load(out)
    z = torch.randn(2, 32)
    torch.testing.assert_close(exported.decode(z), model.decode(z), rtol=0, atol=0)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imported from the official style-based Soft-IntroVAE trainer" in err[0]


@needs_fixtures
def test_style_mixing_of_an_imported_model(tmp_path):
    """docs/style.md's recipe: coarse styles (4×4) of one latent, the finer ones of another."""
    assert main(import_argv(tmp_path / "run")) == 0
    decoder = softintrovae.load(tmp_path / "run").sampling_decoder
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = decoder.styles(torch.randn(2, 32)), decoder.styles(torch.randn(2, 32))
        mixed = decoder.synthesize(torch.cat([a[:, :2], b[:, 2:]], dim=1))
        assert mixed.shape == (2, 3, 16, 16)
        torch.testing.assert_close(decoder.synthesize(torch.cat([a[:, :0], b], dim=1)), decoder.synthesize(b))
        assert not torch.allclose(mixed, decoder.synthesize(b)) and not torch.allclose(mixed, decoder.synthesize(a))
