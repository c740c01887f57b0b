"""What a run on points of any dimension D ≠ 2 measures: likelihood and reconstruction (2D points
get the toy sets' histogram metrics and plots instead, see :mod:`softintrovae.evaluation`).

On a fixed sample of ``eval.num_samples`` of the data's points, in model units (standardised):

- ``rec_mse``: ‖x − D(μ(x))‖² summed over the D coordinates, mean over points;
- ``kl``: KL(q(z|x) ‖ N(0, I)), mean over points;
- ``elbo``: the ELBO with β = 1 under the decoder density the loss implies (Gaussian with
  σ² = 1/(2β_rec) per coordinate for ``mse``), mean over points, in nats;
- ``log_px_iw5``: the importance-weighted estimate of log p(x) with 5 draws (:mod:`softintrovae.likelihood`).

The final evaluation also writes ``samples.npz``: ``eval.num_samples`` decoded prior samples in the
data's own units (standardisation undone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Config
from .files import atomic_write_bytes
from .likelihood import score_images
from .models import eval_mode
from .objectives import kl_to_standard_normal, reconstruction_loss

IW_SAMPLES = 5


class PointsEvaluator:
    """Likelihood and reconstruction metrics of a model of D-dimensional points (see the module docstring)."""

    def __init__(self, config: Config, data):
        self.config, self.data = config, data
        self.pictures: dict[str, Path] = {}  # no figures for D != 2

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, decoder: nn.Module, out_dir: Path, step: int, final: bool) -> dict[str, float]:
        cfg, method = self.config.eval, self.config.method
        device = next(decoder.parameters()).device
        points = self.data.sample(min(cfg.num_samples, len(self.data)), torch.Generator().manual_seed(cfg.seed))
        with eval_mode(encoder, decoder):
            mu, logvar = encoder(points.to(device))
            rec = reconstruction_loss(points.to(device), decoder(mu).float(), "mse", reduction="none")
            kl = kl_to_standard_normal(mu, logvar, reduction="none")
        scores = score_images(encoder, decoder, points, seed=cfg.seed, beta_rec=method.beta_rec, beta_kl=method.beta_kl,
                              kind=method.reconstruction, samples=IW_SAMPLES)  # fmt: skip
        metrics = {"rec_mse": float(rec.mean()), "kl": float(kl.mean()), "elbo": float(scores["elbo"].mean()),
                   f"log_px_iw{IW_SAMPLES}": float(scores["iw"].mean())}  # fmt: skip
        if final:
            z = torch.randn(cfg.num_samples, decoder.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
            with eval_mode(decoder):
                samples = self.data.standardization.invert(decoder(z.to(device)).float().cpu()).numpy()
            atomic_write_bytes(out_dir / "samples.npz", lambda f: np.savez_compressed(f, samples=samples.astype(np.float32)))
        return metrics


__all__ = ["PointsEvaluator"]
