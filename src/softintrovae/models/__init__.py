"""Encoder/decoder architectures. An encoder maps x to (μ, log σ²); a decoder maps z to x̂."""

from __future__ import annotations

import math

from torch import nn

from .mlp import MLPDecoder, MLPEncoder


def _build_mlp(model_config, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    data_dim = math.prod(input_shape)
    kwargs = dict(
        data_dim=data_dim,
        z_dim=model_config.z_dim,
        hidden_dim=model_config.hidden_dim,
        hidden_layers=model_config.hidden_layers,
    )
    return MLPEncoder(**kwargs), MLPDecoder(**kwargs)


ARCHITECTURES = {"mlp": _build_mlp}


def build_models(model_config, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``model_config.arch`` and data of ``input_shape`` (no batch dim)."""
    return ARCHITECTURES[model_config.arch](model_config, input_shape)


__all__ = ["ARCHITECTURES", "MLPDecoder", "MLPEncoder", "build_models"]
