"""A procedurally rendered image-translation benchmark with ground truth (numpy only, no downloads).

Each *class* is an object identity: two or three coloured boxes of its own sizes and placement (a
body, a cabin, sometimes a third part), like a toy car model. The *content* is the pose: one of
``azimuths`` × ``elevations`` camera directions, as Cars3D's 24 azimuths × 4 elevations (paper
§9.3). Images are ray-cast orthographically with Lambert shading under a light fixed in the world
(so shading moves with the pose), on a black background, 2×2 supersampled.

Because any (class, pose) can be rendered, content transfer has an exact answer: decoding the class
of image A with the content of image B should give ``render(class of A, pose of B)``
(:meth:`TranslationSet.ground_truth`). As for Cars3D, the last ``test_classes`` identities are held
out: a model trains on the first ones and transfer is measured between unseen identities.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import atomic_write_bytes

NUM_CLASSES = 120  # object identities
TEST_CLASSES = 20  # the last ones, held out (Cars3D: 163 train / 20 test)
AZIMUTHS = 24  # every 15°
ELEVATIONS = (10.0, 20.0, 30.0, 40.0)  # degrees above the horizon
LIGHT = np.array([0.45, 0.8, 0.4]) / np.linalg.norm([0.45, 0.8, 0.4])  # direction towards the light, world frame
AMBIENT = 0.3
VIEW_HALF_WIDTH = 1.05  # the image shows [−1.05, 1.05]² of the image plane; objects fit in it from every pose
SUPERSAMPLE = 2


@dataclass(frozen=True)
class ObjectIdentity:
    """Boxes in the object frame (y up): ``low``/``high`` corners (K, 3) and RGB ``colours`` (K, 3) in [0, 1]."""

    low: np.ndarray
    high: np.ndarray
    colours: np.ndarray


def object_identity(index: int, seed: int = 0) -> ObjectIdentity:
    """The boxes of identity ``index``: a long body, a cabin on top, and in half the identities a
    third part (a spoiler or a roof box), each with its own colour; deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    length, width, height = rng.uniform(0.55, 0.9), rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.3)
    body = (np.array([-length, -height, -width]), np.array([length, height, width]))
    cabin_length, cabin_height = rng.uniform(0.2, 0.5) * length, rng.uniform(0.12, 0.3)
    shift = rng.uniform(-0.45, 0.45) * (length - cabin_length)
    cabin_width = rng.uniform(0.6, 1.0) * width
    cabin = (
        np.array([shift - cabin_length, height, -cabin_width]),
        np.array([shift + cabin_length, height + cabin_height, cabin_width]),
    )
    boxes = [body, cabin]
    if rng.random() < 0.5:
        end = rng.choice([-1.0, 1.0])
        part_height = rng.uniform(0.08, 0.25)
        boxes.append(
            (np.array([end * length - 0.12 if end > 0 else -length, height, -width]),
             np.array([length if end > 0 else -length + 0.12, height + part_height, width]))
        )  # fmt: skip
    else:
        rng.random()  # keep the stream aligned between the two kinds
    low, high = (np.stack(corners) for corners in zip(*boxes))
    centre = (low.min(0) + high.max(0)) / 2  # centre the object at the origin
    hue = rng.random()
    hues = (hue + np.array([0.0, rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.9)]))[: len(boxes)] % 1.0
    colours = np.stack([_hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.7, 1.0)) for h in hues])
    return ObjectIdentity(low - centre, high - centre, colours)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def camera_basis(azimuth_deg: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) unit vectors of a camera on the view sphere looking at the origin."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    position = np.array([math.cos(e) * math.cos(a), math.sin(e), math.cos(e) * math.sin(a)])
    forward = -position
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return forward, right, up


def render(identity: ObjectIdentity, azimuth_deg: float, elevation_deg: float, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of ``identity`` seen from (azimuth, elevation)."""
    forward, right, up = camera_basis(azimuth_deg, elevation_deg)
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2 * VIEW_HALF_WIDTH - VIEW_HALF_WIDTH  # pixel centres, left→right
    u, v = np.meshgrid(coords, -coords)  # v: top row is up
    origins = u[..., None] * right + v[..., None] * up - 3.0 * forward  # (n, n, 3), in front of the object
    direction = np.where(np.abs(forward) < 1e-12, 1e-12, forward)  # no exact zeros in the slab divisions
    t1 = (identity.low[:, None, None, :] - origins) / direction  # (K, n, n, 3)
    t2 = (identity.high[:, None, None, :] - origins) / direction
    t_entry, t_exit = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = t_entry.max(-1), t_exit.min(-1)  # (K, n, n)
    hit = t_near <= t_far
    depth = np.where(hit, t_near, np.inf)
    nearest = depth.argmin(0)  # (n, n): the box each ray meets first
    any_hit = np.isfinite(depth.min(0))
    axis = np.take_along_axis(t_entry.argmax(-1), nearest[None], 0)[0]  # the face's axis
    normal = np.zeros((n, n, 3))
    np.put_along_axis(normal, axis[..., None], -np.sign(direction[axis])[..., None], -1)
    shade = AMBIENT + (1 - AMBIENT) * np.clip(normal @ LIGHT, 0.0, None)
    image = identity.colours[nearest] * shade[..., None] * any_hit[..., None]  # (n, n, 3), black background
    image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def pose_angles(pose: int, azimuths: int = AZIMUTHS, elevations: tuple[float, ...] = ELEVATIONS) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of pose index ``pose`` = azimuth index × len(elevations) + elevation index."""
    a, e = divmod(pose, len(elevations))
    return 360.0 * a / azimuths, elevations[e]


@dataclass
class TranslationSet:
    """Images with their class and (when known) pose ids, for content transfer with ground truth.

    ``images`` uint8 (N, C, H, W), ``classes`` and ``poses`` int64 (N,). ``lookup[(c, p)]`` is the
    index of the image of class c in pose p.
    """

    images: Tensor
    classes: Tensor
    poses: Tensor | None

    def __post_init__(self) -> None:
        self.lookup: dict[tuple[int, int], int] = {}
        if self.poses is not None:
            for i, (c, p) in enumerate(zip(self.classes.tolist(), self.poses.tolist())):
                self.lookup.setdefault((c, p), i)

    def ground_truth(self, class_index: Tensor, content_index: Tensor) -> tuple[Tensor, Tensor]:
        """For pairs (A, B) of image indices: the indices of the images of A's class in B's pose,
        and a mask of the pairs whose answer exists in the set."""
        if self.poses is None:
            raise UserError("this dataset has no pose labels, so content transfer has no ground truth")
        answers = [self.lookup.get((int(self.classes[a]), int(self.poses[b])), -1) for a, b in zip(class_index, content_index)]
        answers = torch.tensor(answers, dtype=torch.int64)
        return answers.clamp(min=0), answers >= 0


CACHE_ENV = "SOFTINTROVAE_CACHE"
RENDER_VERSION = 1  # bump when the renderer's output changes, so cached images are not reused


def cache_dir() -> Path:
    """Where rendered images are cached: ``$SOFTINTROVAE_CACHE/rendered``, else ``~/.cache/softintrovae/rendered``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/softintrovae").expanduser() / "rendered"


def _render_classes(classes: range, size: int, seed: int, azimuths: int, elevations: tuple[float, ...]) -> np.ndarray:
    poses = azimuths * len(elevations)
    images = np.empty((len(classes) * poses, size, size, 3), dtype=np.uint8)
    # minutes the first time (then cached): a bar on a terminal, nothing in logs and tests
    bar = tqdm(classes, desc=f"rendering {len(classes)} objects x {poses} poses (cached in {cache_dir()})", unit="object", leave=False, disable=None)
    for i, c in enumerate(bar):
        identity = object_identity(c, seed)
        for p in range(poses):
            images[i * poses + p] = render(identity, *pose_angles(p, azimuths, elevations), size)
    return images


@lru_cache(maxsize=4)
def _render_split(
    split: str, size: int, seed: int, num_classes: int, test_classes: int, azimuths: int, elevations: tuple[float, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """(images (N, 3, size, size) uint8, classes, poses), rendered once and cached on disk."""
    if split not in ("train", "test"):
        raise UserError(f"rendered-objects split must be train or test, got {split!r}")
    if size < 8:
        raise UserError(f"rendered-objects image size must be >= 8, got {size}")
    first = num_classes - test_classes
    classes = range(first) if split == "train" else range(first, num_classes)
    key = f"v{RENDER_VERSION}-{split}-{size}px-seed{seed}-{num_classes}x{azimuths}x{'_'.join(f'{e:g}' for e in elevations)}-test{test_classes}"
    path = cache_dir() / f"{key}.npy"
    images = None
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            images = None  # a torn or foreign file: render again
    poses = azimuths * len(elevations)
    if images is None or images.shape != (len(classes) * poses, size, size, 3):
        images = _render_classes(classes, size, seed, azimuths, elevations)
        try:
            atomic_write_bytes(path, lambda f: np.save(f, images))
        except OSError:
            pass  # a read-only cache only costs the rendering time
    labels = torch.tensor([c for c in classes for _ in range(poses)], dtype=torch.int64)
    pose_ids = torch.arange(poses, dtype=torch.int64).repeat(len(classes))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, pose_ids


def load_rendered_objects(split: str = "train", size: int = 64, seed: int = 0) -> TranslationSet:
    """All poses of the training identities (``split="train"``) or of the held-out ones (``"test"``)."""
    images, classes, poses = _render_split(split, size, seed, NUM_CLASSES, TEST_CLASSES, AZIMUTHS, tuple(ELEVATIONS))
    return TranslationSet(images.clone(), classes.clone(), poses.clone())


__all__ = [
    "AZIMUTHS",
    "ELEVATIONS",
    "NUM_CLASSES",
    "TEST_CLASSES",
    "ObjectIdentity",
    "TranslationSet",
    "load_rendered_objects",
    "object_identity",
    "pose_angles",
    "render",
]
