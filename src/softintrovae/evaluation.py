"""Evaluators: what a run measures and draws, periodically during training and at the end.

Every evaluator samples and reconstructs in eval mode (SPEC §2) and draws from its own seeded
generators, so evaluating never changes training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import Config
from .data import HAS_TEST_SPLIT, Toy2DStream, load_images
from .data.sampling import ImageEpochStream
from .metrics import compare_histograms, deterministic_negative_elbo, grid_normalized_elbo, histogram_density, square_grid
from .metrics.features import FeatureExtractor, feature_nets_dir, load_feature_net
from .models import Decoder, class_labels, eval_mode, forward, num_classes_of
from .objectives import kl_to_standard_normal, reconstruction_loss
from .points_evaluation import PointsEvaluator
from .plots import normalized_density, plot_density, plot_image_grid, plot_samples
from .files import atomic_write_bytes


class Toy2DEvaluator:
    """KL / JSD from histograms every evaluation; gnELBO and the density plot at the end (SPEC §3).

    Evaluation draws from its own seeded generators, so it never changes the training's random
    stream: a run evaluated often and one evaluated rarely train identically. What does not depend
    on the checkpoint (the real points and their histogram, the prior noise, the gnELBO data points
    and the grid) is drawn once and kept for every later evaluation. The final evaluation's
    forward passes over the grid (``eval.grid_size``², a million points by default) show a progress
    bar when ``progress`` is set.
    """

    def __init__(self, config: Config, data: Toy2DStream, progress: bool = False):
        self.config, self.data, self.progress = config, data, progress
        self._fixed: dict[str, object] = {}
        self.pictures: dict[str, Path] = {}  # name -> PNG written by the last evaluation

    def fixed(self, z_dim: int) -> dict[str, object]:
        """The same at every evaluation, drawn on first use: ``real`` points and their histogram ``p``,
        prior noise ``z`` (for ``z_dim``), the gnELBO data ``points`` and the ``grid``."""
        if self._fixed.get("z_dim") != z_dim:
            cfg, limit = self.config.eval, self.data.limit
            data_gen = torch.Generator().manual_seed(cfg.seed)
            real = self.data.sample(cfg.num_samples, data_gen)
            self._fixed = {
                "z_dim": z_dim,
                "real": real,
                "p": histogram_density(real.numpy(), limit, cfg.bins),
                "z": torch.randn(cfg.num_samples, z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)),
                "points": self.data.sample(cfg.elbo_samples, data_gen),  # drawn after `real`, from the same generator
                "grid": square_grid(limit, cfg.grid_size),
            }
        return self._fixed

    def __call__(self, encoder: nn.Module, decoder: nn.Module, out_dir: Path, step: int, final: bool) -> dict[str, float]:
        cfg, limit = self.config.eval, self.data.limit
        device = next(decoder.parameters()).device
        fixed = self.fixed(decoder.z_dim)
        real = fixed["real"].numpy()
        with eval_mode(encoder, decoder):
            generated = decoder(fixed["z"].to(device)).float().cpu().numpy()
            metrics = compare_histograms(fixed["p"], histogram_density(generated, limit, cfg.bins))
            name = self.config.name
            if final:
                neg_elbo_data, neg_elbo_grid = self.negative_elbos(encoder, decoder, device)
                metrics["gnelbo"] = grid_normalized_elbo(neg_elbo_data, neg_elbo_grid)
                grid_image = neg_elbo_grid.reshape(cfg.grid_size, cfg.grid_size).cpu().numpy()
                plot_density(grid_image, limit, out_dir / "density.png", f"{name}: exp(ELBO), step {step}")
                save_final_arrays(out_dir, generated, grid_image, limit)
                samples_path = out_dir / "samples.png"
            else:
                samples_path = out_dir / "plots" / f"samples_step{step:07d}.png"
            title = f"{name}, step {step}: KL {metrics['kl']:.3f}, JSD {metrics['jsd_official']:.3f}"
            plot_samples(real, generated, limit, samples_path, title)
        self.pictures = {"samples": samples_path, **({"density": out_dir / "density.png"} if final else {})}
        return metrics

    def negative_elbos(self, encoder: nn.Module, decoder: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """−ELBO of the gnELBO data points and of the grid, in one sequence of passes with a progress bar."""
        fixed = self.fixed(decoder.z_dim)
        points, grid = fixed["points"].to(device), fixed["grid"].to(device)
        total = len(points) + len(grid)
        with tqdm(total=total, desc=f"final evaluation: gnELBO ({self.config.eval.grid_size}² grid)", unit="pt", unit_scale=True, leave=False,
                  disable=not self.progress, dynamic_ncols=True) as bar:  # fmt: skip
            neg_elbo_data = deterministic_negative_elbo(encoder, decoder, points, progress=bar)
            neg_elbo_grid = deterministic_negative_elbo(encoder, decoder, grid, progress=bar)
        return neg_elbo_data, neg_elbo_grid


FINAL_ARRAYS = "final_eval.npz"


def save_final_arrays(out_dir: Path, generated: np.ndarray, neg_elbo_grid: np.ndarray, limit: float, size: int = 128) -> Path:
    """The final samples and a coarse exp(ELBO) density (``size``², summing to 1), for later figures."""
    density = normalized_density(neg_elbo_grid)
    if density.shape[0] % size == 0:  # sum blocks: still a density over the coarser grid
        block = density.shape[0] // size
        density = density.reshape(size, block, size, block).sum(axis=(1, 3))
    path = out_dir / FINAL_ARRAYS
    atomic_write_bytes(
        path, lambda f: np.savez_compressed(f, generated=generated.astype(np.float32), density=density.astype(np.float32), limit=limit)
    )
    return path


def load_final_arrays(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / FINAL_ARRAYS
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


class ImageEvaluator:
    """Reconstruction error and KL on a fixed batch of held-out images, and picture grids (SPEC §3).

    The batch is ``HELD_OUT`` images of the test split where the dataset has one, else a fixed
    sample of training images. Writes ``reconstructions.png`` (real | reconstruction pairs, z = μ)
    and ``samples.png`` (decoded z ~ N(0, I)) at the end, and step-numbered copies under ``plots/``
    every evaluation. With ``eval.fid_samples`` > 0 and a feature net ``<feature nets dir>/<data.name>.pt``
    (see :mod:`softintrovae.metrics.features`), also FID/KID against the training images.
    A class-conditional model reconstructs each image with its own label and draws samples of
    classes 0, 1, ..., K−1 in turn (one class per column of the grid when K is 8).
    """

    HELD_OUT = 512
    PAIRS = 16
    SAMPLES = 64
    CHUNK = 128  # images per forward pass, to bound memory at large image sizes
    FEATURE_NET_NAMES = {"fashion-mnist": "fmnistnet"}

    def __init__(self, config: Config, data: ImageEpochStream):
        self.config, self.data = config, data
        self.pictures: dict[str, Path] = {}  # name -> PNG written by the last evaluation
        self._held_out: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._extractor: FeatureExtractor | None = None

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(HELD_OUT, C, H, W) float images in [0, 1] and their labels (or None), the same at every
        evaluation (loaded once)."""
        if self._held_out is None:
            generator = torch.Generator().manual_seed(self.config.eval.seed)
            if self.config.data.name in HAS_TEST_SPLIT:
                images, labels = load_images(self.config.data, "test")
                index = torch.randperm(len(images), generator=generator)[: self.HELD_OUT]
                self._held_out = images[index].float().div(255), None if labels is None else labels[index].long()
            else:
                self._held_out = self.data.sample_labelled(min(self.HELD_OUT, len(self.data)), generator)
        return self._held_out

    def __call__(self, encoder: nn.Module, decoder: nn.Module, out_dir: Path, step: int, final: bool) -> dict[str, float]:
        device = next(decoder.parameters()).device
        z_dim, num_classes = decoder.z_dim, num_classes_of(decoder)
        images, labels = self.held_out()
        image_chunks = images.split(self.CHUNK)
        label_chunks = labels.split(self.CHUNK) if num_classes else [None] * len(image_chunks)
        with eval_mode(encoder, decoder):
            rec, kl, reconstructions = [], [], []
            for x, y in zip(image_chunks, label_chunks):
                x, y = x.to(device), None if y is None else y.to(device)
                mu, logvar = forward(encoder, x, y)
                x_rec = forward(decoder, mu, y).float()  # deterministic reconstruction, z = μ
                rec.append(reconstruction_loss(x, x_rec, "mse", reduction="none").cpu())
                kl.append(kl_to_standard_normal(mu, logvar, reduction="none").cpu())
                reconstructions.append(x_rec.cpu())
            z = torch.randn(self.SAMPLES, z_dim, generator=torch.Generator().manual_seed(self.config.eval.seed + 1))
            sample_labels = class_labels(self.SAMPLES, num_classes)
            samples = forward(decoder, z.to(device), None if sample_labels is None else sample_labels.to(device)).float().cpu()
        metrics = {"rec_mse": float(torch.cat(rec).mean()), "kl": float(torch.cat(kl).mean())}
        metrics.update(self.fid_kid(decoder, device))

        real = images[: self.PAIRS]
        pairs = torch.stack([real, torch.cat(reconstructions)[: self.PAIRS]], dim=1).flatten(0, 1)  # real, rec, real, ...
        names = ("reconstructions.png", "samples.png")
        paths = [out_dir / n for n in names] if final else [out_dir / "plots" / n.replace(".png", f"_step{step:07d}.png") for n in names]
        title = f"{self.config.name}, step {step}"
        plot_image_grid(pairs.numpy(), 8, paths[0], f"{title}: real | reconstruction, rec_mse {metrics['rec_mse']:.4g}")
        plot_image_grid(samples.numpy(), 8, paths[1], f"{title}: samples")
        path = out_dir / "multires.png" if final else out_dir / "plots" / f"multires_step{step:07d}.png"
        multires = self.plot_multiresolution(decoder, z[:8].to(device), path, title)  # a progressively grown decoder only
        self.pictures = {"reconstructions": paths[0], "samples": paths[1], **({"multires": multires} if multires else {})}
        return metrics

    @staticmethod
    def plot_multiresolution(decoder: Decoder, z: torch.Tensor, path: Path, title: str) -> Path | None:
        """One row per level 4x4 .. current (each through its own to-RGB layer), one column per sample;
        nothing for a decoder that does not grow."""
        with eval_mode(decoder):
            rows = decoder.multiresolution(z)
        if rows is None:
            return None
        level, alpha = decoder.progress
        grid = torch.stack(rows).flatten(0, 1).float().clamp(0, 1).cpu().numpy()
        sizes = " | ".join(f"{4 * 2**i}" for i in range(len(rows)))
        return plot_image_grid(grid, len(z), path, f"{title}: level {level} (alpha {alpha:.2f}), rows {sizes}")

    def feature_extractor(self) -> FeatureExtractor | None:
        """The dataset's feature net if its file exists (FID/KID are optional extras); loaded once."""
        if self._extractor is None:
            name = self.config.data.name
            path = feature_nets_dir() / f"{name}.pt"
            if not path.is_file():
                return None
            net = load_feature_net(path)
            self._extractor = FeatureExtractor(net, self.FEATURE_NET_NAMES.get(name, f"{name.replace('-', '')}net"), net.feature_dim)
        return self._extractor

    def fid_kid(self, decoder: nn.Module, device: torch.device) -> dict[str, float]:
        """``fid{n}_train_<net>``, ``kid{n}_train_<net>`` (mean) and its ``_std``; {} when not asked for or no net."""
        n = self.config.eval.fid_samples
        extractor = self.feature_extractor() if n else None
        if extractor is None:
            return {}
        from .metrics.fid import compute_fid_kid, generate_images, metric_name  # torchmetrics: seconds to import

        labels = class_labels(n, num_classes_of(decoder))
        fake = generate_images(decoder, n, decoder.z_dim, seed=self.config.eval.seed + 2, device=device, labels=labels)
        result = compute_fid_kid(self.data.real_images(n), fake, extractor.to(device), cache_key=f"{self.config.data.name}_train")
        fid, kid = (metric_name(kind, n, "train", extractor.name) for kind in ("fid", "kid"))
        return {fid: result["fid"], kid: result["kid_mean"], f"{kid}_std": result["kid_std"]}


def build_evaluator(config: Config, data, progress: bool = False) -> Toy2DEvaluator | ImageEvaluator | PointsEvaluator:
    """Images: :class:`ImageEvaluator`; 2D points (the toy sets or a file's): :class:`Toy2DEvaluator`
    over the data's square; points of other dimensions: :class:`PointsEvaluator`. ``progress``: show a
    bar over the long final 2D passes."""
    if len(data.input_shape) == 3:
        return ImageEvaluator(config, data)
    if tuple(data.input_shape) == (2,):
        return Toy2DEvaluator(config, data, progress)
    return PointsEvaluator(config, data)
