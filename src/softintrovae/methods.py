"""Training methods: one update of VAE, IntroVAE or Soft-IntroVAE for any encoder/decoder pair.

An encoder maps x to (μ, log σ²) and a decoder maps z to x̂. Each method owns the two Adam
optimizers' update order (SPEC §2): VAE updates both jointly; the introspective methods run an
encoder phase, then a decoder phase with the updated encoder. Introspective methods start with
``vae_warmup_steps`` plain β-VAE updates.

What the optimized step shares (it gives the pass-by-pass reference's losses and parameters, see
``softintrovae.reference``):

- x_r = D(z) and x_f = D(z_p) are decoded once and serve both phases: the decoder's weights do
  not change until the decoder phase's own update. Each phase back-propagates
  only into its own network (``backward(inputs=...)``), so gradients still flow *through* the
  frozen network, as in the paper, but never accumulate into it.
- Reconstructions and prior samples go through the encoder and decoder as one batch of 2B,
  except in networks with BatchNorm: there batch statistics depend on what is batched together,
  so each kind goes through in its own call, as in the official image trainer (:func:`per_kind`).
- The logged losses are the ones the update computed; no pass runs only for logging.

A model with several latents (the translation model's content and class latents) says so through
its encoder's :class:`~softintrovae.models.base.LatentLayout`; each latent's KL then gets its own β_kl
and β_neg (:func:`latent_betas`), carried as per-dimension KL weights, and its KL is logged as
``kl_<name>``. The β's a step uses are read from one place, :meth:`Method.set_config`.

Class-conditional networks take the batch's labels as a second argument; every call of a step
passes them (negatives keep the class of the real image they came from). Backward and optimizer
steps go through a :class:`Stepper`, which adds fp16 loss scaling and cross-process gradient
averaging when those are on.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .models.base import LatentLayout, decode_prior, forward, latents_of
from .objectives import (
    Reconstruction,
    expected_exp_elbo,
    introvae_decoder_loss,
    introvae_encoder_loss,
    kl_to_standard_normal,
    negative_elbo,
    reconstruction_loss,
    reparameterize,
    soft_introvae_decoder_loss,
    soft_introvae_encoder_loss,
    vae_loss,
)

if TYPE_CHECKING:  # the config module validates method names against METHODS below
    from .config import MethodConfig

Losses = dict[str, Tensor]


def _detached(losses: Losses) -> Losses:
    """The logged losses without their graphs: the encoder phase's retained graph is then freed
    except for [D(z); D(z_p)], which the decoder phase back-propagates through again."""
    return {name: value.detach() for name, value in losses.items()}


def _means_per_kind(per_sample: Tensor) -> list[Tensor]:
    """Batch means of the reconstructions' and the prior samples' halves of a (2B,) tensor."""
    return [half.mean() for half in per_sample.chunk(2)]


def latent_betas(config: MethodConfig, latents: LatentLayout) -> tuple[float, Tensor | None, float, Tensor | None]:
    """(β_kl, KL weights, β_neg, KL weights of the negatives) for a model's latents.

    One latent: the config's scalars and no weights, so the losses are computed exactly as always.
    Several latents: each dimension's KL is weighed by its latent's β (``beta_kl_class``/``beta_neg_class``
    for the latent named ``class``, ``beta_kl``/``beta_neg`` for the others), and the scalar β's are 1.
    """
    if not latents.grouped:
        return config.beta_kl, None, config.beta_neg, None
    names, sizes = latents.names, latents.sizes

    def weights(default: float, for_class: float | None) -> Tensor:
        betas = [for_class if name == "class" and for_class is not None else default for name in names]
        return torch.cat([torch.full((size,), float(beta)) for size, beta in zip(sizes, betas)])

    return 1.0, weights(config.beta_kl, config.beta_kl_class), 1.0, weights(config.beta_neg, config.beta_neg_class)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def per_kind(network: nn.Module, batch: Tensor, separately: bool, labels: Tensor | None = None):
    """network([reconstructions; prior samples]) for a (2B, ...) batch (and its (2B,) labels, if any).

    With ``separately`` each half goes through its own call and the outputs (a tensor or a tuple of
    tensors) are concatenated, so BatchNorm normalises each kind with its own batch statistics.
    """
    if not separately:
        return forward(network, batch, labels)
    label_halves = (None, None) if labels is None else labels.chunk(2)
    outputs = [forward(network, half, y) for half, y in zip(batch.chunk(2), label_halves)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def average_gradients(params: list[Tensor]) -> None:
    """Average ``params``' gradients over the processes of the default group (one all-reduce).

    This is the gradient synchronisation of DistributedDataParallel, done by hand because each
    phase of an introspective step back-propagates into one network only, through the other.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(part.view_as(grad))


class NonFiniteUpdate(Exception):
    """An update's loss or gradient is NaN/inf; raised before the optimizers of that update step."""

    def __init__(self, loss_name: str, where: str, values: dict[str, Tensor] | None = None):
        self.loss_name, self.where = loss_name, where  # where: "loss" or "gradient"
        if where == "gradient":
            self.detail = f"gradient of {loss_name}"
        else:
            shown = values or {}
            self.detail = ", ".join(f"{name}={float(shown[name])}" if name in shown else name for name in loss_name.split(", "))
        super().__init__(f"non-finite {where} ({self.detail})")


def all_finite(loss: Tensor, grads: list[Tensor]) -> tuple[bool, bool]:
    """(loss finite, gradients finite), with one device synchronisation."""
    flags = [torch.isfinite(loss).all()]
    if grads:
        flags.append(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all())
    values = torch.stack(flags).tolist()
    return bool(values[0]), bool(values[-1])


class Stepper:
    """Backward pass and optimizer steps of one update.

    ``scaler`` (fp16-mixed) scales the loss and skips steps whose gradients overflowed; with
    ``distributed`` gradients are averaged over the processes before every optimizer step, so all
    processes keep identical parameters. A NaN/inf loss or gradient raises
    :class:`NonFiniteUpdate` before the optimizers step (with fp16 loss scaling, overflowing
    gradients are the scaler's to skip, so only the loss is checked).
    """

    def __init__(self, scaler: torch.amp.GradScaler | None = None, distributed: bool = False):
        self.scaler, self.distributed = scaler, distributed
        self.stepped = False  # an optimizer stepped since the last end_step()

    def update(
        self,
        optimizers: list[torch.optim.Optimizer],
        loss: Tensor,
        params: list[Tensor],
        retain_graph: bool = False,
        name: str = "loss",
    ) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward(inputs=params, retain_graph=retain_graph)
        if self.distributed:  # before the check, so that every process sees the same gradients
            average_gradients(params)
        grads = [] if self.scaler else [p.grad for p in params if p.grad is not None]
        loss_finite, grads_finite = all_finite(loss.detach(), grads)
        if not loss_finite:
            raise NonFiniteUpdate(name, "loss", {name: loss.detach()})
        if not grads_finite:
            raise NonFiniteUpdate(name, "gradient")
        for optimizer in optimizers:
            self.scaler.step(optimizer) if self.scaler else optimizer.step()
        self.stepped = True

    def end_step(self) -> None:
        """Once per training step, after all updates: adapt the fp16 loss scale."""
        if self.scaler:
            self.scaler.update()
        self.stepped = False

    def abandon_step(self) -> None:
        """After an update failed mid-step: close the scaler's record of the optimizers that did
        step, so that the next step starts clean (the caller restores the scale it wants)."""
        if self.scaler and self.stepped:
            self.scaler.update()
        self.stepped = False


@dataclass
class EncoderPhaseResult:
    """What the decoder phase reuses from the encoder phase."""

    decoded: Tensor  # (2B, ...) = [D(z); D(z_p)], with its graph to the decoder's weights
    rec: Tensor  # batch-mean L_rec(x, D(z)), with its graph
    losses: Losses


class Method:
    """Base class: holds the networks, their optimizers and the mixed-precision context."""

    name = "base"
    # forward/backward passes of one update relative to a VAE update, for scheduling many runs
    # (SPEC §2: the introspective phases re-encode and re-decode the reconstructions and prior samples)
    relative_step_cost = 1.0

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        optimizer_encoder: torch.optim.Optimizer,
        optimizer_decoder: torch.optim.Optimizer,
        config: MethodConfig,
        scale: float,
        z_dim: int | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        stepper: Stepper | None = None,
        reconstruction: Callable[[Tensor, Tensor], Tensor] | None = None,
    ):
        """``z_dim`` is needed only for networks that do not declare their latents (see
        :mod:`softintrovae.models.base`); ``reconstruction`` is the per-sample loss function of
        ``method.reconstruction: perceptual`` (see :mod:`softintrovae.perceptual`)."""
        self.encoder, self.decoder = encoder, decoder
        self.optimizer_encoder, self.optimizer_decoder = optimizer_encoder, optimizer_decoder
        self.latents = latents_of(encoder, z_dim)
        self.scale, self.z_dim = scale, self.latents.z_dim
        self.perceptual = reconstruction
        self.autocast = autocast
        self.stepper = stepper or Stepper()
        self.labels: Tensor | None = None  # the current batch's class labels (conditional networks)
        self.labels_per_kind: Tensor | None = None  # the same, twice: for [reconstructions; prior samples]
        self.encoder_params = [p for p in encoder.parameters() if p.requires_grad]
        self.decoder_params = [p for p in decoder.parameters() if p.requires_grad]
        self.encode_kinds_separately = has_batch_norm(encoder)
        self.decode_kinds_separately = has_batch_norm(decoder)
        self.set_config(config)

    def set_config(self, config: MethodConfig) -> None:
        """Take new settings (between steps: progressive growing changes β_neg by level). The steps
        read β_kl and β_neg (and their per-dimension weights) from here, never from the config."""
        if config.reconstruction == "perceptual" and self.perceptual is None:
            raise ValueError("method.reconstruction perceptual needs its loss function: pass reconstruction=...")
        self.config = config
        self.reconstruction: Reconstruction = self.perceptual if config.reconstruction == "perceptual" else config.reconstruction
        self.beta_kl, self.kl_weights, self.beta_neg, self.neg_weights = latent_betas(config, self.latents)
        if self.kl_weights is not None:
            device = next(self.encoder.parameters()).device
            self.kl_weights, self.neg_weights = self.kl_weights.to(device), self.neg_weights.to(device)

    def kl_per_latent(self, mu: Tensor, logvar: Tensor) -> Losses:
        """``kl_<name>``: the batch-mean KL of each latent of a several-latent model (unweighted); {} otherwise."""
        if self.kl_weights is None:
            return {}
        parts = zip(self.latents.names, self.latents.split(mu), self.latents.split(logvar))
        return {f"kl_{name}": kl_to_standard_normal(m, lv).detach() for name, m, lv in parts}

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = forward(self.encoder, x, self.labels)
        return mu.float(), logvar.float()

    def decode(self, z: Tensor) -> Tensor:
        return forward(self.decoder, z, self.labels)

    def decode_prior(self, z: Tensor) -> Tensor:
        """D(z_p) for prior samples (a style-based decoder mixes styles here)."""
        return decode_prior(self.decoder, z, self.labels)

    def encode_per_kind(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """μ, log σ² of a (2B, ...) batch [reconstructions; prior samples] (see :func:`per_kind`)."""
        mu, logvar = per_kind(self.encoder, x, self.encode_kinds_separately, self.labels_per_kind)
        return mu.float(), logvar.float()

    def decode_per_kind(self, z: Tensor) -> Tensor:
        """D of a (2B, z_dim) batch [z of reconstructions; z of prior samples] (see :func:`per_kind`)."""
        return per_kind(self.decoder, z, self.decode_kinds_separately, self.labels_per_kind)

    def in_warmup(self, step: int) -> bool:
        return False

    # K runs stacked into one batched model (softintrovae.stacked) give each run's block of rows its
    # own noise stream, so that each run draws what it would draw alone.
    run_generators: list[torch.Generator] | None = None

    def standard_normal(self, rows: int, device: torch.device) -> Tensor:
        """(rows, z_dim) draws of N(0, I): z_p and every ε of a step."""
        if self.run_generators is None:
            return torch.randn(rows, self.z_dim, device=device)
        per_run = rows // len(self.run_generators)
        return torch.cat([torch.randn(per_run, self.z_dim, device=device, generator=g) for g in self.run_generators])

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return reparameterize(mu, logvar, self.standard_normal(mu.shape[0], mu.device))

    def reparameterize_per_kind(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """Reparameterize a (2B, z) batch of [reconstructions; prior samples], drawing ε per kind in
        Algorithm 2's order, so that the batched step consumes the random stream as the reference."""
        eps = torch.cat([self.standard_normal(half.shape[0], half.device) for half in mu.chunk(2)])
        return reparameterize(mu, logvar, eps)

    def step(self, x: Tensor, step: int, labels: Tensor | None = None) -> Losses:
        """One update on batch x (labels: its classes, for conditional networks) at training step
        ``step`` (0-based); returns detached losses."""
        self.labels = labels
        self.labels_per_kind = None if labels is None else torch.cat([labels, labels])
        losses = self.vae_update(x) if self.in_warmup(step) else self.update(x)
        self.stepper.end_step()
        return {k: v.detach() for k, v in losses.items()}

    def update(self, x: Tensor) -> Losses:
        raise NotImplementedError

    def vae_update(self, x: Tensor) -> Losses:
        """A β-VAE update of both networks on one joint loss (also the introspective warm-up)."""
        cfg = self.config
        with self.autocast():
            mu, logvar = self.encode(x)
            x_r = self.decode(self.reparameterize(mu, logvar))
        rec = reconstruction_loss(x, x_r, self.reconstruction)
        kl = kl_to_standard_normal(mu, logvar, weights=self.kl_weights)
        loss = vae_loss(rec, kl, cfg.beta_rec, self.beta_kl)
        both = [self.optimizer_encoder, self.optimizer_decoder]
        self.stepper.update(both, loss, self.encoder_params + self.decoder_params, name="loss")
        return {"loss": loss, "rec": rec, "kl": kl, **self.kl_per_latent(mu, logvar)}


class VAE(Method):
    name = "vae"

    def update(self, x: Tensor) -> Losses:
        return self.vae_update(x)


class IntrospectiveMethod(Method):
    """Encoder phase, then decoder phase (SPEC §2), after a VAE warm-up."""

    def in_warmup(self, step: int) -> bool:
        return step < self.config.vae_warmup_steps

    def update(self, x: Tensor) -> Losses:
        result = self.encoder_phase(x)
        return {**result.losses, **self.decoder_phase(result)}

    def encode_and_decode_real_and_prior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """μ, log σ² of x, and [D(z); D(z_p)]; z_p ~ N(0, I) is drawn before z, as in Algorithm 2.

        The two decodes stay separate calls: batched, the encoder phase's backward would also
        compute an input gradient for the prior half, which leads to no encoder weight.
        """
        z_prior = self.standard_normal(x.shape[0], x.device)
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        decoded = torch.cat([self.decode(z), self.decode_prior(z_prior)])
        return mu, logvar, decoded

    def encoder_phase(self, x: Tensor) -> EncoderPhaseResult:
        raise NotImplementedError

    def decoder_phase(self, result: EncoderPhaseResult) -> Losses:
        raise NotImplementedError


class SoftIntroVAE(IntrospectiveMethod):
    """Soft-IntroVAE (Eq. 7, Algorithm 2) with reconstructions and prior samples as negatives."""

    name = "soft-introvae"
    relative_step_cost = 3.0

    def encoder_phase(self, x: Tensor) -> EncoderPhaseResult:
        cfg = self.config
        with self.autocast():
            mu, logvar, decoded = self.encode_and_decode_real_and_prior(x)  # decoded: [x_r; x_f]
            mu_n, logvar_n = self.encode_per_kind(decoded.detach())
            decoded_n = self.decode_per_kind(self.reparameterize_per_kind(mu_n, logvar_n))  # [x_rr; x_ff]
        rec = reconstruction_loss(x, decoded[: x.shape[0]], self.reconstruction)
        kl = kl_to_standard_normal(mu, logvar, weights=self.kl_weights)
        # The official image trainer leaves the target x_r attached, so encoder gradient also flows
        # through x_r = D(z) into z; detach_negative_target=True is the official 3D trainer's choice.
        target = decoded.detach() if cfg.detach_negative_target else decoded
        neg_elbo = negative_elbo(
            target, decoded_n, mu_n, logvar_n, cfg.beta_rec, self.beta_neg, self.reconstruction, kl_weights=self.neg_weights
        )
        neg_elbo_rec, neg_elbo_fake = neg_elbo.chunk(2)
        loss = soft_introvae_encoder_loss(
            rec, kl, [neg_elbo_rec, neg_elbo_fake], beta_rec=cfg.beta_rec, beta_kl=self.beta_kl, scale=self.scale
        )
        self.stepper.update([self.optimizer_encoder], loss, self.encoder_params, retain_graph=True, name="loss_encoder")
        losses = {
            "loss_encoder": loss,
            "rec": rec,
            "kl": kl,
            "exp_elbo_rec": expected_exp_elbo(neg_elbo_rec, self.scale),
            "exp_elbo_fake": expected_exp_elbo(neg_elbo_fake, self.scale),
            **self.kl_per_latent(mu, logvar),
        }
        return EncoderPhaseResult(decoded, rec, _detached(losses))

    def decoder_phase(self, result: EncoderPhaseResult) -> Losses:
        cfg = self.config
        with self.autocast():
            mu_n, logvar_n = self.encode_per_kind(result.decoded)  # the updated encoder
            decoded_n = self.decode_per_kind(self.reparameterize_per_kind(mu_n, logvar_n).detach())
        kl_rec, kl_fake = _means_per_kind(kl_to_standard_normal(mu_n, logvar_n, reduction="none", weights=self.kl_weights))
        rec_n = reconstruction_loss(result.decoded.detach(), decoded_n, self.reconstruction, reduction="none")
        loss = soft_introvae_decoder_loss(
            result.rec,
            [kl_rec, kl_fake],
            _means_per_kind(rec_n),
            beta_rec=cfg.beta_rec,
            beta_kl=self.beta_kl,
            gamma_r=cfg.gamma_r,
            scale=self.scale,
        )
        self.stepper.update([self.optimizer_decoder], loss, self.decoder_params, name="loss_decoder")
        return {"loss_decoder": loss, "kl_rec": kl_rec, "kl_fake": kl_fake}


class IntroVAE(IntrospectiveMethod):
    """IntroVAE with a hard margin m (Appendix 9.1.1):

        L_E = β_rec·L_rec(x) + β_kl·KL(x) + β_neg·[m − KL(E(D(z)))]₊,   L_D = β_rec·L_rec(x) + β_neg·KL(E(D(z))),

    no scale s. The negatives are the decoded prior samples D(z_p) (``method.introvae_negatives:
    prior``), or also the reconstructions (``both``, each kind's hinge averaged, as Soft-IntroVAE
    treats its negatives); the hinge takes each sample's KL (``method.introvae_hinge: per-sample``)
    or the batch mean (``batch-mean``). With several latents the negatives' KL weighs each latent
    by its β_neg, inside the hinge."""

    name = "introvae"
    relative_step_cost = 2.0

    @property
    def both_kinds(self) -> bool:
        return self.config.introvae_negatives == "both"

    def negatives(self, decoded: Tensor) -> Tensor:
        """What IntroVAE treats as fake out of [D(z); D(z_p)] (2B, ...)."""
        return decoded if self.both_kinds else decoded[len(decoded) // 2 :]

    def encode_negatives(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_per_kind(x) if self.both_kinds else self.encode(x)

    def negative_kls(self, mu: Tensor, logvar: Tensor) -> list[Tensor]:
        """Each kind's KL: per sample (B,) for the per-sample hinge, else its batch mean."""
        kl = kl_to_standard_normal(mu, logvar, reduction="none", weights=self.neg_weights)
        kinds = list(kl.chunk(2)) if self.both_kinds else [kl]
        return kinds if self.config.introvae_hinge == "per-sample" else [k.mean() for k in kinds]

    def kl_logs(self, kls: list[Tensor]) -> Losses:
        names = ("kl_rec", "kl_fake") if self.both_kinds else ("kl_fake",)
        return {name: k.mean() for name, k in zip(names, kls)}

    def encoder_phase(self, x: Tensor) -> EncoderPhaseResult:
        cfg = self.config
        with self.autocast():
            mu, logvar, decoded = self.encode_and_decode_real_and_prior(x)
            mu_n, logvar_n = self.encode_negatives(self.negatives(decoded).detach())
        rec = reconstruction_loss(x, decoded[: x.shape[0]], self.reconstruction)
        kl = kl_to_standard_normal(mu, logvar, weights=self.kl_weights)
        loss = introvae_encoder_loss(
            rec, kl, self.negative_kls(mu_n, logvar_n), beta_rec=cfg.beta_rec, beta_kl=self.beta_kl, beta_neg=self.beta_neg, margin=cfg.margin
        )
        self.stepper.update([self.optimizer_encoder], loss, self.encoder_params, retain_graph=True, name="loss_encoder")
        losses = {"loss_encoder": loss, "rec": rec, "kl": kl, **self.kl_per_latent(mu, logvar)}
        return EncoderPhaseResult(decoded, rec, _detached(losses))

    def decoder_phase(self, result: EncoderPhaseResult) -> Losses:
        cfg = self.config
        with self.autocast():
            mu_n, logvar_n = self.encode_negatives(self.negatives(result.decoded))  # the updated encoder
        kls = self.negative_kls(mu_n, logvar_n)
        loss = introvae_decoder_loss(result.rec, kls, beta_rec=cfg.beta_rec, beta_neg=self.beta_neg)
        self.stepper.update([self.optimizer_decoder], loss, self.decoder_params, name="loss_decoder")
        return {"loss_decoder": loss, **self.kl_logs(kls)}


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (VAE, IntroVAE, SoftIntroVAE)}


def build_method(
    config: MethodConfig,
    encoder: nn.Module,
    decoder: nn.Module,
    optimizers,
    scale: float,
    z_dim: int | None = None,
    autocast=nullcontext,
    stepper: Stepper | None = None,
    reconstruction: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Method:
    """The method named by ``config.name`` around the given networks and (encoder, decoder) optimizers."""
    optimizer_encoder, optimizer_decoder = optimizers
    method = METHODS[config.name]
    return method(encoder, decoder, optimizer_encoder, optimizer_decoder, config, scale, z_dim, autocast, stepper, reconstruction)
