"""Per-sample likelihood scores of a trained model: ELBO and importance-weighted log p(x) (paper §6.5, §9.7).

The decoder's likelihood is the one its training loss implies (SPEC §2 sums the reconstruction
error over data dimensions):

- ``mse``: β_rec·‖x − x̂‖² is −log N(x; x̂, σ²I) up to a constant when σ² = 1 / (2β_rec), so
  log p(x|z) = −β_rec·‖x − x̂‖² − (D/2)·log(π / β_rec) — a density in nats over the D pixels in [0, 1];
- ``bce``: a Bernoulli per pixel, log p(x|z) = −BCE(x, x̂), β_rec = 1.

With q(z|x) = N(μ, diag σ²) from the encoder and p(z) = N(0, I), for z_1..z_M ~ q(z|x):

- ``elbo``      (1/M) Σ_i log w_i with w_i = p(x|z_i) p(z_i) / q(z_i|x): the ELBO with β = 1 in nats
  (its Monte-Carlo form, so that on the same draws it never exceeds ``iw``, by Jensen);
- ``elbo_beta`` −(β_rec·L_rec + β_kl·KL), the run's own β-weighted objective with the analytic KL
  (a score, not a density);
- ``iw``        log (1/M) Σ_i w_i, by log-sum-exp: a lower bound on log p(x) that tightens as M
  grows (Burda et al.) and equals log p(x) when q(z|x) is the exact posterior.

Everything runs in eval mode and without gradients; z draws come from a seeded CPU generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .models import eval_mode, forward, num_classes_of
from .objectives import full_precision, kl_to_standard_normal, reconstruction_loss

SCORES = ("elbo", "elbo_beta", "iw")
LOG_2PI = math.log(2 * math.pi)


def decoder_log_likelihood(x: Tensor, x_hat: Tensor, kind: str, beta_rec: float) -> Tensor:
    """log p(x|z) per sample, (B,): the Gaussian (``mse``) or Bernoulli (``bce``) the loss implies."""
    if kind == "bce":
        return -reconstruction_loss(x, x_hat, "bce", reduction="none")
    if beta_rec <= 0:
        raise ValueError(f"a Gaussian decoder needs beta_rec > 0, got {beta_rec}")
    dims = x[0].numel()
    return -beta_rec * reconstruction_loss(x, x_hat, "mse", reduction="none") - 0.5 * dims * math.log(math.pi / beta_rec)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag exp(logvar)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def score_batch(
    encoder: nn.Module,
    decoder: nn.Module,
    x: Tensor,
    *,
    beta_rec: float,
    beta_kl: float,
    kind: str = "mse",
    samples: int = 5,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """``elbo``, ``elbo_beta`` and ``iw`` (see the module docstring) for a batch x, each (B,) on the CPU."""
    if samples < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {samples}")
    mu, logvar = (full_precision(t) for t in forward(encoder, x, labels))
    batch, z_dim = mu.shape
    eps = torch.randn(samples, batch, z_dim, generator=generator, dtype=torch.float64).to(mu.device, mu.dtype)
    z = mu + eps * torch.exp(0.5 * logvar)  # (M, B, z)
    flat_labels = None if labels is None else labels.repeat(samples)
    x_hat = full_precision(forward(decoder, z.reshape(samples * batch, z_dim), flat_labels))
    x_rep = full_precision(x).repeat(samples, *([1] * (x.ndim - 1)))
    log_px_z = decoder_log_likelihood(x_rep, x_hat, kind, beta_rec).view(samples, batch)
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    log_qz = log_normal(z, mu, logvar)
    kl = kl_to_standard_normal(mu, logvar, reduction="none")
    rec = reconstruction_loss(x_rep, x_hat, kind, reduction="none").view(samples, batch).mean(0)
    log_w = log_px_z + log_pz - log_qz  # (M, B)
    iw = torch.logsumexp(log_w, dim=0) - math.log(samples)
    return {
        "elbo": log_w.mean(0).cpu(),
        "elbo_beta": (-(beta_rec * rec + beta_kl * kl)).cpu(),
        "iw": iw.cpu(),
    }


def _batches(images: Tensor, labels: Tensor | None, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], None if labels is None else labels[start : start + batch_size]


def score_images(
    encoder: nn.Module,
    decoder: nn.Module,
    images: Tensor,
    *,
    seed: int = 0,
    labels: Tensor | None = None,
    batch_size: int = 256,
    progress=None,
    **score_settings,
) -> dict[str, Tensor]:
    """Scores of float images (N, C, H, W) in [0, 1], in batches, networks in eval mode.

    ``score_settings`` are :func:`score_batch`'s (beta_rec, beta_kl, kind, samples); the draws come
    from one generator seeded with ``seed``. A class-conditional model needs ``labels``;
    ``progress`` (a tqdm bar) is advanced per image.
    """
    if num_classes_of(decoder) and labels is None:
        raise ValueError("a class-conditional model needs the images' labels to score them")
    device = next(decoder.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[Tensor]] = {name: [] for name in SCORES}
    with eval_mode(encoder, decoder):
        for x, y in _batches(images, labels, batch_size):
            labels_here = None if y is None else y.to(device)
            scores = score_batch(encoder, decoder, x.to(device), generator=generator, labels=labels_here, **score_settings)
            for name in SCORES:
                parts[name].append(scores[name])
            if progress is not None:
                progress.update(len(x))
    return {name: torch.cat(values) for name, values in parts.items()}


def bits_per_dim(log_likelihood: Tensor, dims: int) -> Tensor:
    """−log p(x) in bits per data dimension."""
    return -log_likelihood / (dims * math.log(2))


__all__ = ["SCORES", "bits_per_dim", "decoder_log_likelihood", "log_normal", "score_batch", "score_images"]
