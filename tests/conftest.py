from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

# Small enough that a whole run takes a second or two on a laptop CPU.
TINY = {
    "model.hidden_dim": 16,
    "data.batch_size": 64,
    "train.progress": False,
    "train.eval_every": 0,
    "eval.num_samples": 500,
    "eval.grid_size": 32,
    "eval.elbo_samples": 256,
}


def tiny_overrides(**extra) -> dict:
    """TINY plus extra overrides given as section__key=value keyword arguments."""
    return {**TINY, **{k.replace("__", "."): v for k, v in extra.items()}}


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny tensors: a second intra-op thread only adds synchronisation (and waits on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



class Progress:
    """A stand-in for a tqdm bar: records each ``update(n)``."""

    def __init__(self):
        self.updates = []

    def update(self, n):
        self.updates.append(n)

# ---- tiny image runs ------------------------------------------------------------------------------

IMAGES = 40  # 5 steps per epoch at batch 8


@pytest.fixture
def npz(tmp_path):
    """40 random 8x8 RGB images with labels 0..9, as an .npz."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, images=rng.integers(0, 256, (IMAGES, 8, 8, 3), dtype=np.uint8), labels=rng.integers(0, 10, IMAGES))
    return path


def tiny_image(npz, **extra) -> dict:
    """Overrides of the npz preset for a residual model that trains in a second on ``npz``."""
    return {
        "data.root": str(npz),
        "data.batch_size": 8,
        "model.channels": [4, 8],
        "model.z_dim": 4,
        "method.vae_warmup_steps": 3,
        "train.epochs": 0,  # count train.steps (the npz preset counts epochs)
        "train.progress": False,
        "train.eval_every": 0,
        **{k.replace("__", "."): v for k, v in extra.items()},
    }


def as_cli_sets(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}")]


# ---- IDX files (MNIST's format) ---------------------------------------------------------------------

# The canonical MNIST beside the project (``../shared/data/mnist``); tests that need it skip without it.
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic (0, 0, type code, ndim), big-endian dims, big-endian data."""
    magic = bytes([0, 0, IDX_TYPE_CODES[array.dtype.type], array.ndim])
    dims = np.array(array.shape, dtype=">u4").tobytes()
    return magic + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist_files(root: Path, prefix: str, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


# ---- tiny style-based runs ---------------------------------------------------------------------------


def write_npz(path, n=48, size=16):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.integers(3, size - 3, size=(n, 2))
    images = ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2 < 9) * 255
    np.savez(path, images=images.astype(np.uint8))
    return path


def style_overrides(npz, **extra):
    return {
        "data.name": "npz",
        "data.root": str(npz),
        "data.pad_to": 0,
        "data.batch_size": 8,
        "model.channels": [8, 8, 4],
        "model.z_dim": 8,
        "model.mapping_layers": 2,
        "growth.unit": "images",
        "growth.per_level": [32, 48, 48],
        "growth.blend": [24],
        "growth.batch_sizes": [8, 8, 4],
        "growth.beta_neg": [64, 32, 16],
        "method.vae_warmup_steps": 2,
        "train.progress": False,
        "train.checkpoint_every": 1000,
        "train.log_every": 2,
        "train.ema_half_life": 64,
        **extra,
    }


# ---- imported runs ------------------------------------------------------------------------------------


def use_with_every_command(run, tmp_path, image_hwc: tuple[int, int, int]) -> None:
    """sample, reconstruct, interpolate (on 4 random images), a 3-sample npz dump and export
    (to ``tmp_path / "model.safetensors"``) of ``run``, each with exit status 0."""
    from softintrovae.cli import main

    images = tmp_path / "images.npz"
    np.savez(images, images=np.random.default_rng(0).integers(0, 256, (4, *image_hwc), dtype=np.uint8))
    for argv in (
        ["sample", str(run), "-n", "4"],
        ["reconstruct", str(run), "-n", "4", "--images", str(images)],
        ["interpolate", str(run), "--size", "3", "--images", str(images)],
        ["sample", str(run), "--n", "3", "--format", "npz", "--out", str(tmp_path / "samples.npz")],
        ["export", str(run), "--out", str(tmp_path / "model.safetensors")],
    ):
        assert main(argv) == 0, argv
    assert np.load(tmp_path / "samples.npz")["images"].shape == (3, *image_hwc)
