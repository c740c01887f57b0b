"""Image-translation datasets: images with a class (identity) and, where known, a content (pose) id.

- ``rendered-objects``: the procedurally rendered benchmark of :mod:`.rendered` (always available;
  train = 100 identities, test = 20 held-out identities, 96 poses each).
- ``cars3d``: Cars3D from a user-supplied ``.npz`` (``data.root``): ``images`` (N, H, W, 3) or
  (N, 3, H, W) uint8, ``classes`` (or ``labels``) the car model of each image, and optionally
  ``poses`` (a pose id) or ``azimuth`` and ``elevation`` (indices, combined into a pose id). The 20
  highest car-model ids are held out as the test split (paper §9.3: 163 train, 20 test).
- ``kth``: KTH frames from a user-supplied folder (``data.root``), one sub-folder per person
  (``ROOT/person01/*.png``), read as grayscale; a fixed 10 % of the frames is the test split (paper
  §9.3: all identities train). There are no pose labels, so KTH gets transfer pictures, not errors.

Every image is resized to ``data.image_size`` (64 in the paper).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .images import _images_to_nchw_uint8, load_image_folder
from .rendered import TranslationSet, load_rendered_objects

CARS3D_TEST_CLASSES = 20
KTH_TEST_FRACTION = 0.1


def _check_split(name: str, split: str) -> None:
    if split not in ("train", "test"):
        raise UserError(f"{name} split must be train or test, got {split!r}")


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size), area-averaged when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    out = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False) for chunk in images.split(512)]
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


def load_cars3d(root: str | None, split: str, size: int) -> TranslationSet:
    """Cars3D from an ``.npz`` (see the module docstring)."""
    _check_split("cars3d", split)
    if root is None:
        raise UserError("data.name cars3d needs data.root: the .npz file holding images, classes and poses")
    path = Path(root)
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise UserError(f"cars3d file {str(path)!r} is missing or not an .npz archive")
    with np.load(path, allow_pickle=False) as archive:
        files = set(archive.files)
        class_key = next((k for k in ("classes", "labels") if k in files), None)
        if "images" not in files or class_key is None:
            raise UserError(f"cars3d file {str(path)!r} needs arrays 'images' and 'classes' (it has {sorted(files)})")
        images = _images_to_nchw_uint8(archive["images"], str(path))
        classes = archive[class_key]
        if "poses" in files:
            poses = archive["poses"]
        elif {"azimuth", "elevation"} <= files:
            elevation = archive["elevation"]
            poses = archive["azimuth"] * (int(elevation.max()) + 1) + elevation
        else:
            poses = None
    for name, values in (("classes", classes), ("poses", poses)):
        if values is not None and (values.shape != (len(images),) or not np.issubdtype(values.dtype, np.integer)):
            raise UserError(f"cars3d {name} in {str(path)!r} must be {len(images)} integers, got {values.shape} {values.dtype}")
    held_out = np.unique(classes)[-CARS3D_TEST_CLASSES:]
    keep = np.isin(classes, held_out) == (split == "test")
    index = torch.from_numpy(np.flatnonzero(keep))
    return TranslationSet(
        resize_uint8(images[index], size),
        torch.from_numpy(classes[keep].astype(np.int64)),
        None if poses is None else torch.from_numpy(poses[keep].astype(np.int64)),
    )


def load_kth(root: str | None, split: str, size: int) -> TranslationSet:
    """KTH frames from a folder of per-person sub-folders (see the module docstring)."""
    _check_split("kth", split)
    if root is None:
        raise UserError("data.name kth needs data.root: a folder with one sub-folder of frames per person")
    images, classes = load_image_folder(root, size, channels=1)
    if classes is None:
        raise UserError(f"kth folder {str(root)!r} must hold one sub-folder per person, every frame inside one")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = max(1, round(KTH_TEST_FRACTION * len(images)))
    index = order[:cut] if split == "test" else order[cut:]
    index = index.sort().values
    return TranslationSet(images[index], classes[index], None)


def load_translation_set(data_config, split: str = "test") -> TranslationSet:
    """The ``split`` of the translation dataset ``data_config.name``, with its class and pose ids."""
    name, size = data_config.name, data_config.image_size
    if name == "rendered-objects":
        _check_split(name, split)
        return load_rendered_objects(split, size)
    if name == "cars3d":
        return load_cars3d(data_config.root, split, size)
    if name == "kth":
        return load_kth(data_config.root, split, size)
    raise UserError(f"data.name {name!r} is not a translation dataset (use one of {', '.join(TRANSLATION_DATASETS)})")


def _labelled(data_config, split: str) -> tuple[Tensor, Tensor]:
    found = load_translation_set(data_config, split)
    return found.images, found.classes


# name -> loader(data config, split) of (images, class ids), as the other image datasets
TRANSLATION_DATASETS = {"rendered-objects": _labelled, "cars3d": _labelled, "kth": _labelled}

__all__ = ["TRANSLATION_DATASETS", "TranslationSet", "load_cars3d", "load_kth", "load_translation_set", "resize_uint8"]
