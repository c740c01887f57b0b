"""A pass-by-pass reference of one Soft-IntroVAE update, written as SPEC §2 / Algorithm 2 reads.

This is what a user of the official training loop pays per iteration: every decoder and encoder
call of each phase run separately, the decoder's outputs recomputed in the decoder phase, and the
deterministic reconstruction pass that the official loop runs only for its log line. It exists so
that tests and benchmarks can check the optimized ``softintrovae.methods.SoftIntroVAE`` against it
(same losses, same parameters) and measure the speed-up. Training never uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .objectives import (
    kl_to_standard_normal,
    negative_elbo,
    reconstruction_loss,
    reparameterize,
    soft_introvae_decoder_loss,
    soft_introvae_encoder_loss,
    vae_loss,
)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def reference_vae_step(encoder, decoder, optimizer_encoder, optimizer_decoder, x: Tensor, *, beta_rec: float, beta_kl: float) -> dict[str, Tensor]:
    """One β-VAE update (the warm-up), as the official loop does it."""
    mu, logvar = encoder(x)
    z = reparameterize(mu, logvar)
    x_r = decoder(z)
    rec = reconstruction_loss(x, x_r)
    kl = kl_to_standard_normal(mu, logvar)
    loss = vae_loss(rec, kl, beta_rec, beta_kl)
    optimizer_encoder.zero_grad()
    optimizer_decoder.zero_grad()
    loss.backward()
    optimizer_encoder.step()
    optimizer_decoder.step()
    return {"loss": loss.detach(), "rec": rec.detach(), "kl": kl.detach()}


def reference_soft_introvae_step(
    encoder,
    decoder,
    optimizer_encoder,
    optimizer_decoder,
    x: Tensor,
    *,
    z_dim: int,
    beta_rec: float,
    beta_kl: float,
    beta_neg: float,
    gamma_r: float = 1e-8,
    scale: float,
    detach_negative_target: bool = False,
    reconstruction: str = "mse",
) -> dict[str, Tensor]:
    """One Soft-IntroVAE update, pass by pass (SPEC §2), plus the official logging pass;
    ``reconstruction`` is the kind of every reconstruction error (``mse`` or ``bce``)."""
    # ---- encoder phase: decoder frozen, gradients flow through it into the encoder
    _set_requires_grad(encoder, True)
    _set_requires_grad(decoder, False)
    z_prior = torch.randn(x.shape[0], z_dim, device=x.device)
    x_f = decoder(z_prior)
    mu, logvar = encoder(x)
    z = reparameterize(mu, logvar)
    x_r = decoder(z)
    rec = reconstruction_loss(x, x_r, reconstruction)
    kl = kl_to_standard_normal(mu, logvar)
    mu_r, logvar_r = encoder(x_r.detach())
    x_rr = decoder(reparameterize(mu_r, logvar_r))
    mu_f, logvar_f = encoder(x_f.detach())
    x_ff = decoder(reparameterize(mu_f, logvar_f))
    target_r = x_r.detach() if detach_negative_target else x_r
    elbo_r = negative_elbo(target_r, x_rr, mu_r, logvar_r, beta_rec, beta_neg, reconstruction)
    elbo_f = negative_elbo(x_f, x_ff, mu_f, logvar_f, beta_rec, beta_neg, reconstruction)
    loss_encoder = soft_introvae_encoder_loss(rec, kl, [elbo_r, elbo_f], beta_rec=beta_rec, beta_kl=beta_kl, scale=scale)
    optimizer_encoder.zero_grad()
    loss_encoder.backward()
    optimizer_encoder.step()

    # ---- decoder phase: encoder frozen (and already updated), same z and z_p
    _set_requires_grad(encoder, False)
    _set_requires_grad(decoder, True)
    x_f = decoder(z_prior)
    x_r = decoder(z.detach())
    rec_d = reconstruction_loss(x, x_r, reconstruction)
    mu_r, logvar_r = encoder(x_r)
    z_r = reparameterize(mu_r, logvar_r)
    mu_f, logvar_f = encoder(x_f)
    z_f = reparameterize(mu_f, logvar_f)
    x_rr = decoder(z_r.detach())
    x_ff = decoder(z_f.detach())
    kl_r = kl_to_standard_normal(mu_r, logvar_r)
    kl_f = kl_to_standard_normal(mu_f, logvar_f)
    rec_rr = reconstruction_loss(x_r.detach(), x_rr, reconstruction)
    rec_ff = reconstruction_loss(x_f.detach(), x_ff, reconstruction)
    loss_decoder = soft_introvae_decoder_loss(
        rec_d, [kl_r, kl_f], [rec_rr, rec_ff], beta_rec=beta_rec, beta_kl=beta_kl, gamma_r=gamma_r, scale=scale
    )
    optimizer_decoder.zero_grad()
    loss_decoder.backward()
    optimizer_decoder.step()

    # ---- the official loop's log line: a deterministic reconstruction of the batch
    mu_det, _ = encoder(x)
    rec_det = reconstruction_loss(x, decoder(mu_det), reconstruction)
    _set_requires_grad(encoder, True)
    return {
        "loss_encoder": loss_encoder.detach(),
        "loss_decoder": loss_decoder.detach(),
        "rec": rec.detach(),
        "kl": kl.detach(),
        "kl_rec": kl_r.detach(),
        "kl_fake": kl_f.detach(),
        "rec_deterministic": rec_det.detach(),
    }
