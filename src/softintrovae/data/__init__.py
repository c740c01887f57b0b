"""Data sources. Every source is a stream of batches that can start at any step (for resuming).

2D toy distributions are generated on the fly (:class:`Toy2DStream`, batches are tensors); a file
of points of any dimension is served in shuffled epochs (:class:`PointStream`, batches are tensors);
image datasets are held in memory (:class:`ImageStream`) or, when large, read on demand through a
``DataLoader`` (:class:`LoaderStream`, see :mod:`.streaming`), batches ``(x, y)``; so is any map-style
``Dataset`` a Python caller hands to ``train(..., dataset=...)`` (``data.name: dataset``). What the
trainer needs of a stream is :class:`BatchStream`; :data:`DATASETS` is the registry ``data.name`` is
checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from ..errors import UserError, warn
from .images import FolderImages, ImageStream, LabelledImages, load_digits_28, load_image_folder, load_mnist_family, load_npz, load_torchvision, pad_images
from .points import PointStream, Standardization, load_points
from .streaming import CACHE_MODES, LoaderStream, NpzImages, PaddedImages, UserImages, resolve_cache, resolve_workers
from .toy2d import TOY2D, Toy2DStream
from .translation import TRANSLATION_DATASETS


class BatchStream(Protocol):
    """What the trainer needs of a data source."""

    input_shape: tuple[int, ...]  # one sample's shape, e.g. (2,) or (C, H, W)
    num_classes: int  # 0: unlabelled
    steps_per_epoch: int | None  # None: an endless stream without epochs

    @property
    def source(self) -> Any:
        """The stream evaluation draws real samples from (a wrapper's inner stream)."""

    def batches(self, start_step: int = 0) -> Iterator[Any]:
        """Batch ``start_step``, then the following ones; a batch depends only on (seed, step)."""

    def state_dict(self, step: int) -> dict[str, Any]:
        """Where the stream stands before ``step`` (and what else a checkpoint must keep of it)."""

    def load_state_dict(self, state: dict[str, Any] | None, step: int, resuming: bool = True) -> None:
        """Continue from a checkpoint's :meth:`state_dict` at ``step`` (None: an older checkpoint without
        one); ``resuming`` false: only take what the model needs (evaluating a checkpoint)."""

    def describe(self) -> dict[str, Any]:
        """What the run directory records of the data (``RUN/data.json``)."""


def _root(data, what: str) -> str:
    if data.root is None:
        raise UserError(f"data.name {data.name} needs data.root: the {what} to read")
    return data.root


def _mnist_family(data, split: str) -> LabelledImages:
    return load_mnist_family(data.name, data.root, split)


def _torchvision(data, split: str) -> LabelledImages:
    split = "valid" if data.name == "celeba" and split == "test" else split
    return load_torchvision(data.name, _root(data, "folder torchvision downloaded it to"), split, data.image_size)


# name -> loader(data config, split) of uint8 (N, C, H, W) images and labels (or None)
IMAGE_DATASETS: dict[str, Callable[..., LabelledImages]] = {
    "fashion-mnist": _mnist_family,
    "mnist": _mnist_family,
    "digits": lambda data, split: load_digits_28(),
    "image-folder": lambda data, split: load_image_folder(_root(data, "folder of images"), data.image_size),
    "npz": lambda data, split: load_npz(_root(data, ".npz file")),
    "cifar10": _torchvision,
    "svhn": _torchvision,
    "celeba": _torchvision,
    **TRANSLATION_DATASETS,  # class = identity, content = pose: rendered-objects, cars3d, kth
}
# image sources that have a separate test split (the others evaluate on a fixed sample of training images)
HAS_TEST_SPLIT = {"fashion-mnist", "mnist", "cifar10", "svhn", "celeba", *TRANSLATION_DATASETS}

# image sources that can be read one image at a time: name -> opener(data config) of a map-style dataset
STREAMABLE: dict[str, Callable[..., Any]] = {
    "image-folder": lambda data: FolderImages(_root(data, "folder of images"), data.image_size),
    "npz": lambda data: NpzImages(_root(data, ".npz file")),
}

PYTHON_DATASET = "dataset"  # data.name of a run trained on a Dataset handed over in Python


def _python_dataset(data, split: str = "train"):
    raise UserError(
        "data.name 'dataset' is a torch Dataset given from Python: pass it again, "
        "e.g. resume(run_dir, dataset=...) or evaluate(run_dir, dataset=...)"
    )


DATASETS: dict[str, object] = {**TOY2D, **IMAGE_DATASETS, "points": load_points, PYTHON_DATASET: _python_dataset}


def declared_shape(data_config) -> tuple[tuple[int, int, int] | None, int | None]:
    """(image shape (C, H, W), number of classes) an image source gives, known without reading it;
    None for what only its files tell (an .npz, a folder's class sub-folders, the translation sets)."""
    side = data_config.image_size
    known = {
        "fashion-mnist": ((1, 28, 28), 10),
        "mnist": ((1, 28, 28), 10),
        "digits": ((1, 28, 28), 10),
        "cifar10": ((3, 32, 32), 10),
        "svhn": ((3, 32, 32), 10),
        "celeba": ((3, side, side), 0),
        "image-folder": ((3, side, side), None),
    }
    shape, classes = known.get(data_config.name, (None, None))
    if shape is not None and data_config.pad_to:
        shape = (shape[0], data_config.pad_to, data_config.pad_to)
    return shape, classes


def load_images(data_config, split: str = "train") -> LabelledImages:
    """uint8 images (N, C, H, W) and labels (N,) or None of the image dataset ``data_config.name``
    (zero-padded to ``data.pad_to`` when that is set)."""
    images, labels = IMAGE_DATASETS[data_config.name](data_config, split)
    return (pad_images(images, data_config.pad_to) if data_config.pad_to else images), labels


def build_data(config, rank: int = 0, world_size: int = 1, dataset: Any = None, device: torch.device | None = None) -> BatchStream:
    """The batch stream for ``config.data``; process ``rank`` of ``world_size`` gets its own shard
    (``data.batch_size`` is the batch of one process). ``dataset`` is the map-style Dataset of
    ``data.name: dataset``; ``device`` the training device (batches are pinned in memory for CUDA)."""
    data = config.data
    if data.name in TOY2D:
        return Toy2DStream(data.name, data.batch_size, data.seed, rank)
    if data.name == "points":
        return PointStream(_root(data, "file of points"), data.batch_size, data.seed, rank, world_size, data.standardize)
    if data.name == PYTHON_DATASET or dataset is not None:
        source = UserImages(dataset if dataset is not None else _python_dataset(data))
    elif data.name in STREAMABLE:
        source = STREAMABLE[data.name](data)
        if resolve_cache(data.cache, source.nbytes, data.cache_max_mb) == "memory":
            source = None
    else:
        source = None
        if data.cache == "stream":
            warn(f"data.cache is stream, but {data.name} can only be read whole: it is held in memory")
    if source is None:  # decoded into memory once
        images, labels = load_images(data, "train")
        return ImageStream(images, labels, data.batch_size, data.seed, rank=rank, world_size=world_size)
    if data.pad_to:
        source = PaddedImages(source, data.pad_to)
    pin = device is not None and device.type == "cuda"
    workers = resolve_workers(data.workers, world_size)
    return LoaderStream(source, data.batch_size, data.seed, rank=rank, world_size=world_size, workers=workers, pin_memory=pin)


__all__ = [
    "CACHE_MODES",
    "PYTHON_DATASET",
    "BatchStream",
    "LoaderStream",
    "PointStream",
    "Standardization",
    "DATASETS",
    "HAS_TEST_SPLIT",
    "IMAGE_DATASETS",
    "TOY2D",
    "ImageStream",
    "Toy2DStream",
    "build_data",
    "declared_shape",
    "load_images",
]
