"""Sample dumps: many prior samples of a trained image model as uint8 images, for external FID tools.

``softintrovae sample RUN --n 50000 --format npz|png`` writes what clean-fid, torch-fidelity and
pytorch-fid read: an ``.npz`` with ``images`` (N, H, W, C) uint8 (C = 1 for gray images) and, for a
class-conditional model, ``labels`` (N,) int64; or a folder of numbered PNG files (``000000.png``,
...; with ``labels.txt``, one class a line, for a conditional model).

Sample i decodes the latent z_i drawn from a generator seeded by (seed, i // BLOCK), so the same
seed gives the same images whatever the batch size, and a conditional model's class is i mod K:
classes 0, 1, ..., K−1 in turn, balanced to within one image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .checkpoint import TrainedModel, as_trained, require_images
from .errors import UserError
from .files import atomic_write_bytes
from .models import class_labels

FORMATS = ("npz", "png")
BLOCK = 1024  # latents are drawn in blocks of this many samples, each block from its own seed


def _block_latents(seed: int, block: int, z_dim: int) -> Tensor:
    block_seed = int(np.random.SeedSequence([seed, block]).generate_state(1)[0])
    return torch.randn(BLOCK, z_dim, generator=torch.Generator().manual_seed(block_seed))


def prior_latents(seed: int, start: int, stop: int, z_dim: int) -> Tensor:
    """z (stop − start, z_dim) of samples start, ..., stop − 1; sample i's depends only on (seed, i)."""
    first, last = start // BLOCK, (stop - 1) // BLOCK
    z = torch.cat([_block_latents(seed, block, z_dim) for block in range(first, last + 1)])
    return z[start - first * BLOCK : stop - first * BLOCK]


def to_uint8(images: Tensor) -> np.ndarray:
    """Decoder outputs (B, C, H, W), clamped to [0, 1], as uint8 (B, H, W, C)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def generate(model: TrainedModel, n: int, seed: int = 0, batch_size: int = 256, progress: bool = True):
    """Yield (uint8 images (B, H, W, C), labels (B,) or None) of samples 0, ..., n − 1, in batches."""
    labels = class_labels(n, model.num_classes)
    with tqdm(total=n, unit="img", desc="sampling", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch_labels = None if labels is None else labels[start:stop]
            images = model.decode(prior_latents(seed, start, stop, model.latents.z_dim), batch_labels)
            yield to_uint8(images), None if batch_labels is None else batch_labels.numpy()
            bar.update(stop - start)


def _write_npz(path: Path, batches) -> None:
    images, labels = zip(*batches)
    arrays = {"images": np.concatenate(images)}
    if labels[0] is not None:
        arrays["labels"] = np.concatenate(labels).astype(np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def _write_pngs(folder: Path, batches, n: int) -> None:
    from PIL import Image

    digits = max(6, len(str(n - 1)))
    folder.mkdir(parents=True, exist_ok=True)
    index, classes = 0, []
    for images, labels in batches:
        for image in images:
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{index:0{digits}d}.png")
            index += 1
        if labels is not None:
            classes.extend(labels.tolist())
    if classes:
        (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))


def _check_out(out: Path, format: str) -> None:
    if format == "png" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} exists and is not an empty folder: give a new folder for the PNG files")
    if format == "npz" and out.suffix != ".npz":
        raise UserError(f"the .npz dump's path must end in .npz, got {str(out)!r}")


def dump_samples(
    model: TrainedModel | str | Path, n: int, out: str | Path | None = None, format: str = "npz", seed: int = 0,
    batch_size: int = 256, progress: bool = True, device: str | torch.device | None = None,
) -> Path:  # fmt: skip
    """Write ``n`` prior samples of ``model`` (a :class:`TrainedModel`, or a run to load) to ``out``,
    an .npz file or a folder of PNGs (``format``), decoding on ``device`` (default: where the model
    is); returns ``out``, by default ``RUN/samples/n{n}_seed{seed}_step{step}[.npz]``."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if n < 1 or batch_size < 1:
        raise UserError(f"the number of samples and the batch size must be >= 1, got {n} and {batch_size}")
    if out is not None:
        _check_out(Path(out), format)  # before loading: a bad path costs nothing
    model = as_trained(model)
    require_images(model, "sample dumps draw images (its samples.png and density.png are drawn by evaluate)")
    if device is not None:
        model.to(device)
    if out is None:
        folder = model.run_dir if model.run_dir is not None else model.checkpoint.parent
        out = folder / "samples" / f"n{n}_seed{seed}_step{model.step:07d}{'.npz' if format == 'npz' else ''}"
        _check_out(out, format)
    out = Path(out)
    batches = generate(model, n, seed, batch_size, progress)
    if format == "npz":
        _write_npz(out, batches)
    else:
        _write_pngs(out, batches, n)
    return out


__all__ = ["FORMATS", "dump_samples", "generate", "prior_latents", "to_uint8"]
