"""Import checkpoints written by the official Soft-IntroVAE image trainer.

The official trainer (taldatech/soft-intro-vae-pytorch, ``soft_intro_vae/train_soft_intro_vae.py``)
saves ``{"epoch": e, "model": SoftIntroVAE.state_dict()}``. Its ``Encoder`` / ``Decoder`` compute the
same function as our :class:`ResidualEncoder` / :class:`ResidualDecoder` (paper Table 6, SPEC §3): the
same layer order and padding, LeakyReLU(0.2), default BatchNorm, the one-hot class appended to the
flattened features and to z, the FC output viewed as the encoder's last map. Importing is therefore
a renaming of keys, no tensor is reshaped:

==============================================  ==============================================
official                                        ours
==============================================  ==============================================
``encoder.main.0`` / ``.1`` (5×5 stem, BN)      ``encoder.features.0`` / ``.1``
``encoder.main.res_in_{side}`` (side falling)   ``encoder.features.{k}``, k-th ResidualBlock
``encoder.fc``                                  ``encoder.head``
``decoder.fc.0``                                ``decoder.project.0``
``decoder.main.res_in_{side}`` (side rising)    ``decoder.body.{k}``, k-th ResidualBlock
``decoder.main.predict`` (5×5 output conv)      ``decoder.body`` last layer
==============================================  ==============================================

and inside a residual block ``conv_expand`` → ``identity``, ``conv1``/``bn1``/``conv2``/``bn2`` →
``main.0``/``main.1``/``main.3``/``main.4``. BatchNorm running statistics travel with the weights.
(The official decoder numbers its blocks from 4 upwards whatever the true side, so only the order
of the numbers is used.)

:func:`import_official_run` turns such a checkpoint into a run directory of ours (``softintrovae
import-official``). The input shape and number of classes are those of the preset's dataset where
they are known without reading it (Fashion-MNIST / MNIST 1×28×28, CIFAR-10 / SVHN 3×32×32, CelebA and
image folders at ``data.image_size``, after ``data.pad_to``), so that the run fits its data; an .npz
source takes the checkpoint's. The run's one checkpoint holds the networks but no optimizer state,
so it is used (sample, reconstruct, interpolate, ood, evaluate, load, export) but not resumed.

Checkpoints of the official *style-based* trainer (FFHQ / CelebA-HQ, ``{"models", "auxiliary"}``) are
recognised by their layout and imported by :mod:`softintrovae.official_style` through the same
functions: their run holds the live networks and the smoothed decoder as the EMA decoder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import model_record
from .config import Config
from .data import declared_shape
from .errors import CorruptCheckpoint, UserError
from .models import build_models
from .models.resnet import ResidualBlock
from .official_style import describe_official_style, import_official_style, import_style_run, is_style_checkpoint, number_in_name
from .rundir import RunDir

_BLOCK = re.compile(r"^(encoder|decoder)\.main\.res_in_(\d+)\.(\w+)\.(\w+)$")
_BLOCK_PARTS = {"conv_expand": "identity", "conv1": "main.0", "bn1": "main.1", "conv2": "main.3", "bn2": "main.4"}
_OTHER_LAYERS = {
    "encoder.main.0.": "encoder.features.0.",
    "encoder.main.1.": "encoder.features.1.",
    "encoder.fc.": "encoder.head.",
    "decoder.fc.0.": "decoder.project.0.",
}
_CONTAINERS = {"encoder": "features", "decoder": "body"}  # our nn.Sequential of each network's convolutional layers


def read_official(path: str | Path) -> dict[str, Any]:
    """An official checkpoint ``{"epoch", "model": state dict}`` (or the style trainer's ``{"models",
    "auxiliary"}``), loaded with ``weights_only=True``.

    A missing, truncated or foreign file raises a one-line :class:`UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"official checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise CorruptCheckpoint(f"official checkpoint {str(path)!r} is corrupt or not a checkpoint ({reason[:120]})") from None
    if is_style_checkpoint(checkpoint):
        return checkpoint
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    needed = ("encoder.main.0.weight", "encoder.fc.weight", "decoder.fc.0.weight", "decoder.main.predict.weight")
    if not isinstance(state, dict) or not all(isinstance(state.get(key), Tensor) for key in needed):
        raise UserError(
            f"{str(path)!r} is not a checkpoint of the official Soft-IntroVAE image trainer "
            "(expected {'epoch', 'model'} with encoder.main.*, encoder.fc.*, decoder.fc.*, decoder.main.* keys, "
            "or the style trainer's {'models': {generator, discriminator, mapping_fl, mapping_tl, ...}})"
        )
    return checkpoint


def _blocks(state: Mapping[str, Tensor], network: str) -> list[str]:
    """The official residual blocks of ``network`` in data-flow order: the encoder's sides fall, the decoder's rise."""
    sides = {int(m.group(2)) for m in map(_BLOCK.match, state) if m and m.group(1) == network}
    order = sorted(sides, reverse=network == "encoder")
    return [f"{network}.main.res_in_{side}" for side in order]


def describe_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What an official state dict holds: ``image_shape`` (C, H, W), ``channels``, ``z_dim``, ``num_classes``.

    ``num_classes`` is 0 for an unconditional model. Widths come from the encoder: the stem's, then
    the output width of every residual block but the last (which keeps the width).
    """
    def shape(key: str) -> tuple[int, ...]:
        if not isinstance(state.get(key), Tensor):
            raise UserError(f"the official checkpoint lacks {key}")
        return tuple(state[key].shape)

    blocks = _blocks(state, "encoder")
    if not blocks:
        raise UserError("the official checkpoint has no encoder residual blocks (encoder.main.res_in_*)")
    stem = shape("encoder.main.0.weight")  # (channels[0], C, 5, 5)
    channels = [stem[0]] + [shape(f"{name}.conv2.weight")[0] for name in blocks[:-1]]
    z_dim = shape("encoder.fc.weight")[0] // 2
    map_features, z_and_classes = shape("decoder.fc.0.weight")
    side = math.isqrt(map_features // channels[-1])  # the decoder's first map: 4×4, or 7×7 for 28×28 images
    if side * side * channels[-1] != map_features:
        raise UserError(
            f"the official decoder's first layer makes {map_features} features, not a square map of {channels[-1]} channels"
        )
    num_classes = z_and_classes - z_dim
    size = side * 2 ** len(channels)
    return {
        "image_shape": (stem[1], size, size),
        "channels": channels,
        "z_dim": z_dim,
        "conditional": num_classes > 0,
        "num_classes": num_classes,
    }


def inspect_official(path: str | Path) -> dict[str, Any]:
    """What the official checkpoint at ``path`` holds (see :func:`describe_official`), plus its ``epoch``."""
    return _describe_checkpoint(read_official(path), Path(path).name)


def _describe_checkpoint(checkpoint: Mapping[str, Any], filename: str = "") -> dict[str, Any]:
    """A style checkpoint holds no epoch: its file name may (``ffhq_fid_17.55_epoch_270.pth``)."""
    if is_style_checkpoint(checkpoint):
        return {**describe_official_style(checkpoint["models"]), "epoch": number_in_name(filename, "epoch")}
    return {**describe_official(checkpoint["model"]), "epoch": checkpoint.get("epoch")}


def official_key_map(state: Mapping[str, Tensor], encoder: nn.Module, decoder: nn.Module) -> dict[str, str | None]:
    """official key → our key (``encoder.…`` / ``decoder.…``), or None where our model has no such layer."""
    networks = {"encoder": encoder, "decoder": decoder}
    ours = {  # our residual blocks' names, in data-flow order
        network: [name for name, m in getattr(module, _CONTAINERS[network]).named_children() if isinstance(m, ResidualBlock)]
        for network, module in networks.items()
    }
    official = {network: _blocks(state, network) for network in ours}
    predict = "decoder.body." + list(decoder.body.named_children())[-1][0]
    mapping: dict[str, str | None] = {}
    for key in state:
        match = _BLOCK.match(key)
        if match:
            network, _, part, tensor = match.groups()
            k = official[network].index(key.rsplit(".", 2)[0])
            if k < len(ours[network]) and part in _BLOCK_PARTS:
                block = f"{network}.{_CONTAINERS[network]}.{ours[network][k]}"
                mapping[key] = f"{block}.{_BLOCK_PARTS[part]}.{tensor}"
            else:
                mapping[key] = None
        elif key.startswith("decoder.main.predict."):
            mapping[key] = predict + key[len("decoder.main.predict") :]
        else:
            prefix = next((p for p in _OTHER_LAYERS if key.startswith(p)), None)
            mapping[key] = _OTHER_LAYERS[prefix] + key[len(prefix) :] if prefix else None
    return mapping


def _fix_hint(info: Mapping[str, Any], config, input_shape: Sequence[int], num_classes: int) -> str:
    """'set model.z_dim=32 model.channels=[64,128]' for what differs between checkpoint and config."""
    settings = []
    if info["z_dim"] != config.model.z_dim:
        settings.append(f"model.z_dim={info['z_dim']}")
    if list(info["channels"]) != list(config.model.channels):
        settings.append("model.channels=[" + ",".join(map(str, info["channels"])) + "]")
    if info["conditional"] != config.model.conditional:
        settings.append(f"model.conditional={str(info['conditional']).lower()}")
    hints = [("set " + " ".join(settings))] if settings else []
    if tuple(input_shape) != tuple(info["image_shape"]):
        hints.append("use {}×{}×{} images".format(*info["image_shape"]))
    if info["conditional"] and num_classes != info["num_classes"]:
        hints.append(f"data with {info['num_classes']} classes")
    return "; ".join(hints) or "the checkpoint's settings match: is it an official checkpoint?"


def load_official_state(state: Mapping[str, Tensor], encoder: nn.Module, decoder: nn.Module) -> None:
    """Copy an official state dict into our encoder and decoder; UserError naming the first key that does not fit."""
    ours = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    ours.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    mapping = official_key_map(state, encoder, decoder)
    for key, tensor in state.items():
        target = mapping[key]
        if target is None or target not in ours:
            raise UserError(f"{key} has no counterpart in the model" + (f" (no {target})" if target else ""))
        if tuple(ours[target].shape) != tuple(tensor.shape):
            raise UserError(f"{key} has shape {tuple(tensor.shape)}, the model expects {tuple(ours[target].shape)}")
    filled = set(mapping.values())
    missing = [key for key in ours if key not in filled]
    if missing:
        raise UserError(f"the checkpoint has nothing for the model's {missing[0]}")
    renamed = {mapping[key]: tensor for key, tensor in state.items()}
    for prefix, network in (("encoder.", encoder), ("decoder.", decoder)):
        network.load_state_dict({k[len(prefix) :]: v for k, v in renamed.items() if k.startswith(prefix)})


def import_official(
    path: str | Path, config, input_shape: Sequence[int] | None = None, num_classes: int | None = None, smoothed: bool = False
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(encoder, decoder, info): our networks for ``config`` holding the official checkpoint's weights.

    ``input_shape`` (C, H, W) and ``num_classes`` default to the checkpoint's; ``info`` is what
    :func:`inspect_official` returns. The networks are in eval mode, as the official model computes
    its outputs for sampling and evaluation. A checkpoint that does not fit ``config`` raises one
    :class:`UserError` line naming the first offending key and the settings that would fit. A style
    checkpoint gives style networks with ``model.style_variant: official`` (its smoothed copies
    with ``smoothed``; see :mod:`softintrovae.official_style`).
    """
    checkpoint = read_official(path)
    where = f"official checkpoint {str(path)!r}"
    if is_style_checkpoint(checkpoint):
        encoder, decoder, info = import_official_style(checkpoint, config, input_shape, where, smoothed)
        return encoder, decoder, {**info, "epoch": number_in_name(Path(path).name, "epoch")}
    if smoothed:
        raise UserError(f"{where} is a residual checkpoint: only the style trainer's checkpoints hold smoothed copies")
    return _import_residual(checkpoint, config, input_shape, num_classes, where)


def _import_residual(
    checkpoint: Mapping[str, Any], config, input_shape: Sequence[int] | None, num_classes: int | None, where: str
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    state = checkpoint["model"]
    info = _describe_checkpoint(checkpoint)
    if config.model.arch != "resnet":
        raise UserError(
            f"official image checkpoints hold the residual architecture: set model.arch=resnet, not {config.model.arch}"
        )
    input_shape = tuple(info["image_shape"] if input_shape is None else input_shape)
    num_classes = info["num_classes"] if num_classes is None else num_classes
    try:
        encoder, decoder = build_models(config.model, input_shape, num_classes)
        load_official_state(state, encoder, decoder)
    except UserError as exc:
        raise UserError(f"{where} does not fit {config.name}: {exc} — {_fix_hint(info, config, input_shape, num_classes)}") from None
    return encoder.eval(), decoder.eval(), info


def import_official_run(
    path: str | Path, config: Config, out: str | Path, argv: list[str] | None = None, smoothed_encoder: bool = False
) -> Path:
    """Create the run directory ``out`` for ``config`` holding the official checkpoint at ``path``.

    It writes config.yaml, command.txt and ``checkpoints/step_N.pt`` (N: the official epoch, or 0;
    for a style checkpoint, the epoch its file name gives),
    whose state holds both networks, the config, the model record and ``imported`` (where the
    weights came from). A style checkpoint's run holds the live encoder (the smoothed one with
    ``smoothed_encoder``) and decoder, its smoothed decoder as the EMA decoder, and a config with
    ``model.style_variant: official``. A checkpoint that does not fit ``config`` raises one
    :class:`UserError` line before anything is written.
    """
    input_shape, num_classes = declared_shape(config.data)
    checkpoint = read_official(path)
    where = f"official checkpoint {str(path)!r}"
    if is_style_checkpoint(checkpoint):
        config, networks, info, note = import_style_run(checkpoint, config, input_shape, where, Path(path).name, smoothed_encoder)
    else:
        if smoothed_encoder:
            raise UserError(f"{where} is a residual checkpoint: only the style trainer's checkpoints hold smoothed copies")
        encoder, decoder, info = _import_residual(checkpoint, config, input_shape, num_classes, where)
        networks = {"encoder": encoder, "decoder": decoder}
        note = {"source": "official Soft-IntroVAE image trainer", "file": Path(path).name, "epoch": info["epoch"]}
    step = int(info["epoch"] or 0)
    state = {
        "step": step,
        **{name: network.state_dict() for name, network in networks.items()},
        "config": config.to_dict(),
        "model": model_record(input_shape or info["image_shape"], networks["encoder"].num_classes, networks["encoder"].latents),
        "imported": note,
    }
    run = RunDir.create(out, config)
    try:
        run.record_command(argv or ["python-api", "import-official", str(path)])
        run.save_checkpoint(step, state, keep=1)
    finally:
        run.unlock()
    return run.path
