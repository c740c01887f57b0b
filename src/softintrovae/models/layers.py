"""Layers shared by several architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def instance_statistics(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x normalised per sample and channel over H×W, the means (B, C), the standard deviations (B, C))
    of feature maps x (B, C, H, W); variances are biased and ``eps`` is added before the square root."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    std = (var + eps).sqrt()
    return (x - mean) / std, mean.flatten(1), std.flatten(1)


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017): normalise each channel of each sample,
    then scale and shift it by an affine map of a style vector.

    ``affine`` maps the style (B, style_dim) to [scale; shift] (B, 2·channels); a plain linear layer
    by default (the style-based architecture passes an equalized one). Its bias starts the scale at 1,
    so a fresh layer is close to plain instance normalisation. ``torch_kernel`` normalises with
    ``F.instance_norm`` (``nn.InstanceNorm2d``'s kernel): the same function, rounded differently, which
    shows where a map is constant (its rounding error divided by √eps) — to match outputs of networks
    built on ``nn.InstanceNorm2d``.
    """

    def __init__(self, channels: int, style_dim: int, eps: float = 1e-5, affine: nn.Module | None = None, torch_kernel: bool = False):
        super().__init__()
        self.channels, self.eps, self.torch_kernel = channels, eps, torch_kernel
        self.style = affine if affine is not None else nn.Linear(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels] += 1.0

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x (B, C, H, W), style (B, style_dim) → (B, C, H, W)."""
        scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)
        normalised = F.instance_norm(x, eps=self.eps) if self.torch_kernel else instance_statistics(x, self.eps)[0]
        return scale * normalised + shift


__all__ = ["AdaIN", "instance_statistics"]
