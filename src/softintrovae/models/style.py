"""Style-based encoder and decoder with progressive growing (paper §6.3, §9.2.2, Figure 4c).

The decoder follows StyleGAN's generator: a mapping network turns z into a style w, and a
synthesis network grows images from a learned 4×4 constant, block by block, each block doubling
the resolution and injecting w through two AdaIN layers (with per-pixel noise before each). The
encoder, after ALAE, mirrors it: each block's Instance Norm takes out the per-channel mean and
standard deviation of its features, and the learned maps C_i of these statistics are summed into
a style w, which a 3-layer mapping turns into (μ, log σ²) of z:

    w = Σ_i C_i [μ(y_i); σ(y_i)]

Every layer uses an equalized learning rate: weights are stored as N(0, 1) and multiplied by
gain / √fan_in at run time, so that Adam's step moves every layer at the same speed.

Progressive growing: ``model.channels`` lists the widths of the levels 4×4, 8×8, ... up to the
image size. At ``level`` L the networks work at 4·2^L pixels; while a level is blended in
(``alpha`` < 1) the new block's output is mixed with the previous level's, upsampled (decoder) or
from the average-pooled image (encoder). ``level`` and ``alpha`` are buffers, so checkpoints
carry them and a loaded network works at the level it was saved at; the trainer sets them every
step from the growth schedule (:mod:`softintrovae.growth`).

Conventions beyond the paper: in eval mode the decoder adds no noise (its expectation) and its
output is upsampled (nearest) to the full image size, so evaluation, pictures and likelihoods see
images of the dataset's shape at any level; the encoder average-pools larger inputs down to its
level. Prior samples drawn by the decoder in training (:meth:`StyleDecoder.prior`) mix the styles
of two latents with probability ``style_mixing``.

``model.style_variant: official`` computes what the official style trainer's networks compute
(ALAE's ``GeneratorDefault`` / ``EncoderDefault`` with ``MappingFromLatent`` / ``MappingToLatent``),
so that its checkpoints import exactly (:mod:`softintrovae.official_style`); the same parameters,
arranged differently:

- decoder blocks add their bias after the blur and the noise, not in the convolution before them;
- in eval mode the decoder adds ALAE's deterministic stand-in for the noise, not nothing
  (:func:`alae_noise_free`);
- both mapping networks end with a LeakyReLU (so μ and log σ² pass through one);
- the encoder applies LeakyReLU twice after from-RGB; its Instance Norm uses eps 1e-5 and its style
  statistics σ without eps; its 4×4 block is a convolution and pooling like the others (to 2×2),
  not a dense layer.

The official networks see images in [−1, 1], ours in [0, 1]: the importer folds that affine map
into the from-RGB and to-RGB weights, so the variant needs no conversion of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import Decoder, Encoder
from .layers import AdaIN, instance_statistics

LEAKY = 0.2
GAIN = math.sqrt(2.0)  # He gain for LeakyReLU layers


def act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LEAKY)


class EqualLinear(nn.Module):
    """A linear layer with an equalized learning rate (and an optional learning-rate multiplier)."""

    def __init__(self, in_features: int, out_features: int, gain: float = GAIN, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_scale = gain * lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A k×k convolution (same padding) with an equalized learning rate; ``with_bias=False`` leaves the
    bias for the caller to add later (the official variant adds it after blur and noise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = GAIN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor, with_bias: bool = True) -> Tensor:
        return F.conv2d(x, self.weight * self.weight_scale, self.bias if with_bias else None, padding=self.padding)


class Blur(nn.Module):
    """The [1, 2, 1] ⊗ [1, 2, 1] / 16 low-pass filter, per channel, next to every resampling
    (``model.blur``; it costs about a third of a small model's step on a CPU)."""

    def __init__(self):
        super().__init__()
        kernel = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (kernel[:, None] * kernel[None, :] / 16)[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        return F.conv2d(x, self.kernel.expand(channels, 1, 3, 3).to(x.dtype), padding=1, groups=channels)


def alae_noise_free(x: Tensor, layer: int) -> Tensor:
    """What ALAE's decoder block ``layer`` adds in place of noise when asked for none:
    x + 0.8·s·exp(−x²/2s²)/√(2π), s = √(layer + 1) (independent of the learned noise weights)."""
    s = math.sqrt(layer + 1)
    return x + s * torch.exp(-x * x / (2.0 * s * s)) / math.sqrt(2 * math.pi) * 0.8


class NoiseInjection(nn.Module):
    """Adds per-pixel N(0, 1) noise scaled by a learned per-channel weight (zero at start). In eval mode
    it adds none, or, with ``noise_free_layer`` (the official variant), :func:`alae_noise_free`."""

    def __init__(self, channels: int, noise_free_layer: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.noise_free_layer = noise_free_layer

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x if self.noise_free_layer is None else alae_noise_free(x, self.noise_free_layer)
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight.view(1, -1, 1, 1) * noise


EPS = 1e-8  # instance normalisation's, as StyleGAN


def _style_adain(channels: int, w_dim: int, official: bool = False) -> AdaIN:
    """AdaIN with an equalized affine map of w (normalising as ``nn.InstanceNorm2d`` in the official variant)."""
    return AdaIN(channels, w_dim, eps=EPS, affine=EqualLinear(w_dim, 2 * channels, gain=1.0), torch_kernel=official)


def mapping_network(
    in_dim: int, hidden: int, out_dim: int, layers: int, lr_mul: float = 1.0, final_activation: bool = False
) -> nn.Sequential:
    """``layers`` equalized fully-connected layers with LeakyReLU between them (and after the last with
    ``final_activation``, as ALAE's mappings)."""
    modules: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        modules.append(EqualLinear(in_dim if i == 0 else hidden, out_dim if last else hidden, gain=1.0 if last else GAIN, lr_mul=lr_mul))
        if not last or final_activation:
            modules.append(nn.LeakyReLU(LEAKY))
    return nn.Sequential(*modules)


class Progressive(nn.Module):
    """Level/alpha bookkeeping shared by the encoder and the decoder (a mixin of :class:`Encoder` /
    :class:`Decoder`; call :meth:`init_levels` in ``__init__``)."""

    def init_levels(self, channels: list[int]) -> None:
        self.channels = list(channels)
        self.levels = len(channels)
        self.register_buffer("level", torch.tensor(self.levels - 1))
        self.register_buffer("alpha", torch.tensor(1.0))
        self._progress = (self.levels - 1, 1.0)
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_progress())

    @staticmethod
    def resolution(level: int) -> int:
        return 4 * 2**level

    @property
    def progress(self) -> tuple[int, float]:
        """(level, alpha) the network works at."""
        return self._progress

    def set_progress(self, level: int, alpha: float = 1.0) -> None:
        if not 0 <= level < self.levels:
            raise UserError(f"level must be in 0..{self.levels - 1}, got {level}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {alpha}")
        self.level.fill_(level)
        self.alpha.fill_(alpha)
        self._progress = (int(level), float(alpha))

    def _sync_progress(self) -> None:
        self._progress = (int(self.level), float(self.alpha))

    def blending(self) -> bool:
        level, alpha = self._progress
        return level > 0 and alpha < 1.0


class DecoderBlock(nn.Module):
    """One level of the synthesis network: (upsample, conv) or the 4×4 constant, then noise, LeakyReLU,
    AdaIN; conv, noise, LeakyReLU, AdaIN. Takes two styles. ``official``: the bias after blur and
    noise, and ALAE's noise-free stand-in in eval mode (``layer``: the block's level)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, first: bool, blur: bool = True, official: bool = False, layer: int = 0):
        super().__init__()
        self.first, self.official = first, official
        noise_free = layer if official else None
        if first:
            self.const = nn.Parameter(torch.ones(1, out_channels, 4, 4))
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.conv1 = EqualConv2d(in_channels, out_channels, 3)
            self.blur = Blur() if blur else nn.Identity()
        self.noise1, self.adain1 = NoiseInjection(out_channels, noise_free), _style_adain(out_channels, w_dim, official)
        self.conv2 = EqualConv2d(out_channels, out_channels, 3)
        self.noise2, self.adain2 = NoiseInjection(out_channels, noise_free), _style_adain(out_channels, w_dim, official)

    def forward(self, x: Tensor | None, w1: Tensor, w2: Tensor) -> Tensor:
        if self.official:
            return self._forward_official(x, w1, w2)
        if self.first:
            x = self.const.expand(w1.shape[0], -1, -1, -1) + self.bias.view(1, -1, 1, 1)
        else:
            x = self.blur(self.conv1(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = self.adain1(act(self.noise1(x)), w1)
        x = self.adain2(act(self.noise2(self.conv2(x))), w2)
        return x

    def _forward_official(self, x: Tensor | None, w1: Tensor, w2: Tensor) -> Tensor:
        if self.first:
            x, bias1 = self.const.expand(w1.shape[0], -1, -1, -1), self.bias
        else:
            x, bias1 = self.blur(self.conv1(F.interpolate(x, scale_factor=2, mode="nearest"), with_bias=False)), self.conv1.bias
        x = self.adain1(act(self.noise1(x) + bias1.view(1, -1, 1, 1)), w1)
        x = self.adain2(act(self.noise2(self.conv2(x, with_bias=False)) + self.conv2.bias.view(1, -1, 1, 1)), w2)
        return x


class StyleDecoder(Progressive, Decoder):
    """z (B, z_dim) → images (B, C, 4·2^level, 4·2^level) in training; full size in eval mode."""

    def __init__(
        self,
        z_dim: int,
        channels: list[int],
        image_channels: int,
        mapping_layers: int = 8,
        style_mixing: float = 0.9,
        blur: bool = True,
        variant: str = "default",
    ):
        super().__init__(z_dim)
        self.init_levels(channels)
        self.image_channels, self.style_mixing = image_channels, style_mixing
        self.image_size = self.resolution(self.levels - 1)
        official = variant == "official"
        # z -> w: 8 layers in the paper, a 0.1 learning-rate multiplier as in ALAE's mapping
        self.mapping = mapping_network(z_dim, z_dim, z_dim, mapping_layers, lr_mul=0.1, final_activation=official)
        self.blocks = nn.ModuleList(
            DecoderBlock(channels[max(i - 1, 0)], channels[i], z_dim, first=i == 0, blur=blur, official=official, layer=i)
            for i in range(self.levels)
        )
        self.to_rgb = nn.ModuleList(EqualConv2d(c, image_channels, 1, gain=1.0) for c in channels)

    @property
    def num_styles(self) -> int:
        return 2 * self.levels

    def styles(self, z: Tensor) -> Tensor:
        """w for every AdaIN layer: (B, 2·levels, w_dim), the same w repeated (no mixing)."""
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # pixel norm of the input, as StyleGAN
        w = self.mapping(z)
        return w.unsqueeze(1).expand(-1, self.num_styles, -1)

    def mixed_styles(self, z: Tensor) -> Tensor:
        """Styles of prior samples in training: with probability ``style_mixing`` the layers from a
        random cutoff on (among the active ones) take the style of a second latent."""
        styles = self.styles(z)
        if not self.training or self.style_mixing <= 0 or float(torch.rand(())) >= self.style_mixing:
            return styles
        other = self.styles(torch.randn_like(z))
        active = 2 * (self._progress[0] + 1)
        cutoff = int(torch.randint(1, active + 1, ()))
        layer = torch.arange(self.num_styles, device=z.device).view(1, -1, 1)
        return torch.where(layer < cutoff, styles, other)

    def synthesize(self, styles: Tensor, level: int | None = None, alpha: float | None = None) -> Tensor:
        """Images at ``level`` (default: the current one) from per-layer styles (B, 2·levels, w_dim)."""
        cur_level, cur_alpha = self._progress
        level = cur_level if level is None else level
        alpha = (cur_alpha if level == cur_level else 1.0) if alpha is None else alpha
        x, lower = None, None
        for i in range(level + 1):
            if i == level and level > 0 and alpha < 1.0:
                lower = F.interpolate(self.to_rgb[i - 1](x), scale_factor=2, mode="nearest")
            x = self.blocks[i](x, styles[:, 2 * i], styles[:, 2 * i + 1])
        out = self.to_rgb[level](x)
        if lower is not None:
            out = lower + alpha * (out - lower)  # lerp, with dtype promotion under autocast
        if not self.training and out.shape[-1] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="nearest")
        return out

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.synthesize(self.styles(z))

    def prior(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """D(z_p) for prior samples: like ``forward``, with style mixing in training."""
        return self.synthesize(self.mixed_styles(z))

    def multiresolution(self, z: Tensor) -> list[Tensor]:
        """The images of every level 0..current (each through its own to-RGB layer, alpha 1),
        upsampled (nearest) to the current level's size: how the sample was built up."""
        level = self._progress[0]
        size = self.resolution(level)
        outs = []
        with torch.no_grad():
            styles = self.styles(z)
            for lv in range(level + 1):
                out = self.synthesize(styles, lv, 1.0 if lv < level else None)
                outs.append(F.interpolate(out, size=(size, size), mode="nearest") if out.shape[-1] != size else out)
        return outs


def official_statistics(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`instance_statistics` as ALAE's encoder takes them: normalised by ``nn.InstanceNorm2d``'s
    kernel (eps 1e-5), the standard deviations (B, C) without eps, computed in two passes as there."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
    return F.instance_norm(x, eps=1e-5), mean.flatten(1), std.flatten(1)


def _statistics(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return instance_statistics(x, EPS)


class EncoderBlock(nn.Module):
    """One level of the encoder (mirror of :class:`DecoderBlock`): conv, LeakyReLU, IN (style);
    then blur, conv and 2× average pooling, LeakyReLU, IN (style) — or, at 4×4, a dense layer
    (``official``: pooling to 2×2 there too, and :func:`official_statistics`)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, last: bool, blur: bool = True, official: bool = False):
        super().__init__()
        self.last = last and not official
        self.statistics = official_statistics if official else _statistics
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.style1 = EqualLinear(2 * in_channels, w_dim, gain=1.0)
        if self.last:
            self.dense = EqualLinear(in_channels * 16, out_channels)
            self.style2 = EqualLinear(out_channels, w_dim, gain=1.0)
        else:
            self.blur = Blur() if blur else nn.Identity()
            self.conv2 = EqualConv2d(in_channels, out_channels, 3)
            self.style2 = EqualLinear(2 * out_channels, w_dim, gain=1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the features passed down, this block's contribution C_i[μ; σ] to w)."""
        x, mean, std = self.statistics(act(self.conv1(x)))
        style = self.style1(torch.cat([mean, std], dim=1))
        if self.last:
            x = act(self.dense(x.flatten(1)))
            return x, style + self.style2(x)
        x, mean, std = self.statistics(act(F.avg_pool2d(self.conv2(self.blur(x)), 2)))
        return x, style + self.style2(torch.cat([mean, std], dim=1))


class StyleEncoder(Progressive, Encoder):
    """Images (B, C, H, W) → (μ, log σ²) of z, each (B, z_dim); inputs larger than the level are average-pooled."""

    def __init__(
        self, z_dim: int, channels: list[int], image_channels: int, mapping_layers: int = 3, blur: bool = True, variant: str = "default"
    ):
        super().__init__(z_dim)
        self.init_levels(channels)
        self.image_channels = image_channels
        self.image_size = self.resolution(self.levels - 1)
        self.official = variant == "official"
        self.from_rgb = nn.ModuleList(EqualConv2d(image_channels, c, 1) for c in channels)
        self.blocks = nn.ModuleList(
            EncoderBlock(channels[i], channels[max(i - 1, 0)], z_dim, last=i == 0, blur=blur, official=self.official)
            for i in range(self.levels)
        )
        self.to_latent = mapping_network(z_dim, z_dim, 2 * z_dim, mapping_layers, final_activation=self.official)

    def features(self, x: Tensor, level: int) -> Tensor:
        """from-RGB of ``level`` and its LeakyReLU (twice in the official variant, as ALAE)."""
        h = act(self.from_rgb[level](x))
        return act(h) if self.official else h

    def styles(self, x: Tensor) -> Tensor:
        """The style w (B, w_dim) of images at (or above) the current level's resolution."""
        level, alpha = self._progress
        size = self.resolution(level)
        if x.shape[-1] != size:
            if x.shape[-1] < size or x.shape[-1] % size:
                raise UserError(f"the encoder at level {level} takes {size}x{size} images or a multiple, got {tuple(x.shape[1:])}")
            x = F.adaptive_avg_pool2d(x, size)
        h, w = self.blocks[level](self.features(x, level))
        if self.blending():
            lower = self.features(F.avg_pool2d(x, 2), level - 1)
            h, w = lower + alpha * (h - lower), w * alpha
        for i in range(level - 1, -1, -1):
            h, style = self.blocks[i](h)
            w = w + style
        return w

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_latent(self.styles(x)).chunk(2, dim=1)
        return mu, logvar


def build_style(model_config, input_shape: tuple[int, ...], num_classes: int = 0) -> tuple[StyleEncoder, StyleDecoder]:
    if num_classes:
        raise UserError("model.conditional is not supported by model.arch style")
    if len(input_shape) != 3:
        raise UserError(f"model.arch style takes images, but the data are {tuple(input_shape)}: use model.arch=mlp")
    channels_in, height, width = input_shape
    levels = len(model_config.channels)
    size = 4 * 2 ** (levels - 1)
    if height != width or height != size:
        raise UserError(
            f"model.arch style with {levels} levels (model.channels {model_config.channels}) grows 4x4 to {size}x{size}, "
            f"but the images are {height}x{width}: give one width per level from 4x4 up (or set data.pad_to)"
        )
    variant = model_config.style_variant
    if variant == "official" and not model_config.blur:
        raise UserError("model.style_variant official blurs next to every resampling, as the official networks: set model.blur=true")
    encoder = StyleEncoder(model_config.z_dim, model_config.channels, channels_in, blur=model_config.blur, variant=variant)
    decoder = StyleDecoder(
        model_config.z_dim, model_config.channels, channels_in, model_config.mapping_layers, model_config.style_mixing, model_config.blur, variant
    )
    return encoder, decoder
