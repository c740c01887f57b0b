"""Style-based encoder/decoder, progressive growing and the EMA decoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softintrovae.config import GrowthConfig, load_config
from softintrovae.errors import UserError
from softintrovae.growth import EMA, GrowthSchedule, ProgressiveStream, blend_alpha, images_at_level
from softintrovae.methods import build_method
from softintrovae.models import build_models
from softintrovae.models.style import EqualConv2d, EqualLinear, StyleDecoder, StyleEncoder
from softintrovae.checkpoint import load_checkpoint
from softintrovae.trainer import Trainer, resume, train

from .conftest import style_overrides, write_npz

pytestmark = pytest.mark.usefixtures("single_thread")

CHANNELS = [16, 12, 8, 4]  # 4x4 .. 32x32


def networks(z_dim=8, channels=CHANNELS, image_channels=3):
    torch.manual_seed(0)
    return StyleEncoder(z_dim, channels, image_channels), StyleDecoder(z_dim, channels, image_channels)


def set_all(level, alpha, *nets):
    for net in nets:
        net.set_progress(level, alpha)


def test_output_shapes_at_every_level():
    encoder, decoder = networks()
    z = torch.randn(5, 8)
    for level in range(4):
        size = 4 * 2**level
        for alpha in (0.0, 0.5, 1.0):
            set_all(level, alpha, encoder, decoder)
            x = decoder(z)
            assert x.shape == (5, 3, size, size)
            assert decoder.prior(z).shape == (5, 3, size, size)
            mu, logvar = encoder(x)
            assert mu.shape == logvar.shape == (5, 8)
            assert encoder(torch.rand(5, 3, 32, 32))[0].shape == (5, 8)  # full-size input, pooled to the level
        decoder.eval()
        assert decoder(z).shape == (5, 3, 32, 32)  # eval mode: the dataset's size at any level
        decoder.train()


def test_levels_are_symmetric():
    encoder, decoder = networks()
    assert encoder.levels == decoder.levels == len(CHANNELS)
    for i in range(len(CHANNELS)):
        # decoder block i makes channels[i] features at 4*2^i; encoder block i takes them back
        assert decoder.to_rgb[i].weight.shape[:2] == (3, CHANNELS[i])
        assert encoder.from_rgb[i].weight.shape[:2] == (CHANNELS[i], 3)
        assert encoder.blocks[i].conv1.weight.shape[1] == CHANNELS[i]
        assert decoder.blocks[i].conv2.weight.shape[0] == CHANNELS[i]
        if i > 0:
            assert decoder.blocks[i].conv1.weight.shape[:2] == (CHANNELS[i], CHANNELS[i - 1])
            assert encoder.blocks[i].conv2.weight.shape[:2] == (CHANNELS[i - 1], CHANNELS[i])
    # every decoder block takes two styles, every encoder block gives two
    assert decoder.num_styles == 2 * len(CHANNELS)


@torch.no_grad()
@pytest.mark.parametrize("level", [1, 2, 3])
def test_decoder_blend_at_alpha_0_is_the_upsampled_lower_level_and_at_1_the_new_block(level):
    _, decoder = networks()
    z = torch.randn(4, 8)

    def out(lv, alpha):
        set_all(lv, alpha, decoder)
        torch.manual_seed(7)  # the same per-layer noise in every call
        return decoder(z)

    lower = F.interpolate(out(level - 1, 1.0), scale_factor=2, mode="nearest")
    assert torch.equal(out(level, 0.0), lower)
    new_alone, half = out(level, 1.0), out(level, 0.5)
    assert not torch.allclose(half, new_alone) and not torch.allclose(half, lower)
    torch.testing.assert_close(half, 0.5 * lower + 0.5 * new_alone)
    # at alpha 1 the previous level's to-RGB layer plays no part; at alpha 0 the new block and its to-RGB none
    saved = decoder.to_rgb[level - 1].weight.clone()
    decoder.to_rgb[level - 1].weight.add_(1.0)
    assert torch.equal(out(level, 1.0), new_alone)
    decoder.to_rgb[level - 1].weight.copy_(saved)
    decoder.blocks[level].conv2.weight.add_(1.0)
    decoder.to_rgb[level].weight.add_(1.0)
    assert torch.equal(out(level, 0.0), lower)


@torch.no_grad()
@pytest.mark.parametrize("level", [1, 2, 3])
def test_encoder_blend_at_alpha_0_is_the_lower_level_on_the_pooled_image_and_at_1_the_new_block(level):
    encoder, _ = networks()
    size = 4 * 2**level
    x = torch.rand(4, 3, size, size)
    set_all(level - 1, 1.0, encoder)
    lower = encoder(F.avg_pool2d(x, 2))
    set_all(level, 0.0, encoder)
    torch.testing.assert_close(encoder(x), lower, rtol=0, atol=1e-6)
    set_all(level, 1.0, encoder)
    new_alone = encoder(x)
    encoder.from_rgb[level - 1].weight.add_(1.0)
    assert torch.equal(encoder(x)[0], new_alone[0])  # the lower level's from-RGB layer is out at alpha 1
    set_all(level, 0.5, encoder)
    assert not torch.allclose(encoder(x)[0], new_alone[0])


def test_equalized_learning_rate_scales_weights_at_run_time():
    torch.manual_seed(0)
    outputs = []
    for fan_in in (16, 1024):
        layer = EqualLinear(fan_in, 256)
        assert layer.weight.std().item() == pytest.approx(1.0, abs=0.05)  # stored N(0, 1) whatever the fan-in
        x = torch.randn(512, fan_in)
        expected = F.linear(x, layer.weight * math.sqrt(2.0) / math.sqrt(fan_in), layer.bias)
        torch.testing.assert_close(layer(x), expected)
        outputs.append(layer(x).std().item())
    # He-scaled at run time: unit-variance inputs give outputs of std ~ sqrt(2) for any fan-in
    assert outputs[0] == pytest.approx(math.sqrt(2.0), rel=0.1) and outputs[1] == pytest.approx(math.sqrt(2.0), rel=0.1)
    conv = EqualConv2d(8, 4, 3, gain=1.0)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight / math.sqrt(8 * 9), conv.bias, padding=1))
    # the gradient of a stored weight carries the same run-time factor (what equalizes Adam's steps)
    conv(x).sum().backward()
    scaled = conv.weight.detach().clone().requires_grad_(True)
    F.conv2d(x, scaled / math.sqrt(8 * 9), conv.bias.detach(), padding=1).sum().backward()
    torch.testing.assert_close(conv.weight.grad, scaled.grad)


def test_style_mixing_takes_a_second_latents_styles_from_a_cutoff_on():
    _, decoder = networks()
    decoder.set_progress(3, 1.0)
    decoder.style_mixing = 1.0
    z = torch.randn(6, 8)
    plain = decoder.styles(z)
    torch.manual_seed(3)
    mixed = decoder.mixed_styles(z)
    same = (mixed == plain).all(dim=2).all(dim=0)  # per layer
    cutoff = int(same.logical_not().nonzero()[0]) if not same.all() else decoder.num_styles
    assert 1 <= cutoff and same[:cutoff].all() and not same[cutoff:].any()
    decoder.eval()
    assert torch.equal(decoder.mixed_styles(z), plain)  # never in eval mode


def test_ema_update_rule():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, half_life=100)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    target = [p.detach().clone() for p in net.parameters()]
    d = 0.5 ** (25 / 100)
    assert ema.decay(25) == pytest.approx(d)
    ema.update(net, 25)
    for e, s, t in zip(ema.module.parameters(), start, target):
        torch.testing.assert_close(e, d * s + (1 - d) * t)
    for _ in range(3):  # 100 images in all: one half-life, so half of the gap is left
        ema.update(net, 25)
    for e, s, t in zip(ema.module.parameters(), start, target):
        torch.testing.assert_close(e - t, 0.5 * (s - t))
    assert not any(p.requires_grad for p in ema.module.parameters())


def growth(**kwargs) -> GrowthConfig:
    return GrowthConfig(**{"unit": "images", **kwargs})


def test_schedule_levels_alpha_and_settings():
    g = growth(per_level=[64, 96, 96], blend=[48], batch_sizes=[16, 8, 8], lr=[1e-3, 5e-4, 2e-4], beta_neg=[64, 32, 16])
    schedule = GrowthSchedule(g, levels=3, dataset_size=100, batch_size=99)
    assert [(lv.start_step, lv.steps, lv.blend_steps, lv.batch_size) for lv in schedule.levels] == [
        (0, 4, 0, 16), (4, 12, 6, 8), (16, 12, 6, 8)
    ]
    assert schedule.total_steps == 28
    assert schedule.at(3) == (schedule.levels[0], 1.0)
    level, alpha = schedule.at(4)
    assert level.index == 1 and alpha == 0.0
    assert schedule.at(7)[1] == pytest.approx(0.5)  # half-way through the blend
    assert schedule.at(10)[1] == 1.0 and schedule.at(15)[1] == 1.0
    assert [schedule.images_before(s) for s in (0, 4, 5, 16, 17)] == [0, 64, 72, 160, 168]
    assert blend_alpha(0.25) < 0.25 and blend_alpha(0.75) > 0.75  # smooth at both ends
    assert schedule.is_level_end(4) and schedule.is_level_end(16) and not schedule.is_level_end(28)


def test_schedule_applies_level_settings_and_resets_adam_when_a_level_starts():
    g = growth(per_level=[32], blend=[16], batch_sizes=[8], lr=[1e-3, 5e-4], beta_neg=[64, 32])
    schedule = GrowthSchedule(g, levels=2, dataset_size=100, batch_size=8)
    encoder, decoder = networks(channels=[8, 4], image_channels=1)
    optimizers = [torch.optim.Adam(net.parameters()) for net in (encoder, decoder)]
    method = build_method(load_config("fashion-mnist-style").method, encoder, decoder, optimizers, scale=1 / 64, z_dim=8)
    schedule.apply(0, [encoder, decoder], method, optimizers)
    assert optimizers[0].param_groups[0]["lr"] == 1e-3 and method.config.beta_neg == method.beta_neg == 64
    assert encoder.progress == decoder.progress == (0, 1.0)
    decoder(torch.randn(2, 8)).sum().backward()
    optimizers[1].step()
    assert optimizers[1].state
    schedule.apply(3, [encoder, decoder], method, optimizers)
    assert optimizers[1].state  # not at a level's start
    schedule.apply(4, [encoder, decoder], method, optimizers)
    assert not optimizers[1].state and optimizers[1].param_groups[0]["lr"] == 5e-4
    assert method.config.beta_neg == method.beta_neg == 32  # what the step uses
    assert encoder.progress == (1, 0.0)


def test_progressive_stream_serves_each_epoch_once_at_the_level_resolution():
    from softintrovae.data import ImageStream

    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8)
    stream = ImageStream(images, torch.arange(40), batch_size=4, seed=3)
    schedule = GrowthSchedule(growth(per_level=[24, 56, 40], blend=[16], batch_sizes=[4, 8, 8]), 3, 40, 4)
    progressive = ProgressiveStream(stream, schedule)
    seen = []
    for step in range(schedule.total_steps):
        x, y = progressive.batch(step)
        level, alpha = schedule.at(step)
        assert x.shape == (level.batch_size, 1, level.resolution, level.resolution)
        seen.append(y)
    seen = torch.cat(seen)
    assert len(seen) == 120
    for epoch in range(3):  # 40 images per epoch, each once
        assert sorted(seen[40 * epoch : 40 * (epoch + 1)].tolist()) == list(range(40))
    # blending real images: alpha 0 is the coarse version, alpha 1 the image pooled to the level
    x = torch.rand(2, 1, 16, 16)
    coarse = F.interpolate(F.avg_pool2d(F.avg_pool2d(x, 2), 2), scale_factor=2)
    torch.testing.assert_close(images_at_level(x, 8, 0.0), coarse)
    torch.testing.assert_close(images_at_level(x, 8, 1.0), F.avg_pool2d(x, 2))


def test_resume_in_the_middle_of_a_blend_equals_uninterrupted_training(tmp_path):
    npz = write_npz(tmp_path / "blobs.npz")
    overrides = style_overrides(npz)
    full = train("fashion-mnist-style", tmp_path / "full", overrides)
    config = load_config("fashion-mnist-style", overrides)
    interrupted = Trainer(config, None)
    schedule = interrupted.growth
    stop = schedule.levels[1].start_step + 2  # level 1, inside its blend
    assert 0 < schedule.at(stop)[1] < 1
    from softintrovae.rundir import RunDir

    interrupted.run = RunDir.create(tmp_path / "part", config)
    interrupted.total_steps = stop  # stop there with a checkpoint, as an interrupted run does
    interrupted.fit()
    resumed = resume(tmp_path / "part")
    a = load_checkpoint(sorted((full.run_dir / "checkpoints").glob("*.pt"))[-1])
    b = load_checkpoint(sorted((resumed.run_dir / "checkpoints").glob("*.pt"))[-1])
    assert a["step"] == b["step"] == schedule.total_steps
    for key in ("encoder", "decoder", "decoder_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert a["decoder"]["level"].item() == 2


def test_style_run_end_to_end_with_pictures(tmp_path):
    npz = write_npz(tmp_path / "blobs.npz")
    result = train("fashion-mnist-style", tmp_path / "run", style_overrides(npz))
    run = result.run_dir
    for name in ("samples.png", "reconstructions.png", "multires.png"):
        assert (run / name).is_file()
    assert len(list((run / "plots").glob("multires_step*.png"))) == 2  # one at the end of each level but the last
    records = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert {r["level"] for r in records} == {0, 1, 2}
    state = load_checkpoint(sorted((run / "checkpoints").glob("*.pt"))[-1])
    assert not torch.equal(state["decoder_ema"]["mapping.0.weight"], state["decoder"]["mapping.0.weight"])
    from softintrovae import pictures

    assert pictures.sample(run, n=4).is_file()
    assert pictures.reconstruct(run, n=4).is_file()
    assert all(p.is_file() for p in pictures.interpolate(run, size=3))


def test_official_variant_trains_through_every_level_and_loads(tmp_path):
    """model.style_variant official (the official style trainer's function, for its checkpoints) is a
    normal style model: it grows, blends, keeps an EMA decoder; in eval mode it adds ALAE's noise-free term."""
    npz = write_npz(tmp_path / "blobs.npz")
    overrides = style_overrides(npz, **{"model.style_variant": "official", "model.blur": True})
    result = train("fashion-mnist-style", tmp_path / "run", overrides)
    assert all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
    state = load_checkpoint(sorted((result.run_dir / "checkpoints").glob("*.pt"))[-1])
    assert state["decoder"]["level"].item() == 2 and "decoder_ema" in state
    encoder, decoder = build_models(load_config("fashion-mnist-style", overrides).model, (1, 16, 16))
    assert len(decoder.mapping) == 4 and len(encoder.to_latent) == 6  # a LeakyReLU after each layer, the last too
    assert not hasattr(encoder.blocks[0], "dense") and encoder.blocks[0].conv2.weight.shape == (8, 8, 3, 3)
    decoder.eval()
    z = torch.randn(3, 8)
    torch.testing.assert_close(decoder(z), decoder(z))
    noise = decoder.blocks[1].noise1
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(noise(x), x + 0.8 * math.sqrt(2) * torch.exp(-x * x / 4) / math.sqrt(2 * math.pi))


def test_official_variant_settings_are_checked(tmp_path):
    with pytest.raises(UserError, match="model.style_variant must be one of default, official, got 'alae'"):
        load_config("ffhq256", {"model.style_variant": "alae"})
    config = load_config("fashion-mnist-style", {"model.style_variant": "official"})  # the preset has blur: false
    with pytest.raises(UserError, match="set model.blur=true"):
        build_models(config.model, (1, 32, 32))


def test_bad_style_settings_are_one_line_errors(tmp_path):
    npz = write_npz(tmp_path / "blobs.npz")
    with pytest.raises(UserError, match="grows 4x4 to 32x32, but the images are 16x16"):
        Trainer(load_config("fashion-mnist-style", style_overrides(npz, **{"model.channels": [8, 8, 8, 8], "growth.per_level": [32], "growth.batch_sizes": [], "growth.beta_neg": []})), None)
    with pytest.raises(UserError, match="growth.beta_neg has 2 entries, but the model has 3 levels"):
        Trainer(load_config("fashion-mnist-style", style_overrides(npz, **{"growth.beta_neg": [1, 2]})), None)
    with pytest.raises(UserError, match="set train.epochs=0"):
        Trainer(load_config("fashion-mnist-style", style_overrides(npz, **{"train.epochs": 3})), None)
    with pytest.raises(UserError, match="growth.unit must be one of"):
        load_config("fashion-mnist-style", {"growth.unit": "days"})
    with pytest.raises(UserError, match=r"data.pad_to 8 is smaller than the images \(16x16\)"):
        Trainer(load_config("fashion-mnist-style", style_overrides(npz, **{"data.pad_to": 8})), None)


def test_gpu_presets_build_the_paper_architecture():
    for name in ("ffhq256", "celebahq256"):
        config = load_config(name, {"data.root": "faces"})
        assert config.model.z_dim == 512 and config.model.mapping_layers == 8 and config.optim.betas == [0.0, 0.99]
        encoder, decoder = build_models(config.model, (3, 256, 256))
        assert (encoder.levels, decoder.image_size) == (7, 256)
        schedule = GrowthSchedule(config.growth, encoder.levels, dataset_size=1000, batch_size=config.data.batch_size)
        assert [lv.beta_neg for lv in schedule.levels] == [2048, 2048, 2048, 1024, 512, 512, 512]


def test_blending_runs_under_bf16_autocast():
    encoder, decoder = networks(channels=[8, 8, 4], image_channels=1)
    set_all(2, 0.3, encoder, decoder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = decoder.prior(torch.randn(2, 8))
        mu, logvar = encoder(x)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(mu.float()).all()
