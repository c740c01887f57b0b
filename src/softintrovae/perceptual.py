"""Perceptual reconstruction loss: squared error between features of a fixed network (paper §6.4:
the translation experiments replace pixel MSE with the VGG perceptual loss of Johnson et al.).

``method.reconstruction: perceptual`` with ``method.perceptual_net``:

- ``vgg16`` (or ``vgg16:PATH``): torchvision's VGG-16, relu1_2 / relu2_2 / relu3_3, ImageNet
  normalisation. Needs torchvision and the ImageNet weights on disk: PATH, else
  ``vgg16-397923af.pth`` in torch's hub cache (``$TORCH_HOME/hub/checkpoints``). Nothing is downloaded.
- a path to a softintrovae feature net (``softintrovae feature-net train --dataset NAME``, see
  :mod:`softintrovae.metrics.features`): the activations of its three conv blocks. This one works
  offline on any dataset with class labels (the rendered objects included).

Per sample, the loss is ``Σ_l mean((φ_l(x) − φ_l(x̂))²) · D`` with D = C·H·W of the image, i.e. a
squared error per input dimension in feature units, summed like the pixel MSE (SPEC §2), so that
β_rec and s = 1/D keep their meaning. Any other network plugs in through :class:`PerceptualLoss`
and :func:`softintrovae.objectives.register_reconstruction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import UserError

VGG16_WEIGHTS_FILE = "vgg16-397923af.pth"
VGG16_LAYERS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Per-sample perceptual error (B,) between images x and x̂ (B, C, H, W).

    ``blocks`` run one after another; the output of each is a feature map compared between x and x̂.
    ``channels`` (1 or 3) is what the blocks take: gray images are repeated to RGB and RGB images
    averaged to gray as needed. ``mean``/``std`` normalise the input per channel. The network is
    frozen (no gradient to its weights, eval mode) but passes gradients to x̂.
    """

    def __init__(self, blocks: Sequence[nn.Module], channels: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean or [0.0] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0] * channels).view(1, -1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # BatchNorm statistics are part of what the features mean

    def features(self, x: Tensor) -> list[Tensor]:
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        h = (x.float() - self.mean) / self.std
        found = []
        for block in self.blocks:
            h = block(h)
            found.append(h)
        return found

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        dims = x[0].numel()
        target = [f.detach() for f in self.features(x)]
        return sum((a - b).pow(2).flatten(1).mean(1) for a, b in zip(self.features(x_hat), target)) * dims


def vgg16_perceptual(weights: str | Path | None = None) -> PerceptualLoss:
    """VGG-16's relu1_2 / relu2_2 / relu3_3 from local ImageNet weights (never downloaded)."""
    try:
        import torchvision
    except Exception:
        raise UserError("method.perceptual_net vgg16 needs torchvision: pip install 'softintrovae[vision]', or use a softintrovae feature net file") from None
    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"VGG-16 weights {str(path)!r} not found (they are not downloaded): give vgg16:PATH, or use a softintrovae feature net file")
    vgg = torchvision.models.vgg16(weights=None)
    vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    layers, blocks, start = list(vgg.features), [], 0
    for end in VGG16_LAYERS:
        blocks.append(nn.Sequential(*layers[start : end + 1]))
        start = end + 1
    return PerceptualLoss(blocks, 3, IMAGENET_MEAN, IMAGENET_STD)


def feature_net_perceptual(path: str | Path) -> PerceptualLoss:
    """The three conv blocks (conv-BN-ReLU-pool) of a softintrovae feature net as the feature network."""
    from .metrics.features import load_feature_net

    if not Path(path).expanduser().is_file():
        raise UserError(f"method.perceptual_net {str(path)!r} is neither vgg16 nor an existing feature net file")
    net = load_feature_net(Path(path).expanduser())
    body = list(net.body)
    blocks = [nn.Sequential(*body[i : i + 4]) for i in range(0, 12, 4)]  # the Flatten and Linear layers are left out
    return PerceptualLoss(blocks, net.in_channels)


def build_perceptual_loss(spec: str | None) -> PerceptualLoss:
    """``vgg16``, ``vgg16:PATH`` or the path of a softintrovae feature net."""
    if not spec:
        raise UserError("method.reconstruction perceptual needs method.perceptual_net: vgg16, vgg16:PATH or a feature net file")
    if spec == "vgg16" or spec.startswith("vgg16:"):
        return vgg16_perceptual(spec.partition(":")[2] or None)
    return feature_net_perceptual(spec)


__all__ = ["PerceptualLoss", "build_perceptual_loss", "feature_net_perceptual", "vgg16_perceptual"]
