"""Data sources. Every source is a stream of batches that can start at any step (for resuming).

2D toy distributions are generated on the fly (:class:`Toy2DStream`, batches are tensors); image
datasets are read once into memory (:class:`ImageStream`, batches are ``(x, y)``). What the trainer
needs of a stream is :class:`BatchStream`; :data:`DATASETS` is the registry ``data.name`` is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from ..errors import UserError
from .images import ImageStream, LabelledImages, load_digits_28, load_image_folder, load_mnist_family, load_npz, load_torchvision
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

DATASETS: dict[str, object] = {**TOY2D, **IMAGE_DATASETS}


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


def pad_images(images, size: int):
    """Zero-pad (N, C, H, W) images, centred, to size x size."""
    height, width = images.shape[-2:]
    if height > size or width > size:
        raise UserError(f"data.pad_to {size} is smaller than the images ({height}x{width})")
    top, left = (size - height) // 2, (size - width) // 2
    return torch.nn.functional.pad(images, (left, size - width - left, top, size - height - top))


def build_data(config, rank: int = 0, world_size: int = 1) -> Toy2DStream | ImageStream:
    """The batch stream for ``config.data``; process ``rank`` of ``world_size`` gets its own shard
    (``data.batch_size`` is the batch of one process)."""
    data = config.data
    if data.name in TOY2D:
        return Toy2DStream(data.name, data.batch_size, data.seed, rank)
    images, labels = load_images(data, "train")
    return ImageStream(images, labels, data.batch_size, data.seed, rank=rank, world_size=world_size)


__all__ = [
    "BatchStream",
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
