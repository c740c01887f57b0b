"""PNG figures a person opens: samples against data, and the exp(ELBO) density (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import save_figure  # noqa: E402


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
    return save_figure(fig, path)


def normalized_density(neg_elbo_grid: np.ndarray) -> np.ndarray:
    """exp(ELBO) over a grid of −ELBO values, normalised to sum to 1 (computed stably)."""
    log_density = -neg_elbo_grid.astype(np.float64)
    density = np.exp(log_density - log_density.max())
    return density / density.sum()


def plot_density(neg_elbo_grid: np.ndarray, limit: float, path: Path, title: str = "") -> Path:
    """exp(ELBO) on a square grid, normalised over the grid; ``neg_elbo_grid`` is (size, size), y-major."""
    density = normalized_density(neg_elbo_grid)
    fig, ax = plt.subplots(figsize=(4.4, 4))
    image = ax.imshow(density, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    _square_axes(ax, limit, title or "exp(ELBO) density")
    return save_figure(fig, path)


def plot_method_grid(cells: dict[tuple[str, str], dict], rows: list[str], columns: list[str], path: Path, title: str = "") -> Path:
    """Paper Figure 2: per method (rows) and dataset (columns), samples above the exp(ELBO) density.

    ``cells[(row, column)]`` holds ``generated`` (n, 2), ``density`` (k, k) and ``limit``; missing
    cells are left blank.
    """
    fig, axes = plt.subplots(2 * len(rows), len(columns), figsize=(2.4 * len(columns), 4.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
            cell = cells.get((row, column))
            if i == 0:
                top.set_title(column)
            if j == 0:
                top.set_ylabel(f"{row}\nsamples")
                bottom.set_ylabel(f"{row}\nexp(ELBO)")
            if cell is None:
                top.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=top.transAxes)
                continue
            limit = float(cell["limit"])
            top.scatter(cell["generated"][:, 0], cell["generated"][:, 1], s=0.5, alpha=0.4, color="tab:red")
            top.set_xlim(-limit, limit)
            top.set_ylim(-limit, limit)
            bottom.imshow(cell["density"], origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
            for ax in (top, bottom):
                ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_stability(margins: np.ndarray, curves: dict[str, np.ndarray], flat: dict[str, tuple[float, float]], path: Path, title: str = "") -> Path:
    """Paper Figure 3: IntroVAE's metric (mean ± std) against the margin m; Soft-IntroVAE as a flat band.

    ``curves[metric]`` is (len(margins), 2) of mean and std; ``flat[metric]`` is (mean, std).
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (metric, values) in zip(axes[0], curves.items()):
        ax.errorbar(margins, values[:, 0], yerr=values[:, 1], marker="o", capsize=3, label="IntroVAE")
        mean, std = flat[metric]
        ax.axhline(mean, color="tab:red", label="Soft-IntroVAE (no margin)")
        ax.axhspan(mean - std, mean + std, color="tab:red", alpha=0.15)
        ax.set_xlabel("margin m")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_collapse(curves: dict[str, tuple[np.ndarray, np.ndarray]], samples: dict[str, dict], warmup: int, path: Path, title: str = "") -> Path:
    """Paper Figure 21: the KL of real data over training per method, and each method's samples.

    ``curves[method]`` is (steps, KL values); ``samples[method]`` holds ``generated`` and ``limit``.
    """
    fig, axes = plt.subplots(1, 1 + len(samples), figsize=(4.2 * (1 + len(samples)), 3.8), squeeze=False)
    ax = axes[0, 0]
    for method, (steps, kl) in curves.items():
        ax.plot(steps, kl, label=method)
    if warmup:
        ax.axvline(warmup, color="gray", linestyle=":", label="end of VAE warm-up")
    ax.set_yscale("symlog", linthresh=0.01)
    top = max((float(np.max(kl)) for _, kl in curves.values() if len(kl)), default=1.0)
    ax.set_ylim(0, max(top * 2, 0.02))  # KL is never negative; leave room above the highest curve
    ax.set_xlabel("iteration")
    ax.set_ylabel("KL(q(z|x) || p(z)) of real data")
    ax.grid(alpha=0.3)
    ax.legend()
    for ax, (method, cell) in zip(axes[0, 1:], samples.items()):
        limit = float(cell["limit"])
        ax.scatter(cell["generated"][:, 0], cell["generated"][:, 1], s=0.5, alpha=0.4, color="tab:red")
        _square_axes(ax, limit, f"{method}: samples")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def tile_images(images: np.ndarray, columns: int, padding: int = 1) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] → one (rows·(H+p)+p, columns·(W+p)+p, C) array, white gaps between."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), dtype=np.float32)
    for index, image in enumerate(np.clip(images, 0, 1)):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    return grid


def plot_image_grid(images: np.ndarray, columns: int, path: Path, title: str = "") -> Path:
    """A grid of (N, C, H, W) images in [0, 1] (gray for one channel) as a PNG a person opens."""
    grid = tile_images(images, columns)
    height, width = grid.shape[:2]
    scale = max(1.0, 400 / width)  # small images (28×28) would otherwise be a few pixels across
    fig, ax = plt.subplots(figsize=(width * scale / 110, height * scale / 110 + (0.3 if title else 0)))
    if grid.shape[2] == 1:
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def plot_score_histograms(scores: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Paper Figure 8: overlaid histograms of a likelihood score, one per image set, on shared bins.

    Bins span the 1st-99th percentile of all scores together, so a few extreme values do not
    flatten the rest.
    """
    everything = np.concatenate(list(scores.values()))
    low, high = np.percentile(everything, [1, 99])
    if not high > low:
        low, high = float(everything.min()) - 0.5, float(everything.max()) + 0.5
    bins = np.linspace(low, high, 60)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, values in scores.items():
        ax.hist(np.clip(values, low, high), bins=bins, density=True, alpha=0.45, label=f"{name} ({len(values)})")
    ax.set_xlabel("score (higher = more like the training data)")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str = "") -> Path:
    """ROC curves (false-positive rate, true-positive rate, AUROC) per out-set."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    for name, (fpr, tpr, area) in curves.items():
        ax.plot(fpr, tpr, label=f"{name}: AUROC {area:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (out-set called in)")
    ax.set_ylabel("true-positive rate (in-set called in)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
