"""Encoder/decoder architectures. An encoder maps x to (μ, log σ²); a decoder maps z to x̂.

Every architecture builds an (:class:`Encoder`, :class:`Decoder`) pair (the contract is in
:mod:`softintrovae.models.base`); :data:`ARCHITECTURES` is the registry ``model.arch`` is checked against.
"""

from __future__ import annotations

import math

from ..errors import UserError
from .base import Decoder, Encoder, LatentLayout, class_labels, decode_prior, eval_mode, forward, latents_of, num_classes_of
from .mlp import MLPDecoder, MLPEncoder
from .resnet import ResidualDecoder, ResidualEncoder, build_resnet
from .style import StyleDecoder, StyleEncoder, build_style
from .translation import TranslationDecoder, TranslationEncoder, build_translation


def _build_mlp(model_config, input_shape: tuple[int, ...], num_classes: int = 0) -> tuple[MLPEncoder, MLPDecoder]:
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


def build_models(model_config, input_shape: tuple[int, ...], num_classes: int = 0) -> tuple[Encoder, Decoder]:
    """(encoder, decoder) for ``model_config.arch`` and data of ``input_shape`` (no batch dim).

    With ``model_config.conditional`` the networks take a class label as well; ``num_classes`` is
    the data's number of classes (0 for unlabelled data, which a conditional model refuses).
    """
    if not model_config.conditional:
        return ARCHITECTURES[model_config.arch](model_config, input_shape)
    if num_classes < 1:
        raise UserError("model.conditional is true, but the data have no class labels")
    return ARCHITECTURES[model_config.arch](model_config, input_shape, num_classes)



__all__ = [
    "ARCHITECTURES",
    "Decoder",
    "Encoder",
    "LatentLayout",
    "MLPDecoder",
    "MLPEncoder",
    "ResidualDecoder",
    "ResidualEncoder",
    "StyleDecoder",
    "StyleEncoder",
    "TranslationDecoder",
    "TranslationEncoder",
    "build_models",
    "class_labels",
    "decode_prior",
    "eval_mode",
    "forward",
    "latents_of",
    "num_classes_of",
]
