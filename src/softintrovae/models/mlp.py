"""The 2D experiments' encoder and decoder: MLPs with ReLU hidden layers of width 256 (paper §6.1)."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Decoder, Encoder


def _mlp(in_dim: int, hidden_dim: int, hidden_layers: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPEncoder(Encoder):
    """x (B, data_dim) → (μ, log σ²), each (B, z_dim)."""

    def __init__(self, data_dim: int = 2, z_dim: int = 2, hidden_dim: int = 256, hidden_layers: int = 4):
        super().__init__(z_dim)
        self.net = _mlp(data_dim, hidden_dim, hidden_layers, 2 * z_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(Decoder):
    """z (B, z_dim) → x̂ (B, data_dim), no output activation."""

    def __init__(self, data_dim: int = 2, z_dim: int = 2, hidden_dim: int = 256, hidden_layers: int = 4):
        super().__init__(z_dim)
        self.net = _mlp(z_dim, hidden_dim, hidden_layers, data_dim)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z)
