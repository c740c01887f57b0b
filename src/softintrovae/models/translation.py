"""The two-encoder AdaIN model for unsupervised image translation (paper §6.4, §9.3, Figure 4b; LORD).

A *content* encoder and a *class* encoder, each convolutions (``channels``, 64, 128, 256, 256 in
the paper; stride 2, LeakyReLU) and 3 fully connected layers to a Gaussian (μ, log σ²). The decoder
maps the content latent through 3 fully connected layers to the smallest feature map, then runs 6
convolutions: each of the first ``len(channels)`` (4) is preceded by a ×2 upsampling and followed by
adaptive instance normalisation whose per-channel mean and standard deviation come from the class
latent; then two more convolutions to the image (no output activation). LeakyReLU(0.2) throughout.

To the methods the pair is one encoder and one decoder over the concatenated latent
``z = [z_content; z_class]``: :class:`TranslationEncoder` returns the concatenated (μ, log σ²) and
names its groups in ``latent_names`` / ``latent_sizes``, so the KL splits into KL_content + KL_class
and each part reaches only its own encoder (§9.3); the reconstruction reaches both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import Decoder, Encoder, LatentLayout
from .layers import AdaIN
from .resnet import spatial_size_after_encoder

LATENT_NAMES = ("content", "class")


class GaussianConvEncoder(nn.Module):
    """x (B, C, H, W) → (μ, log σ²), each (B, z_dim): stride-2 4×4 convolutions, then 3 FC layers."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], z_dim: int, hidden_dim: int):
        super().__init__()
        self.z_dim = z_dim
        size = spatial_size_after_encoder(image_shape, channels)
        layers: list[nn.Module] = []
        previous = image_shape[0]
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(previous * size * size, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_dim, 2 * z_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar


def _layout(content_dim: int, class_dim: int) -> LatentLayout:
    return LatentLayout(LATENT_NAMES, (content_dim, class_dim))


class TranslationEncoder(Encoder):
    """x → (μ, log σ²) of z = [z_content; z_class], each (B, content_dim + class_dim)."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], content_dim: int, class_dim: int, hidden_dim: int):
        super().__init__(_layout(content_dim, class_dim))
        self.content = GaussianConvEncoder(image_shape, channels, content_dim, hidden_dim)
        self.class_ = GaussianConvEncoder(image_shape, channels, class_dim, hidden_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        (mu_content, logvar_content), (mu_class, logvar_class) = self.content(x), self.class_(x)
        return torch.cat([mu_content, mu_class], dim=1), torch.cat([logvar_content, logvar_class], dim=1)


class TranslationDecoder(Decoder):
    """z = [z_content; z_class] (B, content_dim + class_dim) → x̂ (B, C, H, W), no output activation."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], content_dim: int, class_dim: int, hidden_dim: int):
        super().__init__(_layout(content_dim, class_dim))
        size = spatial_size_after_encoder(image_shape, channels)
        widths = list(reversed(channels))  # 256, 256, 128, 64 for the paper's encoder widths
        self.start_shape = (widths[0], size, size)
        self.project = nn.Sequential(
            nn.Linear(content_dim, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_dim, widths[0] * size * size),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        previous = widths[0]
        for width in widths:
            self.convs.append(nn.Conv2d(previous, width, 3, padding=1))
            self.norms.append(AdaIN(width, class_dim))
            previous = width
        self.activation = nn.LeakyReLU(0.2)
        self.out = nn.Sequential(
            nn.Conv2d(previous, previous, 5, padding=2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(previous, image_shape[0], 7, padding=3),
        )
        self._register_load_state_dict_pre_hook(_upgrade_adain_keys)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(z_content, z_class) of a concatenated latent."""
        content_dim, class_dim = self.latents.sizes
        if z.shape[1] != content_dim + class_dim:
            raise UserError(f"the decoder takes latents of {content_dim} + {class_dim} dimensions, got {z.shape[1]}")
        return z[:, :content_dim], z[:, content_dim:]

    def decode(self, z_content: Tensor, z_class: Tensor) -> Tensor:
        h = self.project(z_content).view(-1, *self.start_shape)
        for conv, norm in zip(self.convs, self.norms):
            h = self.activation(norm(conv(self.upsample(h)), z_class))
        return self.out(h)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.decode(*self.split(z))


def _upgrade_adain_keys(state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the AdaIN layers were shared hold ``norms.i.affine`` with rows
    [mean; std − 1]; the shared layer's ``norms.i.style`` has rows [std; mean]."""
    for key in [k for k in state_dict if k.startswith(prefix + "norms.") and ".affine." in k]:
        mean, std_minus_one = state_dict.pop(key).chunk(2, dim=0)
        if key.endswith(".bias"):
            std_minus_one = std_minus_one + 1.0
        state_dict[key.replace(".affine.", ".style.")] = torch.cat([std_minus_one, mean])


def build_translation(model_config, input_shape: Sequence[int], num_classes: int = 0) -> tuple[TranslationEncoder, TranslationDecoder]:
    """(encoder, decoder): content latent ``model.z_dim``, class latent ``model.class_z_dim``,
    encoder widths ``model.channels``, fully connected width ``model.hidden_dim``."""
    if num_classes:
        raise UserError("model.arch translation is unsupervised: set model.conditional to false")
    kwargs = dict(
        image_shape=tuple(input_shape),
        channels=tuple(int(c) for c in model_config.channels),
        content_dim=model_config.z_dim,
        class_dim=model_config.class_z_dim,
        hidden_dim=model_config.hidden_dim,
    )
    return TranslationEncoder(**kwargs), TranslationDecoder(**kwargs)


__all__ = ["GaussianConvEncoder", "TranslationDecoder", "TranslationEncoder", "build_translation"]
