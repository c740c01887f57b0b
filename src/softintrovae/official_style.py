"""Import checkpoints of the official style-based Soft-IntroVAE trainer (the FFHQ / CelebA-HQ models).

The official style trainer (taldatech/soft-intro-vae-pytorch, ``style_soft_intro_vae/``, after ALAE)
saves ``{"models": {...}, "auxiliary": {...}}``: state dicts of ``discriminator`` (the encoder),
``generator`` (the decoder), ``mapping_fl`` (z → w), ``mapping_tl`` (w → μ, log σ²), ``dlatent_avg``,
the smoothed (EMA) copies ``*_s``, and optimizer and scheduler states under ``auxiliary``, which an
import does not need. Our style networks with ``model.style_variant: official`` compute the same
function (see :mod:`softintrovae.models.style` for what that variant changes); the weights map as

=============================================================  =================================================================
official                                                       ours
=============================================================  =================================================================
``generator.const``                                            ``decoder.blocks.0.const``
``generator.decode_block.{L}.conv_{k}.weight``                 ``decoder.blocks.{L}.conv{k}.weight``
``generator.decode_block.{L}.bias_{k}``                        ``decoder.blocks.{L}.conv{k}.bias`` (4×4, k=1: ``blocks.0.bias``)
``generator.decode_block.{L}.noise_weight_{k}``                ``decoder.blocks.{L}.noise{k}.weight``
``generator.decode_block.{L}.style_{k}``                       ``decoder.blocks.{L}.adain{k}.style`` (+1 on the scale half)
``generator.to_rgb.{L}.to_rgb``                                ``decoder.to_rgb.{L}``
``mapping_fl.map_blocks.{j}.fc``                               ``decoder.mapping.{2j}``
``discriminator.from_rgb.{n-1-L}.from_rgb``                    ``encoder.from_rgb.{L}``
``discriminator.encode_block.{n-1-L}.conv_{k}``, ``bias_{k}``  ``encoder.blocks.{L}.conv{k}`` weight, bias
``discriminator.encode_block.{n-1-L}.style_{k}``               ``encoder.blocks.{L}.style{k}``
``mapping_tl.map_blocks.{j}.fc``                               ``encoder.to_latent.{2j}``
=============================================================  =================================================================

with L our level (0 = 4×4; the official encoder numbers its blocks from the top resolution down) and
these conversions of values, all exact up to float rounding:

- the official equalized-learning-rate layers hold their effective weights (ALAE's implicit
  equalization: they are used as stored), ours multiply by a scale at run time: divided by it here;
- ALAE's style modulation is x·(1 + s) + b, our AdaIN's x·s + b: the scale half's bias gains 1;
- from 128×128 on, ALAE fuses upsampling into a transposed convolution (and downsampling into a
  strided one) with the summed 4×4 kernel; that equals upsampling then the 3×3 convolution with the
  kernel transposed and flipped (and the 3×3 convolution then pooling), so the kernels map over;
- the official networks see images in [−1, 1], ours in [0, 1]: from-RGB takes x ↦ 2x − 1 and to-RGB
  y ↦ (y + 1)/2 into its weights and bias;
- ``blur.weight`` (a fixed [1, 2, 1] filter) and ``dlatent_avg`` (only for truncated sampling, which
  the official figures do not use) are not imported.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import Config
from .errors import UserError
from .models import build_models

NETWORKS = ("generator", "mapping_fl", "discriminator", "mapping_tl")
NO_SMOOTHED = "holds no smoothed copies (generator_s, discriminator_s, mapping_fl_s, mapping_tl_s)"
FUSED_FROM = 128  # ALAE fuses resampling into the convolutions of blocks at this resolution and above
_DECODER = re.compile(r"^decode_block\.(\d+)\.(conv|bias|noise_weight|style)_([12])(?:\.(weight|bias))?$")
_ENCODER = re.compile(r"^encode_block\.(\d+)\.(conv|bias|style)_([12])(?:\.(weight|bias))?$")
_MAPPING = re.compile(r"^map_blocks\.(\d+)\.fc\.(weight|bias)$")
_RGB = re.compile(r"^(to_rgb|from_rgb)\.(\d+)\.\1\.(weight|bias)$")


def is_style_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded file has the official style trainer's layout."""
    models = checkpoint.get("models") if isinstance(checkpoint, dict) else None
    return isinstance(models, dict) and all(isinstance(models.get(name), Mapping) for name in NETWORKS)


def describe_official_style(models: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Any]:
    """What the official style networks are: ``image_shape`` (C, H, W), ``channels`` (one width per
    level from 4×4 up), ``z_dim``, ``mapping_layers`` (z → w) and ``smoothed`` (EMA copies present)."""
    generator, mapping = models["generator"], models["mapping_fl"]
    levels = sorted(int(m.group(2)) for m in map(_RGB.match, generator) if m and m.group(3) == "weight")
    if not levels or levels != list(range(len(levels))) or "map_blocks.0.fc.weight" not in mapping:
        raise UserError("the official style checkpoint lacks generator.to_rgb.{0,1,...}.to_rgb.weight or mapping_fl.map_blocks.0.fc.weight")
    side = 4 * 2 ** levels[-1]
    return {
        "image_shape": (int(generator["to_rgb.0.to_rgb.weight"].shape[0]), side, side),
        "channels": [int(generator[f"to_rgb.{level}.to_rgb.weight"].shape[1]) for level in levels],
        "z_dim": int(mapping["map_blocks.0.fc.weight"].shape[1]),
        "mapping_layers": sum(1 for m in map(_MAPPING.match, mapping) if m and m.group(2) == "weight"),
        "smoothed": all(isinstance(models.get(f"{name}_s"), Mapping) for name in NETWORKS),
    }


def _our_key(network: str, key: str, levels: int) -> tuple[str, str] | None:
    """(``encoder`` | ``decoder``, our key) of an official network's key; None for what is not imported."""
    if network in ("mapping_fl", "mapping_tl"):
        match = _MAPPING.match(key)  # our mappings are Sequentials of (linear, LeakyReLU) pairs
        ours, layers = ("decoder", "mapping") if network == "mapping_fl" else ("encoder", "to_latent")
        return (ours, f"{layers}.{2 * int(match.group(1))}.{match.group(2)}") if match else None
    if network == "generator" and key == "const":
        return "decoder", "blocks.0.const"
    if match := _RGB.match(key):
        kind, index, tensor = match.groups()
        level = int(index) if kind == "to_rgb" else levels - 1 - int(index)
        return ("decoder" if kind == "to_rgb" else "encoder"), f"{kind}.{level}.{tensor}"
    pattern, ours = (_DECODER, "decoder") if network == "generator" else (_ENCODER, "encoder")
    match = pattern.match(key)
    if not match:
        return None  # blur.weight: a fixed filter
    index, part, k, tensor = match.groups()
    level = int(index) if ours == "decoder" else levels - 1 - int(index)
    if part == "noise_weight":
        return ours, f"blocks.{level}.noise{k}.weight"
    if part == "bias":
        return ours, "blocks.0.bias" if ours == "decoder" and level == 0 and k == "1" else f"blocks.{level}.conv{k}.bias"
    layer = {"conv": f"conv{k}", "style": f"adain{k}.style" if ours == "decoder" else f"style{k}"}[part]
    return ours, f"blocks.{level}.{layer}.{tensor}"


def unfused_kernel(weight: Tensor) -> Tensor:
    """The (in, out, 3, 3) kernel of ALAE's fused upsampling (a stride-2 transposed convolution with the
    kernel summed at four offsets) as the (out, in, 3, 3) kernel of nearest upsampling then convolution."""
    return weight.transpose(0, 1).flip(2, 3)


def _convert(tensor: Tensor, target: str, module: nn.Module, level: int, shape: tuple[int, ...]) -> Tensor:
    """The official tensor as our parameter ``target`` of ``module`` (the layer holding it) needs it."""
    layer, name = target.rsplit(".", 1)
    if tensor.dim() == 4 and len(shape) == 1 and tensor.shape[0] == 1:  # biases and noise weights (1, C, 1, 1)
        tensor = tensor.flatten()
    if layer.endswith("conv1") and target.startswith("decoder") and 4 * 2**level >= FUSED_FROM:
        tensor = unfused_kernel(tensor)
    if tuple(tensor.shape) != shape:
        raise UserError(f"has shape {tuple(tensor.shape)}, the model expects {shape}")
    tensor = tensor.double()
    if ".adain" in layer and name == "bias":
        tensor = tensor + torch.cat([torch.ones(shape[0] // 2), torch.zeros(shape[0] // 2)]).double()
    if layer.startswith("decoder.to_rgb"):
        tensor = tensor / 2 if name == "weight" else (tensor + 1) / 2
    if layer.startswith("encoder.from_rgb") and name == "weight":  # the bias is folded in _fold_from_rgb
        tensor = tensor * 2
    if name == "weight" and hasattr(module, "weight_scale"):
        tensor = tensor / module.weight_scale
    if name == "bias" and hasattr(module, "lr_mul"):
        tensor = tensor / module.lr_mul
    return tensor


def official_style_state(
    models: Mapping[str, Mapping[str, Tensor]], encoder: nn.Module, decoder: nn.Module, smoothed: bool = False
) -> dict[str, dict[str, Tensor]]:
    """{"encoder": state dict, "decoder": state dict} of our networks holding the official weights (the
    smoothed copies with ``smoothed``); UserError naming the first official tensor that does not fit."""
    networks = {"encoder": encoder, "decoder": decoder}
    ours = {name: net.state_dict() for name, net in networks.items()}
    out: dict[str, dict[str, Tensor]] = {"encoder": {}, "decoder": {}}
    suffix = "_s" if smoothed else ""
    for network in NETWORKS:
        for key, tensor in models[network + suffix].items():
            found = _our_key(network, key, decoder.levels)
            if found is None:
                continue
            name, target = found
            where = f"{network + suffix}.{key}"
            if target not in ours[name]:
                raise UserError(f"{where} has no counterpart in the model (no {name}.{target})")
            layer = networks[name].get_submodule(target.rsplit(".", 1)[0])
            level = int(target.split(".")[1]) if target.startswith(("blocks.", "to_rgb.", "from_rgb.")) else 0
            try:
                value = _convert(tensor, f"{name}.{target}", layer, level, tuple(ours[name][target].shape))
            except UserError as exc:
                raise UserError(f"{where} {exc}") from None
            out[name][target] = value
    _fold_from_rgb(models["discriminator" + suffix], out["encoder"], encoder.levels)
    for name, state in out.items():
        missing = [k for k in ours[name] if k not in state and k not in ("level", "alpha")]
        if missing:
            raise UserError(f"the checkpoint has nothing for the model's {name}.{missing[0]}")
        state.update({k: ours[name][k] for k in ("level", "alpha")})
        out[name] = {k: v.to(ours[name][k].dtype) for k, v in state.items()}
    return out


def _fold_from_rgb(discriminator: Mapping[str, Tensor], state: dict[str, Tensor], levels: int) -> None:
    """from-RGB of 2x − 1: the bias loses the sum of the official 1×1 kernel over the input channels."""
    for level in range(levels):
        weight = discriminator.get(f"from_rgb.{levels - 1 - level}.from_rgb.weight")
        if weight is not None and f"from_rgb.{level}.bias" in state:
            state[f"from_rgb.{level}.bias"] = state[f"from_rgb.{level}.bias"] - weight.double().sum(dim=(1, 2, 3))


def style_config(config: Config, where: str) -> Config:
    """``config`` with ``model.style_variant: official``; one line unless it is a style-based config."""
    if config.model.arch != "style":
        raise UserError(
            f"{where}: official style checkpoints hold the style-based networks, but {config.name} has model.arch "
            f"{config.model.arch} (use ffhq256, celebahq256 or another model.arch=style preset)"
        )
    return dataclasses.replace(config, model=dataclasses.replace(config.model, style_variant="official"))


def _fix_hint(info: Mapping[str, Any], config: Config, input_shape) -> str:
    """'set model.z_dim=32 model.channels=[32,32,16] ...' for what differs between checkpoint and config."""
    wanted = {"model.z_dim": info["z_dim"], "model.mapping_layers": info["mapping_layers"]}
    settings = [f"{key}={value}" for key, value in wanted.items() if value != getattr(config.model, key.split(".")[1])]
    if list(info["channels"]) != list(config.model.channels):
        settings.insert(1, "model.channels=[" + ",".join(map(str, info["channels"])) + "]")
    side = info["image_shape"][-1]
    if input_shape is not None and tuple(input_shape[1:]) != (side, side):
        settings.append(f"data.image_size={side}")
    hints = [("set " + " ".join(settings))] if settings else []
    if input_shape is not None and input_shape[0] != info["image_shape"][0]:
        hints.append(f"use images with {info['image_shape'][0]} channels")
    return "; ".join(hints) or "the checkpoint's settings match: is it an official style checkpoint?"


def import_official_style(
    checkpoint: Mapping[str, Any], config: Config, input_shape=None, where: str = "the official style checkpoint", smoothed: bool = False
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(encoder, decoder, info) of ``config`` (made ``style_variant: official``) holding a loaded official
    style checkpoint's live networks, or its smoothed copies with ``smoothed``; in eval mode.

    ``input_shape`` defaults to the checkpoint's; ``info`` is :func:`describe_official_style`'s. What
    does not fit is one :class:`UserError` line naming the first official tensor and the settings that fit.
    """
    models = checkpoint["models"]
    info = describe_official_style(models)
    config = style_config(config, where)
    if smoothed and not info["smoothed"]:
        raise UserError(f"{where} {NO_SMOOTHED}")
    input_shape = tuple(info["image_shape"] if input_shape is None else input_shape)
    try:
        encoder, decoder = build_models(config.model, input_shape)
        state = official_style_state(models, encoder, decoder, smoothed)
    except UserError as exc:
        raise UserError(f"{where} does not fit {config.name}: {exc} — {_fix_hint(info, config, input_shape)}") from None
    encoder.load_state_dict(state["encoder"])
    decoder.load_state_dict(state["decoder"])
    return encoder.eval(), decoder.eval(), info


def import_style_run(
    checkpoint: Mapping[str, Any], config: Config, input_shape, where: str, filename: str, smoothed_encoder: bool = False
) -> tuple[Config, dict[str, nn.Module], dict[str, Any], dict[str, Any]]:
    """What a run directory of an official style checkpoint holds: (the config with the official variant,
    networks {"encoder", "decoder", "decoder_ema"}, info, the ``imported`` note). The decoder EMA is the
    smoothed decoder (absent without smoothed copies); the encoder is the live one, or the smoothed one
    (which the official figure scripts use) with ``smoothed_encoder``. The networks work at the level
    the file name tells (``model_tmp_lod4.pth``: level 4), the top otherwise; ``info["epoch"]`` is the
    name's epoch (``..._epoch_270.pth``), or None."""
    encoder, decoder, info = import_official_style(checkpoint, config, input_shape, where)
    networks = {"encoder": encoder, "decoder": decoder}
    if info["smoothed"]:
        smoothed, networks["decoder_ema"], _ = import_official_style(checkpoint, config, input_shape, where, smoothed=True)
        networks["encoder"] = smoothed if smoothed_encoder else encoder
    elif smoothed_encoder:
        raise UserError(f"{where} {NO_SMOOTHED}")
    level = level_of(filename, decoder.levels)
    for network in networks.values():
        network.set_progress(level)
    info = {**info, "epoch": number_in_name(filename, "epoch")}
    note = {
        "source": "official style-based Soft-IntroVAE trainer",
        "file": filename,
        "epoch": info["epoch"],
        "level": level,
        "encoder": "smoothed" if smoothed_encoder else "live",
    }
    return style_config(config, where), networks, info, note


def number_in_name(filename: str, word: str) -> int | None:
    """The number after ``word`` in an official file name: ``lod`` in ``model_tmp_lod4.pth`` (the level it
    was saved at), ``epoch`` in ``ffhq_fid_17.55_epoch_270.pth``; None when the name has none."""
    match = re.search(rf"{word}_?(\d+)", filename)
    return int(match.group(1)) if match else None


def level_of(filename: str, levels: int) -> int:
    """The level a checkpoint was saved at, from its name (the top when the name does not say)."""
    level = number_in_name(filename, "lod")
    return levels - 1 if level is None else min(level, levels - 1)


__all__ = [
    "describe_official_style",
    "import_official_style",
    "import_style_run",
    "is_style_checkpoint",
    "level_of",
    "number_in_name",
    "official_style_state",
    "style_config",
    "unfused_kernel",
]
