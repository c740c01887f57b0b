"""Image data for the image experiments (SPEC §3, §4), read offline, and a resumable batch stream.

Every loader returns ``(images, labels)``: images a uint8 tensor (N, C, H, W), labels an int64
tensor (N,) or None. Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``; sklearn's 8×8
digits, resized to 28×28, are the MNIST-like out-of-distribution set; anything else is a folder of
images, an ``.npz`` archive, or a torchvision dataset already on disk (torchvision is optional).
"""

from __future__ import annotations

import gzip
import math
import zlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .sampling import ImageEpochStream

LabelledImages = tuple[Tensor, Tensor | None]  # images (N, C, H, W) uint8, labels (N,) int64 or None

# IDX type codes (the third byte of the magic number) → big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FAMILY_DEFAULT_ROOTS = {
    "mnist": Path("/usr/share/datasets/mnist"),
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (the MNIST format), gzipped or not, in native byte order."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise UserError(f"IDX file {str(path)!r} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"IDX file {str(path)!r} is not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise UserError(f"IDX file {str(path)!r} has a wrong magic number {raw[:4].hex()!r}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {str(path)!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"IDX file {str(path)!r} holds {len(raw)} bytes, its header {shape} says {expected}")
    # astype copies into a writable, native-order array (np.frombuffer's view is read-only)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist_family(name: str, root: str | Path | None = None, split: str = "train") -> LabelledImages:
    """MNIST or Fashion-MNIST from the standard IDX files: images (N, 1, 28, 28) uint8, labels (N,)."""
    if name not in MNIST_FAMILY_DEFAULT_ROOTS:
        raise UserError(f"dataset must be one of {', '.join(MNIST_FAMILY_DEFAULT_ROOTS)}, got {name!r}")
    if split not in ("train", "test"):
        raise UserError(f"{name} split must be train or test, got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    if root is None:
        root = MNIST_FAMILY_DEFAULT_ROOTS[name]
        if not (root / f"{prefix}-images-idx3-ubyte.gz").is_file():
            raise UserError(
                f"{name} not found in {root} (looked for {prefix}-images-idx3-ubyte.gz): set data.root "
                f"to the folder holding the IDX files"
            )
    root = _idx_folder(Path(root), name, prefix)
    images = read_idx(_idx_path(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_path(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{name} files in {root} do not match: images {images.shape} {images.dtype}, labels {labels.shape}"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _idx_folder(root: Path, name: str, prefix: str) -> Path:
    """The folder of the IDX files: ``root`` itself, or torchvision's ``root/MNIST/raw`` /
    ``root/FashionMNIST/raw`` (or ``root/raw``) when ``root`` is the folder torchvision downloaded to."""
    for folder in (root, root / TORCHVISION_FOLDERS[name] / "raw", root / "raw"):
        if _idx_path(folder, f"{prefix}-images-idx3-ubyte").exists():
            return folder
    return root


def _idx_path(root: Path, stem: str) -> Path:
    """``stem.gz`` if present, else the uncompressed ``stem`` (read_idx names whichever is missing)."""
    gzipped = root / f"{stem}.gz"
    return gzipped if gzipped.exists() or not (root / stem).exists() else root / stem


def load_digits_28() -> LabelledImages:
    """sklearn's 1,797 8×8 digits as MNIST-like uint8 (N, 1, 28, 28) images (values 0..16 → 0..255)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8)
    large = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return large.round().clamp(0, 255).to(torch.uint8), torch.as_tensor(digits.target, dtype=torch.int64)


def load_image_folder(root: str | Path, size: int, channels: int = 3) -> LabelledImages:
    """PNG/JPEG files under ``root`` (recursively), short side resized to ``size``, centre-cropped,
    all decoded into memory (:class:`FolderImages` reads them one at a time instead).

    Labels are the sorted class sub-folder indices when every image sits in a direct sub-folder of
    ``root``, else None.
    """
    folder = FolderImages(root, size, channels)
    images = torch.from_numpy(np.stack([folder.read(i) for i in range(len(folder))]))
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2).contiguous()
    return images, folder.labels


class FolderImages:
    """The PNG/JPEG files under ``root`` (recursively) as a map-style dataset: item i is
    (uint8 (C, size, size) tensor, label or −1), decoded when asked for, so memory does not grow
    with the number of files. Labels are the sorted class sub-folder indices when every image sits
    in a direct sub-folder of ``root``, else there are none (``labels`` None)."""

    def __init__(self, root: str | Path, size: int, channels: int = 3):
        root = Path(root)
        if channels not in (1, 3):
            raise UserError(f"image folder channels must be 1 or 3, got {channels}")
        if size < 1:
            raise UserError(f"image size must be >= 1, got {size}")
        if not root.is_dir():
            raise UserError(f"image folder {str(root)!r} does not exist")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise UserError(f"image folder {str(root)!r} holds no .png/.jpg/.jpeg files")
        self.size, self.channels, self.mode = size, channels, "RGB" if channels == 3 else "L"
        self.labels: Tensor | None = None
        if all(p.parent.parent == root for p in self.files):
            classes = sorted({p.parent.name for p in self.files})
            index = {name: i for i, name in enumerate(classes)}
            self.labels = torch.tensor([index[p.parent.name] for p in self.files], dtype=torch.int64)
        self.shape = (channels, size, size)  # one image's
        self.num_classes = 0 if self.labels is None else int(self.labels.max()) + 1
        self.nbytes = len(self.files) * channels * size * size  # decoded
        self.description = f"image folder {root.name}, {size}x{size}"

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        """Image i as uint8 (size, size[, 3])."""
        return _read_square_image(self.files[i], self.size, self.mode)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(self.read(i))
        image = image.unsqueeze(0) if self.channels == 1 else image.permute(2, 0, 1)
        return image.contiguous(), -1 if self.labels is None else int(self.labels[i])


def _read_square_image(path: Path, size: int, mode: str) -> np.ndarray:
    """One image as uint8 (size, size[, 3]): short side resized to ``size``, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)  # converting decodes the whole file, so errors surface here
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {str(path)!r}: {exc}") from None
    scale = size / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)))  # a writable copy


def load_npz(path: str | Path, key: str | None = None) -> LabelledImages:
    """Images from an ``.npz``: (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in [0, 1].

    A second axis of size 1 or 3 is read as channels-first. The images array is ``key``, else
    ``images`` or ``x``; labels, optional, are ``labels`` or ``y``.
    """
    path = Path(path)
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            image_key, label_key = npz_keys(archive.files, key, path)
            images = archive[image_key]
            labels = archive[label_key] if label_key else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"npz file {str(path)!r} is not a readable .npz archive ({exc})") from None
    return _images_to_nchw_uint8(images, str(path)), _labels_to_int64(labels, len(images), str(path))


def check_npz_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"npz file {str(path)!r} not found")
    if not zipfile.is_zipfile(path):  # np.load would return a plain array for .npy, or try pickle on garbage
        raise UserError(f"npz file {str(path)!r} is not an .npz (zip) archive")


def npz_keys(files: list[str], key: str | None, path: Path) -> tuple[str, str | None]:
    """(the images array's name: ``key``, else ``images`` or ``x``; the labels' name, ``labels`` or ``y``, or None)."""
    names = [key] if key is not None else ["images", "x"]
    found = [n for n in names if n in files]
    if not found:
        raise UserError(f"{str(path)!r} has no array named {' or '.join(names)} (it has {files})")
    return found[0], next((n for n in ("labels", "y") if n in files), None)


def image_layout(shape: tuple[int, ...], dtype: np.dtype, source: str) -> str:
    """How an array of images is laid out, ``nhw``, ``nhwc`` or ``nchw`` (a second axis of size 1 or 3
    is read as channels-first), after checking its dtype is uint8 or float."""
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise UserError(f"images in {source!r} must be uint8 or float in [0, 1], got {dtype}")
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[3] in (1, 3):
        return "nhwc"
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise UserError(f"images in {source!r} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, got {tuple(shape)}")
    return "nchw"


def nchw_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """One image's (C, H, W) in an array of ``shape`` laid out as ``layout``."""
    if layout == "nhw":
        return (1, *shape[1:3])
    return (shape[3], *shape[1:3]) if layout == "nhwc" else tuple(shape[1:4])


def _images_to_nchw_uint8(images: np.ndarray, source: str, layout: str | None = None) -> Tensor:
    layout = layout or image_layout(images.shape, images.dtype, source)
    if layout == "nhw":
        images = images[:, None]
    elif layout == "nhwc":
        images = images.transpose(0, 3, 1, 2)
    if np.issubdtype(images.dtype, np.floating):
        if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise UserError(f"float images in {source!r} must lie in [0, 1]")
        images = np.rint(images * 255)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))


def _labels_to_int64(labels: np.ndarray | None, count: int, source: str) -> Tensor | None:
    if labels is None:
        return None
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise UserError(
            f"labels in {source!r} must be {count} non-negative integers, got {labels.shape} {labels.dtype}"
        )
    return torch.from_numpy(labels.astype(np.int64))


def centred_padding(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``F.pad``'s (left, right, top, bottom) that centre a height x width image in size x size."""
    if height > size or width > size:
        raise UserError(f"data.pad_to {size} is smaller than the images ({height}x{width})")
    top, left = (size - height) // 2, (size - width) // 2
    return left, size - width - left, top, size - height - top


def pad_images(images: Tensor, size: int) -> Tensor:
    """Zero-pad (N, C, H, W) images, centred, to size x size."""
    return F.pad(images, centred_padding(*images.shape[-2:], size))


TORCHVISION_SPLITS = {
    "cifar10": ("train", "test"),
    "svhn": ("train", "test"),
    "celeba": ("train", "valid", "test", "all"),
}


def load_torchvision(name: str, root: str | Path, split: str = "train", size: int = 64) -> LabelledImages:
    """CIFAR-10, SVHN or CelebA already downloaded under ``root``, through torchvision (optional).

    CelebA (178×218 faces) is centre-cropped and resized to ``size``; it has no class labels.
    """
    if name not in TORCHVISION_SPLITS:
        raise UserError(f"torchvision dataset must be one of {', '.join(TORCHVISION_SPLITS)}, got {name!r}")
    if split not in TORCHVISION_SPLITS[name]:
        raise UserError(f"{name} split must be one of {', '.join(TORCHVISION_SPLITS[name])}, got {split!r}")
    try:
        import torchvision.datasets as tv_datasets
    except Exception:  # a torchvision built for another torch fails with RuntimeError/OSError, not only ImportError
        raise UserError(f"dataset {name!r} needs torchvision: pip install 'softintrovae[vision]'") from None
    try:
        if name == "cifar10":
            dataset = tv_datasets.CIFAR10(str(root), train=split == "train", download=False)
            return _images_to_nchw_uint8(dataset.data, name), torch.tensor(dataset.targets, dtype=torch.int64)
        if name == "svhn":
            dataset = tv_datasets.SVHN(str(root), split=split, download=False)
            return torch.from_numpy(dataset.data), torch.from_numpy(dataset.labels.astype(np.int64))
        dataset = tv_datasets.CelebA(str(root), split=split, target_type=[], download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise UserError(f"{name} not found under {str(root)!r}: {exc}") from None
    except ImportError as exc:  # SVHN's .mat files need scipy
        raise UserError(f"dataset {name!r} needs {exc.name}: pip install {exc.name}") from None
    folder = Path(dataset.root, dataset.base_folder, "img_align_celeba")
    images = np.stack([_read_square_image(folder / f, size, "RGB") for f in dataset.filename])  # (N, H, W, 3)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), None


class ImageStream(ImageEpochStream):
    """Shuffled mini-batches of images held in memory as uint8, served as floats in [0, 1]; batch ``k``
    depends only on (seed, k), so resuming is exact (the order: :class:`~softintrovae.data.sampling.EpochStream`)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise UserError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape != images.shape[:1]:
            raise UserError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        super().__init__(len(images), batch_size, seed, drop_last, rank, world_size)
        self.images = images  # (N, C, H, W) uint8: a quarter of the memory of floats
        self.labels = None if labels is None else labels.long()
        self.input_shape = tuple(images.shape[1:])
        # labels are class indices 0..K-1, so K = max + 1 (the number of distinct labels when none is unused)
        self.num_classes = 0 if labels is None else int(labels.max()) + 1

    def take(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the images ``index`` as float32 in [0, 1], their labels or None)."""
        return self.images[index].float().div_(255), None if self.labels is None else self.labels[index]

    def real_images(self, limit: int | None = None) -> Tensor:
        """The training images as uint8 (N, C, H, W) for FID/KID: all of them (they are in memory)."""
        return self.images

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cache": "memory", "memory_mb": round(self.images.nbytes / 2**20, 1)}
