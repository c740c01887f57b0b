"""FID and KID (SPEC §3: generated images quantised to uint8, decoder in eval mode), via torchmetrics.

We extract features ourselves, in batches, with a :class:`~.features.FeatureExtractor`, and hand
them to torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` through an
identity ``feature`` module, so the distances themselves are torchmetrics' code. Extracting
features of the real images is the expensive side and never changes for a dataset, so those are
cached on disk (float64 (N, D)), keyed by dataset, split, count, extractor and image content.

Metric names carry the protocol (stylegan2-ada style): ``fid50k_train_inception``,
``kid10k_test_fmnistnet``. FIDs with ``fmnistnet`` features are not comparable with the paper's.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..errors import UserError, warn
from ..files import atomic_write_bytes
from .features import FeatureExtractor

DEFAULT_CACHE_DIR = Path("~/.cache/softintrovae/real-features")
CACHE_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
KID_SEED = 0  # KID draws random subsets; a fixed seed makes it reproducible


def metric_name(kind: str, n: int, split: str, extractor_name: str) -> str:
    """``fid10k_train_fmnistnet``; counts not divisible by 1000 stay whole (``fid500_train_fmnistnet``)."""
    if kind not in ("fid", "kid"):
        raise UserError(f"metric kind must be fid or kid, got {kind!r}")
    if n < 1:
        raise UserError(f"metric sample count must be >= 1, got {n}")
    count = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"{kind}{count}_{split}_{extractor_name}"


_METRIC_NAME = re.compile(r"^(fid|kid)(\d+)(k?)_(train|test)_([a-z0-9]+)$")


def parse_metric_name(name: str) -> tuple[str, int, str, str]:
    """``fid10k_train_fmnistnet`` → ("fid", 10000, "train", "fmnistnet"), the inverse of :func:`metric_name`."""
    match = _METRIC_NAME.match(name)
    if not match:
        raise UserError(f"metric {name!r} must look like fid10k_train_fmnistnet or kid500_train_fmnistnet")
    kind, count, thousands, split, extractor = match.groups()
    return kind, int(count) * (1000 if thousands else 1), split, extractor


def _check_images(images: Tensor, what: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f"{what} images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(images) < 2:
        raise UserError(f"FID/KID need at least 2 {what} images, got {len(images)}")


@torch.no_grad()
def extract_features(images: Tensor, extractor: FeatureExtractor, batch_size: int = 500) -> Tensor:
    """uint8 images (N, C, H, W) → float64 features (N, D) on the CPU (the extractor is always in eval mode)."""
    device = next(extractor.parameters()).device
    return torch.cat([extractor(batch.to(device)).double().cpu() for batch in images.split(batch_size)])


def _content_hash(images: Tensor) -> str:
    """First 12 hex digits of the sha256 of the images' bytes and shape (two subsets never share a cache)."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def real_features_cache_path(
    cache_dir: str | Path, cache_key: str, images: Tensor, extractor: FeatureExtractor
) -> Path:
    """``<cache_dir>/<cache_key>-n<N>-<extractor name>-<extractor hash>-<images hash>.pt``."""
    if not CACHE_KEY_PATTERN.fullmatch(cache_key):
        raise UserError(
            f"cache key must be letters, digits, '.', '_' or '-' (e.g. fashion-mnist_train), got {cache_key!r}"
        )
    name = f"{cache_key}-n{len(images)}-{extractor.name}-{extractor.hash}-{_content_hash(images)}.pt"
    return Path(cache_dir).expanduser() / name


def cached_real_features(
    real_images: Tensor,
    extractor: FeatureExtractor,
    cache_key: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 500,
) -> Tensor:
    """Features (N, D) float64 of the real images, read from the cache or computed and saved there."""
    path = real_features_cache_path(cache_dir or DEFAULT_CACHE_DIR, cache_key, real_images, extractor)
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache file is recomputed, not an error
            cached = None
        if (
            isinstance(cached, Tensor)
            and cached.dtype == torch.float64
            and cached.shape == (len(real_images), extractor.num_features)
        ):
            return cached
    features = extract_features(real_images, extractor, batch_size)
    try:
        atomic_write_bytes(path, lambda f: torch.save(features, f))
    except OSError as exc:  # a read-only cache only costs the extraction next time
        warn(f"could not cache the real-data features in {str(path)!r} ({exc.strerror or exc})")
    return features


class _PrecomputedFeatures(nn.Identity):
    """The ``feature`` module torchmetrics calls on what ``update`` receives: features already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features


def fid_kid_from_features(real: Tensor, fake: Tensor, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID (mean, std over torchmetrics' 100 subsets) between feature sets (N, D) and (M, D)."""
    identity = _PrecomputedFeatures(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    subset_size = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "KID will save all extracted features": that is the point here
        warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
        kid = KernelInceptionDistance(feature=identity, subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(KID_SEED)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def compute_fid_kid(
    real_images_uint8: Tensor,
    fake_images_uint8: Tensor,
    extractor: FeatureExtractor,
    kid_subset_size: int = 1000,
    batch_size: int = 500,
    cache_key: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, float]:
    """{"fid", "kid_mean", "kid_std"} between uint8 (N, C, H, W) image sets.

    With ``cache_key`` (dataset and split, e.g. ``fashion-mnist_train``) the real features are read
    from / written to ``cache_dir`` (default ``~/.cache/softintrovae/real-features``).
    """
    _check_images(real_images_uint8, "real")
    _check_images(fake_images_uint8, "generated")
    if cache_key is None:
        real = extract_features(real_images_uint8, extractor, batch_size)
    else:
        real = cached_real_features(real_images_uint8, extractor, cache_key, cache_dir, batch_size)
    fake = extract_features(fake_images_uint8, extractor, batch_size)
    return fid_kid_from_features(real, fake, kid_subset_size)


@torch.no_grad()
def generate_images(
    decoder: nn.Module,
    n: int,
    z_dim: int,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    labels: Tensor | None = None,
) -> Tensor:
    """n decoded samples of z ~ N(0, I) as uint8 (n, C, H, W) on the CPU, the decoder in eval mode.

    z comes from a CPU generator seeded with ``seed``, so the samples depend neither on the device,
    the batch size nor the global RNG. ``labels`` (n,) int64 go to a class-conditional decoder as ``decoder(z, y)``.
    Outputs are clamped to [0, 1] and quantised like saved images (SPEC §3); the decoder's previous
    train/eval mode is restored.
    """
    if n < 1:
        raise UserError(f"number of images to generate must be >= 1, got {n}")
    if labels is not None and labels.shape != (n,):
        raise UserError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    # all of z at once: torch draws small and large normal tensors differently, so batch-wise
    # draws would make the samples depend on batch_size
    z_all = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
    was_training = decoder.training
    decoder.eval()
    try:
        batches = []
        for start in range(0, n, batch_size):
            z = z_all[start : start + batch_size].to(device)
            if labels is None:
                x = decoder(z)
            else:
                x = decoder(z, labels[start : start + batch_size].to(device))
            batches.append(x.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())  # (B, C, H, W)
    finally:
        decoder.train(was_training)
    return torch.cat(batches)
