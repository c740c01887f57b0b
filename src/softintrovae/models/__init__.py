"""Encoder/decoder architectures. An encoder maps x to (μ, log σ²); a decoder maps z to x̂."""

from __future__ import annotations

import math

from torch import nn

from ..errors import UserError
from .mlp import MLPDecoder, MLPEncoder
from .resnet import ResidualDecoder, ResidualEncoder, build_resnet


def _build_mlp(model_config, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    if len(input_shape) != 1:
        raise UserError(f"model.arch mlp takes vectors, but the data are images {tuple(input_shape)}: use model.arch=resnet")
    data_dim = math.prod(input_shape)
    kwargs = dict(
        data_dim=data_dim,
        z_dim=model_config.z_dim,
        hidden_dim=model_config.hidden_dim,
        hidden_layers=model_config.hidden_layers,
    )
    return MLPEncoder(**kwargs), MLPDecoder(**kwargs)


ARCHITECTURES = {"mlp": _build_mlp, "resnet": build_resnet}


def build_models(model_config, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``model_config.arch`` and data of ``input_shape`` (no batch dim)."""
    return ARCHITECTURES[model_config.arch](model_config, input_shape)


__all__ = ["ARCHITECTURES", "MLPDecoder", "MLPEncoder", "ResidualDecoder", "ResidualEncoder", "build_models"]
