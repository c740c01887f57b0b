"""The image experiments' residual encoder and decoder (IntroVAE / Soft-IntroVAE, paper Table 6).

The encoder halves the resolution once per entry of ``channels`` (a 5×5 stem, then a residual
block and an average pool per further width, then one more block) and ends in a linear layer to
(μ, log σ²). The decoder mirrors it: a linear layer to the smallest map, a residual block and a
nearest ×2 upsample per width, one more block, and a 5×5 conv with no output activation. With
``num_classes > 0`` a one-hot class is concatenated to the encoder's features and to z (SPEC §3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import Decoder, Encoder


def spatial_size_after_encoder(image_shape: Sequence[int], channels: Sequence[int]) -> int:
    """Side of the encoder's last feature map (H / 2**len(channels)); UserError if unsupported."""
    if len(image_shape) != 3:
        raise UserError(f"image shape must be (C, H, W), got {tuple(image_shape)}")
    _, height, width = image_shape
    if height != width:
        raise UserError(f"images must be square, got {height}×{width}")
    is_power_of_two = height >= 8 and height & (height - 1) == 0
    if not (is_power_of_two or height == 28):
        raise UserError(f"image size {height} is not supported: use 28 or a power of two >= 8")
    if not channels:
        raise UserError("model.channels must list at least one width, got none")
    size, remainder = divmod(height, 2 ** len(channels))
    if size < 1 or remainder:
        raise UserError(
            f"model.channels {tuple(channels)} has {len(channels)} levels, too many for image size "
            f"{height} ({height} / 2**{len(channels)} is not a whole number >= 1)"
        )
    return size


def _append_one_hot(features: Tensor, y: Tensor | None, num_classes: int) -> Tensor:
    """features (B, D), int64 labels y (B,) → (B, D + num_classes), the class one-hot appended."""
    if y is None:
        raise UserError(f"this model is class-conditional ({num_classes} classes): pass labels y")
    one_hot = F.one_hot(y, num_classes).to(dtype=features.dtype, device=features.device)
    return torch.cat([features, one_hot], dim=1)


class ResidualBlock(nn.Module):
    """LeakyReLU(main(x) + identity(x)); main = conv3×3-BN-LeakyReLU-conv3×3-BN.

    The identity path is a 1×1 conv only where the width changes. Convs have no bias because a
    BatchNorm follows each of them.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.identity = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.activation = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.main(x) + self.identity(x))


class ResidualEncoder(Encoder):
    """x (B, C, H, W) [, y (B,) int64] → (μ, log σ²), each (B, z_dim)."""

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 32, 32),
        channels: Sequence[int] = (64, 128, 256),
        z_dim: int = 128,
        num_classes: int = 0,
    ):
        super().__init__(z_dim, num_classes)
        size = spatial_size_after_encoder(image_shape, channels)
        layers: list[nn.Module] = [
            nn.Conv2d(image_shape[0], channels[0], 5, padding=2, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AvgPool2d(2),
        ]
        for previous, width in zip(channels[:-1], channels[1:]):
            layers += [ResidualBlock(previous, width), nn.AvgPool2d(2)]
        layers.append(ResidualBlock(channels[-1], channels[-1]))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * size * size + num_classes, 2 * z_dim)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """y is required when the encoder is conditional and ignored otherwise."""
        features = self.features(x).flatten(1)  # (B, channels[-1]·s·s)
        if self.num_classes:
            features = _append_one_hot(features, y, self.num_classes)
        mu, logvar = self.head(features).chunk(2, dim=1)
        return mu, logvar


class ResidualDecoder(Decoder):
    """z (B, z_dim) [, y (B,) int64] → x̂ (B, C, H, W), no output activation."""

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 32, 32),
        channels: Sequence[int] = (64, 128, 256),
        z_dim: int = 128,
        num_classes: int = 0,
    ):
        super().__init__(z_dim, num_classes)
        size = spatial_size_after_encoder(image_shape, channels)
        self.start_shape = (channels[-1], size, size)  # the encoder's last feature map
        self.project = nn.Sequential(
            nn.Linear(z_dim + num_classes, channels[-1] * size * size),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        previous = channels[-1]
        for width in reversed(channels):
            layers += [ResidualBlock(previous, width), nn.Upsample(scale_factor=2, mode="nearest")]
            previous = width
        layers += [ResidualBlock(previous, previous), nn.Conv2d(previous, image_shape[0], 5, padding=2)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """y is required when the decoder is conditional and ignored otherwise."""
        if self.num_classes:
            z = _append_one_hot(z, y, self.num_classes)
        return self.body(self.project(z).view(-1, *self.start_shape))


def build_resnet(model_config, input_shape: Sequence[int], num_classes: int = 0) -> tuple[ResidualEncoder, ResidualDecoder]:
    """(encoder, decoder) from ``model_config.z_dim`` and ``model_config.channels``."""
    channels = tuple(int(width) for width in model_config.channels)
    kwargs = dict(image_shape=tuple(input_shape), channels=channels, z_dim=model_config.z_dim, num_classes=num_classes)
    return ResidualEncoder(**kwargs), ResidualDecoder(**kwargs)
