"""Vector data: a file of N points of any dimension D (``data.name: points``, ``data.root: FILE``).

The file is an ``.npy`` (N, D), an ``.npz`` whose array is ``points`` or ``x`` (else its only
array), or a ``.csv`` of numbers (one point per line, a header line allowed). Points are
standardised per coordinate (``data.standardize``, default true): the model sees
(x − mean) / std, and the mean and std are recorded in the run (``RUN/data.json`` and every
checkpoint) so that samples map back to the data's units with :meth:`Standardization.invert`.
Batches are shuffled epochs of the points (:class:`~softintrovae.data.sampling.EpochStream`).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError, warn
from .sampling import EpochStream

POINT_FILE_SUFFIXES = (".npy", ".npz", ".csv")


def load_points(path: str | Path) -> np.ndarray:
    """The (N, D) float64 points in an ``.npy``, ``.npz`` or ``.csv`` file (a 1-D array is N points of D = 1)."""
    path = Path(path)
    if path.suffix.lower() not in POINT_FILE_SUFFIXES:
        raise UserError(f"points file {str(path)!r} must end in {', '.join(POINT_FILE_SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"points file {str(path)!r} not found")
    try:
        if path.suffix.lower() == ".csv":
            points = _read_csv(path)
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = [n for n in ("points", "x") if n in archive.files] or (archive.files if len(archive.files) == 1 else [])
                if not names:
                    raise UserError(f"{str(path)!r} has no array named points or x (it has {archive.files})")
                points = archive[names[0]]
        else:
            points = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"points file {str(path)!r} is not readable ({str(exc).splitlines()[0][:120]})") from None
    points = points[:, None] if points.ndim == 1 else points
    if points.ndim != 2 or not (np.issubdtype(points.dtype, np.number) and not np.issubdtype(points.dtype, np.complexfloating)):
        raise UserError(f"points in {str(path)!r} must be a real (N, D) array, got {points.dtype} {points.shape}")
    if len(points) < 2 or points.shape[1] < 1:
        raise UserError(f"points file {str(path)!r} must hold at least 2 points of at least 1 coordinate, got {points.shape}")
    if not np.isfinite(points).all():
        raise UserError(f"points in {str(path)!r} must be finite (found NaN or inf)")
    return points.astype(np.float64)


def _read_csv(path: Path) -> np.ndarray:
    """Numbers separated by commas, one point per line; a first line that is not numbers is a header."""
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        header = 0
    except ValueError:
        header = 1
    return np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2)


@dataclass
class Standardization:
    """x ↦ (x − mean) / std per coordinate; a constant coordinate keeps std 1."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)

    @classmethod
    def fit(cls, points: np.ndarray) -> "Standardization":
        std = points.std(axis=0)
        return cls(points.mean(axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def identity(cls, dim: int) -> "Standardization":
        return cls(np.zeros(dim), np.ones(dim))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def invert(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Model units → the data's units (e.g. decoded samples)."""
        if isinstance(x, Tensor):
            return x * torch.as_tensor(self.std, dtype=x.dtype, device=x.device) + torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        return x * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Standardization":
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))


def square_limit(points: np.ndarray) -> float:
    """Half the side of the square around 0 that plots and histogram metrics use: the largest
    coordinate's magnitude plus 10 %, rounded up to a multiple of 0.5."""
    return math.ceil(float(np.abs(points).max()) * 1.1 * 2) / 2


class PointStream(EpochStream):
    """Shuffled mini-batches (B, D) of a file's points in model units (standardised unless
    ``standardize`` is false); batch ``k`` depends only on (seed, k)."""

    unit = "points"
    num_classes = 0

    def __init__(self, path: str | Path, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, standardize: bool = True):
        self.path, self.raw = str(path), load_points(path)
        super().__init__(len(self.raw), batch_size, seed, True, rank, world_size)
        self.input_shape = (self.raw.shape[1],)
        self.standardize = standardize
        self.set_standardization(Standardization.fit(self.raw) if standardize else Standardization.identity(self.raw.shape[1]))

    def set_standardization(self, standardization: Standardization) -> None:
        self.standardization = standardization
        model_units = standardization.apply(self.raw)
        self.points = torch.from_numpy(model_units.astype(np.float32))  # (N, D)
        self.limit = square_limit(model_units)  # 2D: the histogram and plot range

    def take(self, index: Tensor) -> Tensor:
        return self.points[index]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n distinct random points (with replacement only when n exceeds the file), in model units."""
        return self.take(self.sample_index(n, generator))

    def describe(self) -> dict[str, Any]:
        standardization = self.standardization.to_dict() if self.standardize else None
        return {**super().describe(), "file": self.path, "standardization": standardization, "limit": self.limit}

    def state_dict(self, step: int) -> dict[str, Any]:
        return {**super().state_dict(step), "standardization": self.standardization.to_dict()}

    def load_state_dict(self, state: dict[str, Any] | None, step: int, resuming: bool = True) -> None:
        """Continue in the checkpoint's units (a file changed since then keeps the model's units, with a warning)."""
        super().load_state_dict(state, step, resuming)
        if not state or "standardization" not in state:
            return
        recorded = Standardization.from_dict(state["standardization"])
        if recorded.mean.shape != self.standardization.mean.shape:
            raise UserError(f"the points in {self.path!r} have {self.input_shape[0]} coordinates, the checkpoint's model {recorded.mean.shape[0]}")
        if not (np.allclose(recorded.mean, self.standardization.mean) and np.allclose(recorded.std, self.standardization.std)):
            warn(f"the points in {self.path!r} changed since the checkpoint: they are standardised with the checkpoint's mean and std")
        self.set_standardization(recorded)


__all__ = ["POINT_FILE_SUFFIXES", "PointStream", "Standardization", "load_points", "square_limit"]
