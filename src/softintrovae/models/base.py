"""The contract between networks and the rest of the package.

What the methods, the trainer and the evaluators need of an encoder and a decoder, with defaults:

- an :class:`Encoder` maps x (B, *input_shape) [, labels (B,)] to (μ, log σ²), each (B, z_dim);
- a :class:`Decoder` maps z (B, z_dim) [, labels (B,)] to x̂ (B, *input_shape), no output activation;
- both name their latent layout (:class:`LatentLayout`: one group ``z`` for most models, ``content``
  and ``class`` for the translation model) and their number of classes (0: unconditional);
- a decoder may draw prior samples differently from reconstructions (:meth:`Decoder.prior`, e.g.
  style mixing) and may show how a sample builds up over resolutions (:meth:`Decoder.multiresolution`).

Networks that do not derive from these classes still train with the methods (any module mapping
x → (μ, log σ²) and z → x̂ works); :func:`latents_of` and :func:`num_classes_of` give them the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentLayout:
    """z as named groups of dimensions, in order: z = [z_names[0]; z_names[1]; ...]."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @classmethod
    def single(cls, z_dim: int) -> "LatentLayout":
        return cls(("z",), (int(z_dim),))

    @property
    def z_dim(self) -> int:
        return sum(self.sizes)

    @property
    def grouped(self) -> bool:
        """Several latents, each with its own β's (see ``methods.latent_betas``)."""
        return len(self.sizes) > 1

    def split(self, z: Tensor) -> tuple[Tensor, ...]:
        """The groups of z (B, z_dim), each (B, size)."""
        return z.split(list(self.sizes), dim=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentLayout":
        return cls(tuple(str(n) for n in data["names"]), tuple(int(s) for s in data["sizes"]))


class _Network(nn.Module):
    def __init__(self, latents: LatentLayout | int, num_classes: int = 0):
        super().__init__()
        self.latents = latents if isinstance(latents, LatentLayout) else LatentLayout.single(latents)
        self.num_classes = int(num_classes)

    @property
    def z_dim(self) -> int:
        return self.latents.z_dim


class Encoder(_Network):
    """x (B, *input_shape) [, labels (B,) int64] → (μ, log σ²), each (B, z_dim)."""

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Decoder(_Network):
    """z (B, z_dim) [, labels (B,) int64] → x̂ (B, *input_shape), no output activation."""

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def prior(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """D(z_p) for prior samples z_p ~ N(0, I) in training; the same as ``forward`` unless overridden."""
        return self(z, labels)

    def multiresolution(self, z: Tensor) -> list[Tensor] | None:
        """Images of z at every resolution the network has grown through (None: it does not grow)."""
        return None


def forward(network: nn.Module, inputs: Tensor, labels: Tensor | None = None):
    """network(inputs), or network(inputs, labels) for a class-conditional network."""
    return network(inputs) if labels is None else network(inputs, labels)


def decode_prior(decoder: nn.Module, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """D(z_p) for prior samples: :meth:`Decoder.prior` for our decoders, the plain call for any other."""
    if isinstance(decoder, Decoder):
        return decoder.prior(z, labels)
    return forward(decoder, z, labels)


def latents_of(network: nn.Module, z_dim: int | None = None) -> LatentLayout:
    """A network's latent layout; one group of ``z_dim`` for a network that does not declare one."""
    if isinstance(network, _Network):
        return network.latents
    if z_dim is None:
        raise ValueError(f"{type(network).__name__} does not declare its latent size: pass z_dim")
    return LatentLayout.single(z_dim)


def num_classes_of(network: nn.Module) -> int:
    """The number of classes a network is conditioned on (0 when it is unconditional)."""
    return network.num_classes if isinstance(network, _Network) else 0


def class_labels(n: int, num_classes: int) -> Tensor | None:
    """Labels 0, 1, ..., K−1, 0, 1, ... for n generated images of a conditional model; None when K is 0."""
    return torch.arange(n) % num_classes if num_classes else None


class eval_mode:
    """Put modules in eval mode (and no_grad) for a block, restoring their previous modes."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.modes = [m.training for m in self.modules]
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)
        self.no_grad.__exit__(*exc)


__all__ = [
    "Decoder",
    "Encoder",
    "LatentLayout",
    "class_labels",
    "decode_prior",
    "eval_mode",
    "forward",
    "latents_of",
    "num_classes_of",
]
