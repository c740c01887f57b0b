"""The objectives of VAE, IntroVAE and Soft-IntroVAE as pure functions.

Conventions (SPEC §2, as the official code trains): a reconstruction error is summed over all
data dimensions, a KL divergence over latent dimensions, and batch reductions are means. Every
"negative ELBO" here is a per-sample loss (lower is better), so the paper's
``exp(2s·ELBO)`` reads ``exp(-2s·negative_elbo)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RECONSTRUCTION_KINDS = ("mse", "bce", "perceptual")
# A reconstruction error is one of the kinds by name, or a function (x, x̂) → (B,) per-sample error
# for the kinds that need a network (``perceptual``: see softintrovae.perceptual), passed in by the caller.
Reconstruction = str | Callable[[Tensor, Tensor], Tensor]


def full_precision(t: Tensor) -> Tensor:
    """Upcast fp16/bf16 (autocast outputs) to fp32; leave fp32 and fp64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r} (expected mean, sum or none)")


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """z = μ + σ·ε with ε ~ N(0, I) (drawn from the global generator unless given)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps * torch.exp(0.5 * logvar)


def reconstruction_loss(x: Tensor, x_hat: Tensor, kind: Reconstruction = "mse", reduction: str = "mean") -> Tensor:
    """Reconstruction error summed over all non-batch dimensions.

    ``mse``: squared error (a Gaussian decoder up to constants); ``bce``: binary cross-entropy,
    with ``x_hat`` a probability in [0, 1]; a function: its per-sample error ``kind(x, x_hat)`` (the
    perceptual loss). Computed in fp32 whatever the autocast dtype.
    """
    if callable(kind):
        return _reduce(full_precision(kind(full_precision(x), full_precision(x_hat))), reduction)
    x, x_hat = full_precision(x.flatten(1)), full_precision(x_hat.flatten(1))
    if kind == "mse":
        per_sample = F.mse_loss(x_hat, x, reduction="none").sum(1)
    elif kind == "bce":
        per_sample = F.binary_cross_entropy(x_hat, x, reduction="none").sum(1)
    elif kind == "perceptual":
        raise ValueError("reconstruction loss 'perceptual' needs its network: pass the loss function itself (softintrovae.perceptual)")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r} (expected one of {RECONSTRUCTION_KINDS})")
    return _reduce(per_sample, reduction)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor, reduction: str = "mean", weights: Tensor | None = None) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over latent dimensions; μ, log σ²: (B, z_dim).

    ``weights`` (z_dim,), if given, weighs each dimension's KL: a model with several latents (a
    content and a class latent) gives each its own β this way, Σ_g β_g·KL_g.
    """
    mu, logvar = full_precision(mu), full_precision(logvar)
    terms = 1.0 + logvar - mu.pow(2) - logvar.exp()  # (B, z_dim)
    per_sample = -0.5 * (terms if weights is None else terms * weights).sum(1)
    return _reduce(per_sample, reduction)


def negative_elbo(
    x: Tensor,
    x_hat: Tensor,
    mu: Tensor,
    logvar: Tensor,
    beta_rec: float,
    beta_kl: float,
    kind: str = "mse",
    kl_weights: Tensor | None = None,
) -> Tensor:
    """Per-sample β-weighted negative ELBO: β_rec·L_rec(x, x̂) + β_kl·KL(q(z|x) ‖ p(z)); shape (B,).

    With ``kl_weights`` the KL is weighed per latent dimension (see :func:`kl_to_standard_normal`).
    """
    rec = reconstruction_loss(x, x_hat, kind, reduction="none")
    return beta_rec * rec + beta_kl * kl_to_standard_normal(mu, logvar, reduction="none", weights=kl_weights)


def vae_loss(rec: Tensor, kl: Tensor, beta_rec: float, beta_kl: float) -> Tensor:
    """β-VAE objective from batch-mean reconstruction error and KL (also the warm-up loss)."""
    return beta_rec * rec + beta_kl * kl


def expected_exp_elbo(neg_elbo: Tensor, scale: float) -> Tensor:
    """mean_b exp(−2s·negative_elbo_b), the paper's exp(2s·ELBO) with α = 2; in (0, 1].

    The exponent is clamped at the log of the dtype's smallest normal number, so a very negative
    ELBO gives a tiny positive term instead of underflowing to 0 (whose log would be −inf); the
    gradient there is 0, as an underflowed exp's is, so training is unchanged.
    """
    exponent = -2.0 * scale * neg_elbo
    return torch.exp(exponent.clamp(min=math.log(torch.finfo(exponent.dtype).tiny))).mean()


def soft_introvae_encoder_loss(
    rec: Tensor,
    kl: Tensor,
    negatives_neg_elbo: Sequence[Tensor],
    *,
    beta_rec: float,
    beta_kl: float,
    scale: float,
) -> Tensor:
    """Encoder loss of Eq. 7 / Algorithm 2 (minimised).

    ``L_E = s·(β_rec·L_rec(x) + β_kl·KL(x)) + ½·mean_k mean_b exp(−2s·elbo_k)``, where ``k`` runs
    over the negatives (reconstructions and prior samples) and ``elbo_k`` is their per-sample
    negative ELBO with β_rec and β_neg. With two negatives the last term is ``0.25·(a + b)``.
    """
    exp_terms = [expected_exp_elbo(e, scale) for e in negatives_neg_elbo]
    return scale * vae_loss(rec, kl, beta_rec, beta_kl) + 0.5 * torch.stack(exp_terms).mean()


def soft_introvae_decoder_loss(
    rec: Tensor,
    negatives_kl: Sequence[Tensor],
    negatives_rec: Sequence[Tensor],
    *,
    beta_rec: float,
    beta_kl: float,
    gamma_r: float,
    scale: float,
) -> Tensor:
    """Decoder loss of Eq. 7 / Algorithm 2 (minimised).

    ``L_D = s·(β_rec·L_rec(x) + mean_k(β_kl·KL(x_k) + γ_r·β_rec·L_rec(x_k, x_kk)))`` with batch-mean
    KL and reconstruction errors of the negatives under the (already updated) encoder.
    """
    negative_terms = [beta_kl * k + gamma_r * beta_rec * r for k, r in zip(negatives_kl, negatives_rec)]
    return scale * (beta_rec * rec + torch.stack(negative_terms).mean())


def introvae_encoder_loss(
    rec: Tensor,
    kl: Tensor,
    negatives_kl: Sequence[Tensor],
    *,
    beta_rec: float,
    beta_kl: float,
    beta_neg: float,
    margin: float,
) -> Tensor:
    """IntroVAE encoder loss (Appendix 9.1.1): β_rec·L_rec + β_kl·KL + β_neg·mean_k mean [m − KL(x_k)]₊.

    Each entry of ``negatives_kl`` is one kind of negative's KL: per sample (B,), for the hinge on each
    sample as the appendix writes it, or its batch mean (a scalar), for the hinge on the mean.
    """
    hinges = [F.relu(margin - k).mean() for k in negatives_kl]
    return vae_loss(rec, kl, beta_rec, beta_kl) + beta_neg * torch.stack(hinges).mean()


def introvae_decoder_loss(rec: Tensor, negatives_kl: Sequence[Tensor], *, beta_rec: float, beta_neg: float) -> Tensor:
    """IntroVAE decoder loss (Appendix 9.1.1): β_rec·L_rec + β_neg·mean_k mean KL(x_k)."""
    return beta_rec * rec + beta_neg * torch.stack([k.mean() for k in negatives_kl]).mean()
