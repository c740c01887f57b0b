"""Pictures from a trained image run: prior samples, reconstructions and latent interpolations.

All of them load the run's latest checkpoint and decode in eval mode (BatchNorm uses its running
statistics), with their own seeded generators, so the same command draws the same picture. A
class-conditional model samples classes 0, 1, ..., K−1 in turn and reconstructs each image with its
own label; an interpolated latent takes the label of its nearest end point or corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import build_data
from .errors import UserError
from .evaluation import eval_mode
from .models import build_models, class_labels, forward, num_classes_of
from .plots import plot_image_grid
from .rundir import RunDir, load_checkpoint


@dataclass
class TrainedModel:
    encoder: nn.Module
    decoder: nn.Module
    data: object  # the run's data stream (images to reconstruct or interpolate between)
    step: int
    run: RunDir


def load_trained(path: str | Path) -> TrainedModel:
    """The encoder and decoder of a run's latest checkpoint, on the CPU, with the run's data."""
    run = RunDir.open(path)
    config = run.load_config()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise UserError(f"run directory {str(run.path)!r} has no checkpoint yet")
    data = build_data(config)
    if len(data.input_shape) != 3:
        raise UserError(f"{str(run.path)!r} is a 2D run: its samples.png and density.png are drawn at evaluation")
    encoder, decoder = build_models(config.model, data.input_shape, getattr(data, "num_classes", 0))
    state = load_checkpoint(checkpoint)
    encoder.load_state_dict(state["encoder"])
    decoder.load_state_dict(state.get("decoder_ema", state["decoder"]))  # the EMA decoder, when the run keeps one
    return TrainedModel(encoder, decoder, data, int(state["step"]), run)


def _images(model: TrainedModel, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """n training images and, for a conditional model, their labels (else None)."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    images, labels = model.data.sample_labelled(n, torch.Generator().manual_seed(seed))
    return images, labels if num_classes_of(model.decoder) else None


def _out(model: TrainedModel, out: str | Path | None, name: str) -> Path:
    return Path(out) if out else model.run.path / "pictures" / f"{name}_step{model.step:07d}.png"


def sample(path: str | Path, n: int = 64, seed: int = 0, out: str | Path | None = None) -> Path:
    """``n`` decoded prior samples z ~ N(0, I) as a grid."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    model = load_trained(path)
    z = torch.randn(n, model.decoder.z_dim, generator=torch.Generator().manual_seed(seed))
    with eval_mode(model.encoder, model.decoder):
        images = forward(model.decoder, z, class_labels(n, num_classes_of(model.decoder))).clamp(0, 1)
    columns = min(8, n)
    return plot_image_grid(images.numpy(), columns, _out(model, out, "samples"), f"{n} samples, step {model.step}")


def reconstruct(path: str | Path, n: int = 16, seed: int = 0, out: str | Path | None = None) -> Path:
    """``n`` training images beside their reconstructions D(μ(x)): real | reconstruction pairs."""
    model = load_trained(path)
    real, labels = _images(model, n, seed)
    with eval_mode(model.encoder, model.decoder):
        mu, _ = forward(model.encoder, real, labels)
        rec = forward(model.decoder, mu, labels).clamp(0, 1)
    pairs = torch.stack([real, rec], dim=1).flatten(0, 1)  # real, rec, real, rec, ...
    return plot_image_grid(pairs.numpy(), 8, _out(model, out, "reconstructions"), f"real | reconstruction, step {model.step}")


def bilinear_weights(size: int = 8) -> Tensor:
    """(size·size, 4) weights of the corners (a, b, c, d) at each grid cell, row-major (SPEC §3, §9.4.2).

    w(i, j) = [(1−i/k)(1−j/k), (j/k)(1−i/k), (1−j/k)(i/k), (i/k)(j/k)], k = size − 1:
    a is the top-left corner, b top-right, c bottom-left, d bottom-right.
    """
    t = torch.linspace(0, 1, size)
    i, j = t.view(-1, 1), t.view(1, -1)
    weights = torch.stack([(1 - i) * (1 - j), j * (1 - i), (1 - j) * i, i * j], dim=-1)
    return weights.reshape(size * size, 4)


def bilinear_latents(corners: Tensor, size: int = 8) -> Tensor:
    """(size·size, z) latents between four corner latents (4, z): ``bilinear_weights(size) @ corners``."""
    return bilinear_weights(size) @ corners


def interpolate(path: str | Path, seed: int = 0, size: int = 8, out: str | Path | None = None) -> tuple[Path, Path]:
    """A linear strip between two images' latents and the 4-corner bilinear grid; returns both PNGs."""
    if size < 2:
        raise UserError(f"--size must be >= 2, got {size}")
    model = load_trained(path)
    images, labels = _images(model, 4, seed)
    weights = torch.linspace(0, 1, size).view(-1, 1)
    corner_weights = bilinear_weights(size)
    strip_labels = grid_labels = None
    if labels is not None:  # each point takes the class of the end point / corner it is nearest to
        strip_labels = labels[(weights.view(-1) > 0.5).long()]
        grid_labels = labels[corner_weights.argmax(dim=1)]
    with eval_mode(model.encoder, model.decoder):
        mu, _ = forward(model.encoder, images, labels)
        strip = forward(model.decoder, mu[0] * (1 - weights) + mu[1] * weights, strip_labels).clamp(0, 1)
        grid = forward(model.decoder, corner_weights @ mu, grid_labels).clamp(0, 1)
    strip_path = _out(model, out and Path(out).with_name(Path(out).stem + "_linear.png"), "interpolation_linear")
    grid_path = _out(model, out and Path(out).with_name(Path(out).stem + "_bilinear.png"), "interpolation_bilinear")
    plot_image_grid(strip.numpy(), size, strip_path, f"linear interpolation, step {model.step}")
    plot_image_grid(grid.numpy(), size, grid_path, f"bilinear interpolation of 4 images, step {model.step}")
    return strip_path, grid_path


__all__ = ["bilinear_latents", "bilinear_weights", "interpolate", "load_trained", "reconstruct", "sample"]
