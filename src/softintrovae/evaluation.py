"""Evaluators: what a run measures and draws, periodically during training and at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Config
from .data import Toy2DStream
from .metrics import deterministic_negative_elbo, grid_normalized_elbo, histogram_metrics, square_grid
from .plots import normalized_density, plot_density, plot_samples
from .rundir import atomic_write_bytes


class eval_mode:
    """Put modules in eval mode (and no_grad) for a block, restoring their previous modes."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.modes = [m.training for m in self.modules]
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)
        self.no_grad.__exit__(*exc)


class Toy2DEvaluator:
    """KL / JSD from histograms every evaluation; gnELBO and the density plot at the end (SPEC §3).

    Evaluation draws from its own seeded generators, so it never changes the training's random
    stream: a run evaluated often and one evaluated rarely train identically.
    """

    def __init__(self, config: Config, data: Toy2DStream):
        self.config, self.data = config, data

    def __call__(self, encoder: nn.Module, decoder: nn.Module, out_dir: Path, step: int, final: bool) -> dict[str, float]:
        cfg, limit = self.config.eval, self.data.limit
        device = next(decoder.parameters()).device
        data_gen = torch.Generator().manual_seed(cfg.seed)
        noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        with eval_mode(encoder, decoder):
            real = self.data.sample(cfg.num_samples, data_gen)
            z = torch.randn(cfg.num_samples, self.config.model.z_dim, generator=noise_gen).to(device)
            generated = decoder(z).float().cpu()
            metrics = histogram_metrics(real.numpy(), generated.numpy(), limit, cfg.bins)
            name = self.config.name
            if final:
                points = self.data.sample(cfg.elbo_samples, data_gen).to(device)
                grid = square_grid(limit, cfg.grid_size, device)
                neg_elbo_data = deterministic_negative_elbo(encoder, decoder, points)
                neg_elbo_grid = deterministic_negative_elbo(encoder, decoder, grid)
                metrics["gnelbo"] = grid_normalized_elbo(neg_elbo_data, neg_elbo_grid)
                grid_image = neg_elbo_grid.reshape(cfg.grid_size, cfg.grid_size).cpu().numpy()
                plot_density(grid_image, limit, out_dir / "density.png", f"{name}: exp(ELBO), step {step}")
                save_final_arrays(out_dir, generated.numpy(), grid_image, limit)
                samples_path = out_dir / "samples.png"
            else:
                samples_path = out_dir / "plots" / f"samples_step{step:07d}.png"
            title = f"{name}, step {step}: KL {metrics['kl']:.3f}, JSD {metrics['jsd_official']:.3f}"
            plot_samples(real.numpy(), generated.numpy(), limit, samples_path, title)
        return metrics


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
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def build_evaluator(config: Config, data: Toy2DStream) -> Toy2DEvaluator:
    return Toy2DEvaluator(config, data)
