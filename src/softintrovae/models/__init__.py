"""Encoder/decoder architectures. An encoder maps x to (μ, log σ²); a decoder maps z to x̂."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import UserError
from .mlp import MLPDecoder, MLPEncoder
from .resnet import ResidualDecoder, ResidualEncoder, build_resnet
from .style import StyleDecoder, StyleEncoder, build_style
from .translation import TranslationDecoder, TranslationEncoder, build_translation


def _build_mlp(model_config, input_shape: tuple[int, ...], num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    if num_classes:
        raise UserError("model.conditional needs model.arch resnet; the mlp has no class input")
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


ARCHITECTURES = {"mlp": _build_mlp, "resnet": build_resnet, "style": build_style, "translation": build_translation}


def build_models(model_config, input_shape: tuple[int, ...], num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``model_config.arch`` and data of ``input_shape`` (no batch dim).

    With ``model_config.conditional`` the networks take a class label as well; ``num_classes`` is
    the data's number of classes (0 for unlabelled data, which a conditional model refuses).
    """
    if not model_config.conditional:
        return ARCHITECTURES[model_config.arch](model_config, input_shape)
    if num_classes < 1:
        raise UserError("model.conditional is true, but the data have no class labels")
    return ARCHITECTURES[model_config.arch](model_config, input_shape, num_classes)


def forward(network: nn.Module, inputs: Tensor, labels: Tensor | None = None):
    """network(inputs), or network(inputs, labels) for a class-conditional network."""
    return network(inputs) if labels is None else network(inputs, labels)


def class_labels(n: int, num_classes: int) -> Tensor | None:
    """Labels 0, 1, ..., K−1, 0, 1, ... for n generated images of a conditional model; None when K is 0."""
    return torch.arange(n) % num_classes if num_classes else None


def num_classes_of(network: nn.Module) -> int:
    """The number of classes a network is conditioned on (0 when it is unconditional)."""
    return int(getattr(network, "num_classes", 0))


__all__ = ["ARCHITECTURES", "MLPDecoder", "MLPEncoder", "ResidualDecoder", "ResidualEncoder", "StyleDecoder", "StyleEncoder", "TranslationDecoder", "TranslationEncoder", "build_models", "class_labels", "forward", "num_classes_of"]
