"""PNG figures a person opens: samples against data, and the exp(ELBO) density (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _square_axes(ax, limit: float, title: str) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_title(title)


def plot_samples(real: np.ndarray, generated: np.ndarray, limit: float, path: Path, title: str = "") -> Path:
    """Real data beside samples from the model, on the dataset's square."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    axes[0].scatter(real[:, 0], real[:, 1], s=1, alpha=0.5, color="tab:blue")
    axes[1].scatter(generated[:, 0], generated[:, 1], s=1, alpha=0.5, color="tab:red")
    _square_axes(axes[0], limit, "data")
    _square_axes(axes[1], limit, "samples")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_density(neg_elbo_grid: np.ndarray, limit: float, path: Path, title: str = "") -> Path:
    """exp(ELBO) on a square grid, normalised over the grid; ``neg_elbo_grid`` is (size, size), y-major."""
    log_density = -neg_elbo_grid.astype(np.float64)
    density = np.exp(log_density - log_density.max())
    density /= density.sum()
    fig, ax = plt.subplots(figsize=(4.4, 4))
    image = ax.imshow(density, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    _square_axes(ax, limit, title or "exp(ELBO) density")
    return _save(fig, path)
