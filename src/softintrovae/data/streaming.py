"""Image data read on demand: map-style datasets served through a ``DataLoader`` in the order of
:class:`~softintrovae.data.sampling.EpochStream`, so memory does not grow with the dataset.

Sources that can be read one image at a time — a folder of images (:class:`~softintrovae.data.images.FolderImages`),
an ``.npz`` whose images array is stored uncompressed (:class:`NpzImages`, memory-mapped), or any
map-style ``torch.utils.data.Dataset`` a Python caller hands over (:class:`UserImages`) — stream
through worker processes (pinned memory on CUDA). Which images a step gets is still a pure function
of (seed, step), decided in the main process, so workers change the speed and never the batches.
Small datasets are faster held in memory: ``data.cache`` ``auto`` (default) holds a source in memory
when its decoded size fits ``data.cache_max_mb`` and a quarter of the free memory, ``memory`` /
``stream`` force either.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import UserError, warn
from .images import _images_to_nchw_uint8, _labels_to_int64, centred_padding, check_npz_file, image_layout, nchw_shape, npz_keys
from .sampling import ImageEpochStream, IndexPlan, seed_key

CACHE_MODES = ("auto", "memory", "stream")
ImageItem = tuple[Tensor, int]  # (C, H, W) uint8 or float image, label (−1: none)


def collate_images(items: Sequence[ImageItem]) -> tuple[Tensor, Tensor | None]:
    """(x (B, C, H, W) float32 in [0, 1], y (B,) int64 or None) from dataset items."""
    images = torch.stack([x for x, _ in items])
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    labels = [y for _, y in items]
    return x, None if labels[0] < 0 else torch.tensor(labels, dtype=torch.int64)


def free_memory_bytes() -> int | None:
    """Memory the system could give now: Linux's MemAvailable (free memory and reclaimable cache),
    else the free pages; None where the platform says neither."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_cache(setting: str, nbytes: int, max_mb: int) -> str:
    """``memory`` or ``stream`` for a source of ``nbytes`` decoded bytes (``setting`` ``auto`` decides)."""
    if setting != "auto":
        return setting
    limit = max_mb * 2**20
    free = free_memory_bytes()
    if free is not None:
        limit = min(limit, free // 4)
    return "memory" if nbytes <= limit else "stream"


def resolve_workers(setting: int | None, world_size: int = 1) -> int:
    """``data.workers``, or for None half the CPUs this process may use, shared by the processes of
    the job (at least 1, at most 8)."""
    if setting is not None:
        return setting
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // (2 * world_size)))


class NpzImages:
    """The images array of an ``.npz`` as a map-style dataset, memory-mapped when the archive stores
    it uncompressed (``np.savez``); a compressed one (``np.savez_compressed``) cannot be mapped and is
    read into memory. Items are (uint8 (C, H, W), label or −1)."""

    RELEASE_EVERY = 256  # items read between returning the mapped pages to the page cache

    def __init__(self, path: str | Path, key: str | None = None):
        self.path = path = Path(path)
        check_npz_file(path)
        try:
            with zipfile.ZipFile(path) as archive:
                members = {info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")}
                image_key, label_key = npz_keys(sorted(members), key, path)
                info = members[image_key]
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise UserError(f"npz file {str(path)!r}: .npy format version {version} is not supported")
                    shape, fortran_order, dtype = read_header(f)
                    header_size = f.tell()
            labels = np.load(path, allow_pickle=False)[label_key] if label_key else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"npz file {str(path)!r} is not a readable .npz archive ({exc})") from None
        if dtype.hasobject:  # what np.load refuses without allow_pickle
            raise UserError(f"npz file {str(path)!r} is not a readable .npz archive (it holds Python objects, which are never unpickled)")
        self.layout = image_layout(shape, dtype, str(path))
        self.shape = nchw_shape(shape, self.layout)  # one image's
        self.length = shape[0]
        self.labels = _labels_to_int64(labels, self.length, str(path))
        self.num_classes = 0 if self.labels is None else int(self.labels.max()) + 1
        self.nbytes = self.length * int(np.prod(self.shape))  # decoded as uint8
        self.mapped = info.compress_type == zipfile.ZIP_STORED and not fortran_order
        self._key, self._array_shape, self._dtype = image_key, tuple(shape), dtype
        self._offset = self._data_offset(info) + header_size if self.mapped else None
        self._array: np.ndarray | None = None
        self._map: mmap.mmap | None = None
        self._reads = 0
        self.description = f"{path.name}, {'memory-mapped' if self.mapped else 'compressed, read into memory'}"

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where the member's bytes start in the file: after its local header (30 bytes, name, extra)."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
        name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        return info.header_offset + 30 + name_length + extra_length

    def array(self) -> np.ndarray:
        """The images array as stored: mapped (opened on first use, in each worker process) or read whole."""
        if self._array is None:
            if self.mapped:
                with open(self.path, "rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                count = int(np.prod(self._array_shape))
                self._array = np.frombuffer(self._map, self._dtype, count, self._offset).reshape(self._array_shape)
            else:
                with np.load(self.path, allow_pickle=False) as archive:
                    self._array = archive[self._key]
        return self._array

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> ImageItem:
        image = _images_to_nchw_uint8(self.array()[i : i + 1], str(self.path), self.layout)[0]
        self._reads += 1
        if self._map is not None and self._reads % self.RELEASE_EVERY == 0:
            self._map.madvise(mmap.MADV_DONTNEED)  # the pages stay in the page cache, out of this process's RSS
        return image, -1 if self.labels is None else int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:  # worker processes started by spawn map the file themselves
        return {**self.__dict__, "_array": None, "_map": None}


def as_image_tensor(value: Any) -> Tensor:
    """A user dataset's image as a (C, H, W) tensor: a tensor or array (C, H, W) or (H, W), or a PIL image."""
    if hasattr(value, "getbands"):  # a PIL image: (H, W[, C]) uint8
        array = np.asarray(value)
        value = torch.from_numpy(array.copy()).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array.copy())
    elif isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise UserError(f"the dataset's items must be image tensors (C, H, W), got {type(value).__name__}")
    if value.ndim == 2:
        value = value.unsqueeze(0)
    if value.ndim != 3:
        raise UserError(f"the dataset's images must be (C, H, W) or (H, W), got shape {tuple(value.shape)}")
    if value.dtype != torch.uint8 and not value.is_floating_point():
        raise UserError(f"the dataset's images must be uint8 or float in [0, 1], got {value.dtype}")
    return value


class UserImages:
    """Any map-style dataset whose items are an image — a (C, H, W) tensor, uint8 or float in [0, 1]
    — or an (image, label) pair, as items (image, label or −1).

    The number of classes is the dataset's ``num_classes``, else ``len(classes)``, else
    ``max(targets) + 1`` (torchvision's conventions), else 0.
    """

    def __init__(self, dataset: Any):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise UserError(f"the dataset must be a map-style torch.utils.data.Dataset (__len__ and __getitem__), got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise UserError("the dataset is empty (no images)")
        self.dataset = dataset
        image, label = self[0]
        self.shape, self.labelled = tuple(image.shape), label >= 0
        self.num_classes = self._num_classes(dataset) if self.labelled else 0
        self.nbytes = len(dataset) * image.numel()
        self.description = f"{type(dataset).__module__}.{type(dataset).__qualname__}"

    @staticmethod
    def _num_classes(dataset: Any) -> int:
        if isinstance(getattr(dataset, "num_classes", None), int):
            return dataset.num_classes
        if getattr(dataset, "classes", None) is not None:
            return len(dataset.classes)
        targets = getattr(dataset, "targets", None)
        return int(max(int(t) for t in targets)) + 1 if targets is not None and len(targets) else 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> ImageItem:
        item = self.dataset[i]
        image, label = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        return as_image_tensor(image), -1 if label is None else int(label)


class PaddedImages:
    """A dataset's images zero-padded, centred, to size x size (``data.pad_to``)."""

    def __init__(self, dataset: Any, size: int):
        self.dataset, self.padding = dataset, centred_padding(*dataset.shape[-2:], size)
        self.shape = (dataset.shape[0], size, size)
        self.num_classes, self.nbytes = dataset.num_classes, len(dataset) * int(np.prod(self.shape))
        self.description = f"{dataset.description}, padded to {size}x{size}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> ImageItem:
        image, label = self.dataset[i]
        return F.pad(image, self.padding), label


class _StepBatches:
    """The ``DataLoader`` batch sampler: the indices of step ``start``, ``start + 1``, ... (endless)."""

    def __init__(self, plan: IndexPlan, start: int):
        self.plan, self.start = plan, start

    def __iter__(self) -> Iterator[list[int]]:
        for step in count(self.start):
            yield self.plan(step).tolist()


class LoaderStream(ImageEpochStream):
    """Batches of a map-style image dataset read by a ``DataLoader`` (``workers`` processes, pinned
    memory when ``pin_memory``), in the order of :class:`EpochStream`: batch ``k`` depends only on
    (seed, k), whatever the number of workers. Items are (image (C, H, W), label or −1)."""

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, pin_memory: bool = False, drop_last: bool = True):  # fmt: skip
        super().__init__(len(dataset), batch_size, seed, drop_last, rank, world_size)
        self.dataset, self.workers, self.pin_memory = dataset, workers, pin_memory
        self.input_shape = tuple(dataset.shape)
        self.num_classes = dataset.num_classes

    def take(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The images ``index`` read in this process (evaluation, pictures)."""
        return collate_images([self.dataset[i] for i in index.tolist()])

    def batches(self, start_step: int = 0, plan: IndexPlan | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
        loader = DataLoader(
            self.dataset,
            batch_sampler=_StepBatches(plan or self.batch_index, start_step),
            num_workers=self.workers,
            collate_fn=collate_images,
            pin_memory=self.pin_memory,
            # its own generator: creating the loader must not draw from the training's random state
            generator=torch.Generator().manual_seed(seed_key(self.seed, start_step, self.rank)),
        )
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            del iterator  # stops the worker processes

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cache": "stream", "source": self.dataset.description, "workers": self.workers,
                "pin_memory": self.pin_memory, "decoded_mb": round(self.dataset.nbytes / 2**20, 1)}  # fmt: skip

    def real_images(self, limit: int | None = None) -> Tensor:
        """A fixed random subset of ``limit`` training images (all when None) as uint8, for FID/KID."""
        count = self.size if limit is None else min(limit, self.size)
        x, _ = self.take(self.sample_index(count, torch.Generator().manual_seed(0)))
        return x.mul(255).round_().to(torch.uint8)


__all__ = [
    "CACHE_MODES",
    "LoaderStream",
    "NpzImages",
    "PaddedImages",
    "UserImages",
    "as_image_tensor",
    "collate_images",
    "resolve_cache",
    "resolve_workers",
]
