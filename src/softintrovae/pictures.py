"""Pictures from a trained image run: prior samples, reconstructions and latent interpolations.

All of them load the run through :meth:`~softintrovae.checkpoint.TrainedModel.load` and decode in
eval mode (BatchNorm uses its running statistics), with their own seeded generators, so the same
command draws the same picture. Images to reconstruct or interpolate between come from ``images``
(an .npz, a folder of images, or a tensor) or, by default, from the run's training data. A
class-conditional model samples classes 0, 1, ..., K−1 in turn and reconstructs each image with its
own label; an interpolated latent takes the label of its nearest end point or corner.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import TrainedModel, as_trained, require_images
from .data import build_data, load_image_folder, load_npz
from .errors import UserError
from .files import check_writable
from .plots import plot_image_grid

Images = str | Path | Tensor | tuple[Tensor, Tensor | None] | None


def read_images(source: str | Path, image_shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """uint8 images and labels from an .npz or a folder of images, which must have ``image_shape``."""
    path = Path(source)
    if path.is_dir():
        images, labels = load_image_folder(path, image_shape[-1], channels=image_shape[0])
    else:
        images, labels = load_npz(path)
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise UserError(f"{str(path)!r} has {'x'.join(map(str, images.shape[1:]))} images, but the model takes {'x'.join(map(str, image_shape))}")
    return images, labels


def pick_images(model: TrainedModel, n: int, seed: int, images: Images = None) -> tuple[Tensor, Tensor | None]:
    """n float images in [0, 1] and, for a conditional model, their labels (else None): the first n of
    ``images`` when given, else n random training images of the run (its data must be on this machine)."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    if images is None:
        try:
            data = build_data(model.config)
        except UserError as exc:
            raise UserError(f"{exc}; give the images to use with --images (an .npz or a folder)") from None
        x, y = data.sample_labelled(n, torch.Generator().manual_seed(seed))
    else:
        if isinstance(images, (str, Path)):
            images = read_images(images, model.input_shape)
        x, y = images if isinstance(images, tuple) else (images, None)
        if len(x) < n:
            raise UserError(f"{n} images are needed, {len(x)} were given")
        x, y = x[:n], None if y is None else y[:n]
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    if model.num_classes and y is None:
        raise UserError(f"this model is class-conditional ({model.num_classes} classes): the images need labels")
    return x, y.long() if model.num_classes else None


def picture_path(model: TrainedModel, out: str | Path | None, name: str) -> Path:
    """``out``, or RUN/pictures/NAME_stepN.png; one line if it cannot be written (checked before drawing)."""
    if out:
        return check_writable(out, "picture")
    folder = model.run_dir if model.run_dir is not None else model.checkpoint.parent
    return check_writable(folder / "pictures" / f"{name}_step{model.step:07d}.png", "picture")


def sample(path: TrainedModel | str | Path, n: int = 64, seed: int = 0, out: str | Path | None = None) -> Path:
    """``n`` decoded prior samples z ~ N(0, I) as a grid."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    model = as_trained(path)
    require_images(model, "sample draws images (its samples.png and density.png are drawn by evaluate)")
    path = picture_path(model, out, "samples")
    images = model.sample(n, generator=torch.Generator().manual_seed(seed)).clamp(0, 1).cpu()
    return plot_image_grid(images.numpy(), min(8, n), path, f"{n} samples, step {model.step}")


def reconstruct(path: TrainedModel | str | Path, n: int = 16, seed: int = 0, out: str | Path | None = None, images: Images = None) -> Path:
    """``n`` images beside their reconstructions D(μ(x)): real | reconstruction pairs."""
    model = as_trained(path)
    require_images(model, "reconstruct draws images (its samples.png and density.png are drawn by evaluate)")
    path = picture_path(model, out, "reconstructions")
    real, labels = pick_images(model, n, seed, images)
    rec = model.reconstruct(real, labels).clamp(0, 1).cpu()
    pairs = torch.stack([real, rec], dim=1).flatten(0, 1)  # real, rec, real, rec, ...
    return plot_image_grid(pairs.numpy(), 8, path, f"real | reconstruction, step {model.step}")


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


def interpolate(
    path: TrainedModel | str | Path, seed: int = 0, size: int = 8, out: str | Path | None = None, images: Images = None
) -> tuple[Path, Path]:
    """A linear strip between two images' latents and the 4-corner bilinear grid; returns both PNGs."""
    if size < 2:
        raise UserError(f"--size must be >= 2, got {size}")
    model = as_trained(path)
    require_images(model, "interpolate draws images (its samples.png and density.png are drawn by evaluate)")
    strip_path = picture_path(model, out and Path(out).with_name(Path(out).stem + "_linear.png"), "interpolation_linear")
    grid_path = picture_path(model, out and Path(out).with_name(Path(out).stem + "_bilinear.png"), "interpolation_bilinear")
    corners, labels = pick_images(model, 4, seed, images)
    weights = torch.linspace(0, 1, size).view(-1, 1)
    corner_weights = bilinear_weights(size)
    strip_labels = grid_labels = None
    if labels is not None:  # each point takes the class of the end point / corner it is nearest to
        strip_labels = labels[(weights.view(-1) > 0.5).long()]
        grid_labels = labels[corner_weights.argmax(dim=1)]
    mu = model.encode(corners, labels)[0].cpu()
    strip = model.decode(mu[0] * (1 - weights) + mu[1] * weights, strip_labels).clamp(0, 1).cpu()
    grid = model.decode(corner_weights @ mu, grid_labels).clamp(0, 1).cpu()
    plot_image_grid(strip.numpy(), size, strip_path, f"linear interpolation, step {model.step}")
    plot_image_grid(grid.numpy(), size, grid_path, f"bilinear interpolation of 4 images, step {model.step}")
    return strip_path, grid_path


__all__ = ["as_trained", "bilinear_latents", "bilinear_weights", "interpolate", "pick_images", "picture_path", "read_images", "require_images", "reconstruct", "sample"]
