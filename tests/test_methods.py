"""The optimized training step against the pass-by-pass reference, and gradient routing."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from softintrovae import methods
from softintrovae.config import MethodConfig
from softintrovae.errors import UserError
from softintrovae.data import Toy2DStream
from softintrovae.methods import (
    VAE,
    IntroVAE,
    NonFiniteUpdate,
    SoftIntroVAE,
    Stepper,
    average_gradients,
    has_batch_norm,
    latent_betas,
    per_kind,
)
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.models.base import LatentLayout
from softintrovae.objectives import introvae_decoder_loss, introvae_encoder_loss, kl_to_standard_normal, reconstruction_loss, reparameterize
from softintrovae.reference import reference_soft_introvae_step, reference_vae_step

HP = dict(beta_rec=0.2, beta_kl=0.3, beta_neg=0.9)


def make_pair(seed=0, hidden=64):
    torch.manual_seed(seed)
    encoder, decoder = MLPEncoder(hidden_dim=hidden), MLPDecoder(hidden_dim=hidden)
    opts = (torch.optim.Adam(encoder.parameters(), 2e-4), torch.optim.Adam(decoder.parameters(), 2e-4))
    return encoder, decoder, opts


def clone(encoder, decoder, opts):
    e2, d2 = copy.deepcopy(encoder), copy.deepcopy(decoder)
    o2 = (torch.optim.Adam(e2.parameters(), 2e-4), torch.optim.Adam(d2.parameters(), 2e-4))
    o2[0].load_state_dict(opts[0].state_dict())
    o2[1].load_state_dict(opts[1].state_dict())
    return e2, d2, o2


def params(*modules):
    return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])


def batches(n, batch_size=128):
    data = Toy2DStream("8gaussians", batch_size)
    return [data.batch(i) for i in range(n)]


def grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters()])


# (detach_negative_target, γ_r, reconstruction). At the paper's γ_r = 1e-8 the decoder phase's
# reconstructions of the negatives weigh nothing, so γ_r = 1 makes them (their kind, their detached
# targets and latents) count; bce checks that the negatives' errors take the run's kind too.
PARITY = [(False, 1e-8, "mse"), (True, 1e-8, "mse"), (False, 1.0, "mse"), (True, 1.0, "bce")]


@pytest.mark.parametrize("detach, gamma_r, reconstruction", PARITY)
def test_optimized_soft_introvae_step_equals_reference(detach, gamma_r, reconstruction):
    encoder, decoder, opts = make_pair()
    with torch.no_grad():  # steeper networks: a gradient through a missing detach is then far above rounding
        encoder.net[-1].weight.mul_(20)
        decoder.net[-1].weight.mul_(5)
    if reconstruction == "bce":  # probabilities out, data in [0, 1]
        decoder = nn.Sequential(decoder, nn.Sigmoid())
    ref_e, ref_d, ref_opts = clone(encoder, decoder, opts)
    settings = dict(detach_negative_target=detach, gamma_r=gamma_r, reconstruction=reconstruction)
    config = MethodConfig(name="soft-introvae", vae_warmup_steps=0, **settings, **HP)
    method = SoftIntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
    for i, x in enumerate(batches(6)):
        x = torch.sigmoid(x) if reconstruction == "bce" else x
        torch.manual_seed(100 + i)
        ours = method.step(x, i)
        torch.manual_seed(100 + i)
        ref = reference_soft_introvae_step(ref_e, ref_d, *ref_opts, x, z_dim=2, scale=0.5, **settings, **HP)
        for key in ("loss_encoder", "loss_decoder", "rec", "kl", "kl_rec", "kl_fake"):
            assert abs(ours[key].item() - ref[key].item()) <= 1e-6, key
        assert set(ours) - set(ref) == {"exp_elbo_rec", "exp_elbo_fake"}  # logged by the optimized step only
        # each phase's gradient (Adam's first steps move a parameter by about lr·sign(gradient),
        # which would hide a small difference of gradients)
        torch.testing.assert_close(grads(encoder), grads(ref_e), rtol=0, atol=1e-6)
        torch.testing.assert_close(grads(decoder), grads(ref_d), rtol=0, atol=1e-6)
    assert (params(encoder, decoder) - params(ref_e, ref_d)).abs().max().item() <= 1e-6
    assert not torch.equal(params(encoder), params(make_pair()[0]))  # training did move the weights


@pytest.mark.parametrize("cls", [SoftIntroVAE, IntroVAE])
def test_one_beta_for_every_latent_trains_as_a_single_latent(cls):
    """Two latents that share their β's train as one latent with those β's: the real data's KL is
    weighed by β_kl, the negatives' by β_neg in the encoder phase and by β_kl in the decoder phase.
    (IntroVAE's β_neg moves inside the hinge with several latents, so it is 1 here; the next test
    checks that weight.)"""
    beta_neg = 1.5 if cls is SoftIntroVAE else 1.0
    config = MethodConfig(name=cls.name, vae_warmup_steps=1, beta_rec=0.2, beta_kl=0.3, beta_neg=beta_neg)
    runs = []
    for layout in (None, LatentLayout(("content", "class"), (1, 1))):
        encoder, decoder, opts = make_pair()
        if layout is not None:
            encoder.latents = layout
        method = cls(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
        torch.manual_seed(0)
        losses = [method.step(x, i) for i, x in enumerate(batches(3))]
        runs.append((losses, params(encoder, decoder)))
    (single, single_params), (grouped, grouped_params) = runs
    for ours, theirs in zip(single, grouped):  # the logged KLs of several latents carry their weights
        losses = [k for k in ours if not k.startswith("kl")]
        assert {k: pytest.approx(ours[k].item(), abs=1e-6) for k in losses} == {k: theirs[k].item() for k in losses}
    assert set(grouped[-1]) - set(single[-1]) == {"kl_content", "kl_class"}
    assert torch.allclose(single_params, grouped_params, atol=1e-6)


def test_introvae_weighs_each_latent_of_its_negatives_by_its_beta_neg_inside_the_hinge():
    encoder, decoder, opts = make_pair()
    encoder.latents = LatentLayout(("content", "class"), (1, 1))
    config = MethodConfig(name="introvae", beta_kl=0.3, beta_neg=1.5, beta_kl_class=0.7)
    method = IntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
    mu, logvar = torch.randn(4, 2), torch.randn(4, 2)
    per_dimension = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    (kl,) = method.negative_kls(mu, logvar)
    torch.testing.assert_close(kl, 1.5 * per_dimension.sum(1))
    assert method.beta_neg == 1.0  # so the hinge is [m − 1.5·KL]₊, not 1.5·[m − KL]₊


@pytest.mark.parametrize("negatives, separately", [("both", True), ("both", False), ("prior", True), ("prior", False)])
def test_introvae_encodes_its_two_kinds_of_negatives_apart_when_the_encoder_has_batch_norm(negatives, separately):
    """An encoder with batch norm sees the reconstructions and the prior samples as separate batches
    (as in the reference), one without sees them together; with the prior samples alone there is one."""
    encoder, decoder, opts = make_pair()
    config = MethodConfig(name="introvae", vae_warmup_steps=0, introvae_negatives=negatives, **HP)
    method = IntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
    method.encode_kinds_separately = separately
    sizes = []
    encoder.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    method.step(batches(1, batch_size=8)[0], 0)
    negatives_calls = {("both", True): [8, 8], ("both", False): [16], ("prior", True): [8], ("prior", False): [8]}
    assert sizes == [8] + 2 * negatives_calls[negatives, separately]  # the real data, then each phase's negatives


@pytest.mark.parametrize("cls", [SoftIntroVAE, IntroVAE])
def test_a_non_finite_step_names_the_phase_whose_loss_failed(cls):
    encoder, decoder, opts = make_pair()
    method = cls(encoder, decoder, *opts, MethodConfig(name=cls.name, vae_warmup_steps=0, **HP), scale=0.5, z_dim=2)
    x = batches(1, batch_size=8)[0]
    result = method.encoder_phase(x)
    result.rec = torch.tensor(float("nan"))  # the real data's error, which the decoder phase reuses
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite loss \(loss_decoder=nan\)$"):
        method.decoder_phase(result)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite loss \(loss_encoder=nan\)$"):
        method.step(x, 0)
    method.config.vae_warmup_steps = 1
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite loss \(loss=nan\)$"):  # the warm-up's joint loss
        method.step(x, 0)


def test_build_method_passes_the_latent_size_of_networks_that_do_not_declare_it():
    encoder, decoder = nn.Linear(2, 6), nn.Linear(3, 2)
    opts = (torch.optim.Adam(encoder.parameters()), torch.optim.Adam(decoder.parameters()))
    method = methods.build_method(MethodConfig(name="introvae"), encoder, decoder, opts, scale=1.0, z_dim=3)
    assert isinstance(method, IntroVAE) and method.z_dim == 3


def warmup_rec_by_hand(encoder, decoder, x, error) -> float:
    """The reconstruction error of a warm-up step on x, drawing ε as a step seeded with 0 does."""
    with torch.no_grad():
        torch.manual_seed(0)
        mu, logvar = encoder(x)
        return error(x, decoder(reparameterize(mu, logvar))).item()


def test_a_warm_up_step_reconstructs_with_the_runs_kind():
    encoder, decoder, opts = make_pair()
    decoder = nn.Sequential(decoder, nn.Sigmoid())
    method = SoftIntroVAE(encoder, decoder, *opts, MethodConfig(vae_warmup_steps=1, reconstruction="bce", **HP), scale=0.5, z_dim=2)
    x = torch.sigmoid(batches(1)[0])
    expected = warmup_rec_by_hand(encoder, decoder, x, lambda x, x_hat: reconstruction_loss(x, x_hat, "bce"))
    torch.manual_seed(0)
    assert method.step(x, 0)["rec"].item() == pytest.approx(expected, abs=1e-6)


class Labelled(nn.Module):
    """A class-conditional wrapper that records the labels of every call (and shifts its inputs by them)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.seen = network, []

    def forward(self, inputs, labels):
        self.seen.append(labels)
        return self.network(inputs + labels[:, None])


@pytest.mark.parametrize("cls, separately", [(VAE, False), (SoftIntroVAE, False), (SoftIntroVAE, True), (IntroVAE, True)])
def test_every_call_of_a_conditional_step_gets_the_labels_of_its_rows(cls, separately):
    encoder, decoder, opts = make_pair()
    encoder, decoder = Labelled(encoder), Labelled(decoder)
    config = MethodConfig(name=cls.name, vae_warmup_steps=1, introvae_negatives="both", **HP)
    method = cls(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
    method.encode_kinds_separately = method.decode_kinds_separately = separately
    x, labels = batches(1, batch_size=6)[0], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    for step in (0, 1):  # the warm-up, then the introspective update
        method.step(x, step, labels)
    twice = torch.cat([labels, labels])
    calls = encoder.seen + decoder.seen
    assert len(calls) > 2 and all(seen is not None for seen in calls)
    assert all(torch.equal(seen, labels) or (not separately and torch.equal(seen, twice)) for seen in calls)


def test_an_introspective_step_draws_all_its_noise_from_the_methods_generators():
    """With a run's own generator (stacked runs), the global random state does not enter a step."""
    results = []
    for global_seed in (1, 2):
        encoder, decoder, opts = make_pair()
        method = SoftIntroVAE(encoder, decoder, *opts, MethodConfig(vae_warmup_steps=1, **HP), scale=0.5, z_dim=2)
        method.run_generators = [torch.Generator().manual_seed(0)]
        torch.manual_seed(global_seed)
        results.append([{k: v.item() for k, v in method.step(x, i).items()} for i, x in enumerate(batches(3))])
    assert results[0] == results[1]


def test_detaching_the_negative_target_changes_the_encoder_update():
    results = []
    for detach in (False, True):
        encoder, decoder, opts = make_pair()
        config = MethodConfig(vae_warmup_steps=0, detach_negative_target=detach, **HP)
        torch.manual_seed(0)
        SoftIntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2).encoder_phase(batches(1)[0])
        results.append(torch.cat([p.grad.flatten() for p in encoder.parameters()]))
    assert not torch.allclose(results[0], results[1])


def test_warmup_step_equals_reference_vae_step():
    encoder, decoder, opts = make_pair()
    ref_e, ref_d, ref_opts = clone(encoder, decoder, opts)
    method = SoftIntroVAE(encoder, decoder, *opts, MethodConfig(vae_warmup_steps=3, **HP), scale=0.5, z_dim=2)
    for i, x in enumerate(batches(3)):
        torch.manual_seed(i)
        ours = method.step(x, i)
        torch.manual_seed(i)
        ref = reference_vae_step(ref_e, ref_d, *ref_opts, x, beta_rec=0.2, beta_kl=0.3)
        assert ours["loss"].item() == pytest.approx(ref["loss"].item(), abs=1e-6)
    assert torch.allclose(params(encoder, decoder), params(ref_e, ref_d), atol=1e-6)
    assert "loss_encoder" in method.step(batches(4)[3], 3)  # warm-up over: introspective update


@pytest.mark.parametrize("cls", [SoftIntroVAE, IntroVAE])
def test_each_phase_updates_only_its_own_network(cls):
    encoder, decoder, opts = make_pair()
    method = cls(encoder, decoder, *opts, MethodConfig(name=cls.name, vae_warmup_steps=0, **HP), scale=0.5, z_dim=2)
    x = batches(1)[0]
    enc0, dec0 = params(encoder), params(decoder)
    result = method.encoder_phase(x)
    assert all(p.grad is None for p in decoder.parameters()), "encoder phase accumulated decoder gradients"
    assert torch.equal(params(decoder), dec0)
    enc1 = params(encoder)
    assert not torch.equal(enc1, enc0)
    encoder_grads = [p.grad.clone() for p in encoder.parameters()]
    method.decoder_phase(result)
    assert torch.equal(params(encoder), enc1)
    assert all(torch.equal(p.grad, g) for p, g in zip(encoder.parameters(), encoder_grads))
    assert not torch.equal(params(decoder), dec0)


# (negatives, hinge, reconstruction): the four objectives, and bce for the reconstruction's kind
INTROVAE = [("prior", "per-sample", "mse"), ("prior", "batch-mean", "mse"), ("both", "per-sample", "mse"), ("both", "batch-mean", "mse")]


@pytest.mark.parametrize("negatives, hinge, reconstruction", INTROVAE + [("prior", "per-sample", "bce")])
def test_introvae_step_equals_pass_by_pass_formula(negatives, hinge, reconstruction):
    """IntroVAE's step against Appendix 9.1.1 written out call by call: the decoded prior samples as the
    negatives (or also the reconstructions), the hinge on each sample's KL (or on the batch mean)."""
    encoder, decoder, opts = make_pair()
    with torch.no_grad():  # spread the negatives' KLs around the margin (≈ 1.7 … 2.2), so the two hinges differ
        encoder.net[-1].weight.mul_(40)
        decoder.net[-1].weight.mul_(10)
    if reconstruction == "bce":  # probabilities out, data in [0, 1]
        decoder = nn.Sequential(decoder, nn.Sigmoid())
    ref_e, ref_d, (ref_oe, ref_od) = clone(encoder, decoder, opts)
    settings = dict(introvae_negatives=negatives, introvae_hinge=hinge, reconstruction=reconstruction)
    config = MethodConfig(name="introvae", vae_warmup_steps=0, margin=2.0, **settings, **HP)
    method = IntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2)  # IntroVAE has no s: it must not use it

    def kls(fakes):
        per_sample = [kl_to_standard_normal(*ref_e(v), reduction="none") for v in fakes]
        return per_sample if hinge == "per-sample" else [k.mean() for k in per_sample]

    for i, x in enumerate(batches(3)):
        x = torch.sigmoid(x) if reconstruction == "bce" else x
        torch.manual_seed(i)
        ours = method.step(x, i)
        torch.manual_seed(i)
        z_prior = torch.randn(x.shape[0], 2)
        mu, logvar = ref_e(x)
        x_r = ref_d(reparameterize(mu, logvar))
        x_f = ref_d(z_prior)
        fakes = [x_r, x_f] if negatives == "both" else [x_f]
        rec, kl = reconstruction_loss(x, x_r, reconstruction), kl_to_standard_normal(mu, logvar)
        kl_e = kls([v.detach() for v in fakes])
        loss_e = introvae_encoder_loss(rec, kl, kl_e, beta_rec=0.2, beta_kl=0.3, beta_neg=0.9, margin=2.0)
        ref_oe.zero_grad()
        loss_e.backward(inputs=list(ref_e.parameters()), retain_graph=True)
        ref_oe.step()
        kl_d = kls(fakes)  # by the updated encoder
        loss_d = introvae_decoder_loss(rec, kl_d, beta_rec=0.2, beta_neg=0.9)
        ref_od.zero_grad()
        loss_d.backward(inputs=list(ref_d.parameters()))
        ref_od.step()
        logged = {"loss_encoder": loss_e, "loss_decoder": loss_d, "rec": rec, "kl": kl}
        logged.update(zip(("kl_rec", "kl_fake") if negatives == "both" else ("kl_fake",), (k.mean() for k in kl_d)))
        assert set(ours) == set(logged)
        assert {k: v.item() for k, v in ours.items()} == {k: pytest.approx(v.item(), abs=1e-6) for k, v in logged.items()}
    assert torch.allclose(params(encoder, decoder), params(ref_e, ref_d), atol=1e-6)


def test_introvae_defaults_to_the_appendix_objective():
    config = MethodConfig(name="introvae")
    assert (config.introvae_negatives, config.introvae_hinge) == ("prior", "per-sample")
    with pytest.raises(UserError, match="method.introvae_hinge must be one of per-sample, batch-mean"):
        MethodConfig(name="introvae", introvae_hinge="mean")


def test_vae_method_updates_both_networks_jointly():
    encoder, decoder, opts = make_pair()
    enc0, dec0 = params(encoder), params(decoder)
    losses = VAE(encoder, decoder, *opts, MethodConfig(name="vae", **HP), scale=0.5, z_dim=2).step(batches(1)[0], 10_000)
    assert set(losses) == {"loss", "rec", "kl"}
    assert not torch.equal(params(encoder), enc0) and not torch.equal(params(decoder), dec0)


def test_bf16_autocast_step_runs_and_returns_fp32_losses():
    encoder, decoder, opts = make_pair(hidden=16)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    method = SoftIntroVAE(encoder, decoder, *opts, MethodConfig(vae_warmup_steps=0, **HP), scale=0.5, z_dim=2, autocast=autocast)
    losses = method.step(batches(1, batch_size=32)[0], 0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_a_class_latent_takes_its_own_betas_and_the_others_the_runs():
    config = MethodConfig(beta_kl=0.3, beta_neg=1.5, beta_kl_class=0.7)
    beta_kl, kl_weights, beta_neg, neg_weights = latent_betas(config, LatentLayout(("content", "class"), (2, 1)))
    assert (beta_kl, beta_neg) == (1.0, 1.0)
    assert kl_weights.tolist() == pytest.approx([0.3, 0.3, 0.7]) and neg_weights.tolist() == pytest.approx([1.5, 1.5, 1.5])
    with_neg_class = dataclasses.replace(config, beta_neg_class=2.5)
    assert latent_betas(with_neg_class, LatentLayout(("content", "class"), (2, 1)))[3].tolist() == pytest.approx([1.5, 1.5, 2.5])
    assert latent_betas(config, LatentLayout.single(3)) == (0.3, None, 1.5, None)


class Tagged(nn.Module):
    """Records each call's batch size; returns (inputs + labels, the call's index) or inputs + labels."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple, self.calls = as_tuple, []

    def forward(self, inputs, labels):
        self.calls.append(len(inputs))
        out = inputs + labels[:, None]
        return (out, torch.full_like(out, len(self.calls))) if self.as_tuple else out


@pytest.mark.parametrize("as_tuple", [False, True])
def test_per_kind_separately_calls_each_half_with_its_labels(as_tuple):
    batch, labels = torch.zeros(6, 2), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    network = Tagged(as_tuple)
    out = per_kind(network, batch, True, labels)
    assert network.calls == [3, 3]
    sums = out[0] if as_tuple else out
    assert sums[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    if as_tuple:
        assert out[1][:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    joint = Tagged(as_tuple)
    per_kind(joint, batch, False, labels)
    assert joint.calls == [6]


def test_batch_norm_is_found_anywhere_in_a_network():
    assert has_batch_norm(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2))))
    assert not has_batch_norm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


@pytest.mark.parametrize("with_batch_norm", ["encoder", "decoder"])
def test_a_method_passes_the_kinds_apart_through_the_network_that_has_batch_norm(with_batch_norm):
    encoder, decoder, opts = make_pair()
    if with_batch_norm == "encoder":
        encoder.net.insert(1, nn.BatchNorm1d(64))
    else:
        decoder.net.insert(1, nn.BatchNorm1d(64))
    method = SoftIntroVAE(encoder, decoder, *opts, MethodConfig(**HP), scale=0.5, z_dim=2)
    assert (method.encode_kinds_separately, method.decode_kinds_separately) == (with_batch_norm == "encoder", with_batch_norm == "decoder")


def test_a_perceptual_reconstruction_needs_its_loss_function_and_trains_with_it():
    encoder, decoder, opts = make_pair()
    config = MethodConfig(reconstruction="perceptual", vae_warmup_steps=1, **HP)
    with pytest.raises(ValueError, match=r"^method\.reconstruction perceptual needs its loss function: pass reconstruction=\.\.\.$"):
        SoftIntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2)
    l1 = lambda x, x_hat: (x - x_hat).abs().sum(1)  # noqa: E731  (per-sample errors, as the perceptual loss gives)
    method = SoftIntroVAE(encoder, decoder, *opts, config, scale=0.5, z_dim=2, reconstruction=l1)
    x = batches(1)[0]
    expected = warmup_rec_by_hand(encoder, decoder, x, lambda x, x_hat: l1(x, x_hat).mean())
    torch.manual_seed(0)
    assert method.step(x, 0)["rec"].item() == pytest.approx(expected, abs=1e-6)


def test_stacked_runs_draw_their_rows_from_their_own_generators():
    encoder, decoder, opts = make_pair(hidden=8)
    method = VAE(encoder, decoder, *opts, MethodConfig(name="vae", **HP), scale=0.5, z_dim=2)
    method.run_generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    drawn = method.standard_normal(6, torch.device("cpu"))
    expected = [torch.randn(3, 2, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(drawn, torch.cat(expected))


def test_a_non_finite_loss_or_gradient_raises_before_any_optimizer_steps():
    p = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([p], lr=1.0)
    stepper = Stepper()
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite loss \(loss_encoder=nan\)$"):
        stepper.update([optimizer], (p * float("nan")).sum(), [p], name="loss_encoder")
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite gradient \(gradient of loss_decoder\)$"):
        stepper.update([optimizer], (p - 1).sqrt().sum(), [p], name="loss_decoder")  # 0, with gradient 1/0
    assert p.item() == 1.0 and not stepper.stepped
    several = NonFiniteUpdate("rec, kl", "loss", {"rec": torch.tensor(float("inf"))})  # the value of each loss that has one
    assert str(several) == "non-finite loss (rec=inf, kl)"
    stepper.update([optimizer], (2 * p).sum(), [p])
    assert p.item() == -1.0 and stepper.stepped
    stepper.end_step()
    assert not stepper.stepped


def test_average_gradients_averages_every_gradient_over_the_processes(monkeypatch):
    a, b, no_grad = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.ones(2, 2), torch.tensor([1.0, 2.0, 3.0])
    other = torch.arange(7.0)  # the flat gradients of a second process
    monkeypatch.setattr(methods.dist, "all_reduce", lambda flat: flat.add_(other))
    monkeypatch.setattr(methods.dist, "get_world_size", lambda: 2)
    average_gradients([a, no_grad, b])
    assert a.grad.tolist() == [[0.5, 1.0], [1.5, 2.0]] and b.grad.tolist() == [2.5, 3.5, 4.5] and no_grad.grad is None


class CountingScaler:
    def __init__(self):
        self.updates = 0

    def update(self):
        self.updates += 1


def test_the_loss_scale_is_updated_once_per_step_and_after_an_abandoned_step_that_stepped():
    scaler = CountingScaler()
    stepper = Stepper(scaler)
    stepper.abandon_step()
    assert scaler.updates == 0
    stepper.stepped = True
    stepper.abandon_step()
    assert scaler.updates == 1 and not stepper.stepped
    stepper.end_step()
    assert scaler.updates == 2


def test_with_a_loss_scaler_an_update_steps_by_the_unscaled_gradient_and_leaves_overflows_to_the_scaler():
    p = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([p], lr=0.5)
    stepper = Stepper(torch.amp.GradScaler("cpu", init_scale=1024.0))
    stepper.update([optimizer], (2 * p).sum(), [p])  # the loss is scaled, the gradient unscaled
    stepper.end_step()
    assert p.item() == 0.0 and stepper.scaler.get_scale() == 1024.0
    stepper.update([optimizer], (p * 1e38).sum() * 1e38, [p])  # the scaled gradient overflows: no error
    stepper.end_step()
    assert p.item() == 0.0 and stepper.scaler.get_scale() == 512.0  # the step skipped, the scale halved


def test_an_update_sets_gradients_to_none_so_a_parameter_outside_its_loss_stays_put():
    used, unused = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    optimizer = torch.optim.Adam([used, unused], lr=0.1)
    stepper = Stepper()
    stepper.update([optimizer], (used + unused).sum(), [used, unused])
    before = unused.item()
    stepper.update([optimizer], used.sum(), [used, unused])  # Adam's momentum would move a zero gradient
    assert unused.grad is None and unused.item() == before


def test_a_distributed_update_averages_the_gradients_of_its_parameters(monkeypatch):
    averaged = []
    monkeypatch.setattr(methods, "average_gradients", averaged.append)
    p = nn.Parameter(torch.ones(1))
    Stepper(distributed=True).update([torch.optim.SGD([p], lr=1.0)], (2 * p).sum(), [p])
    assert averaged == [[p]]


def test_all_finite_without_gradients_and_an_unnamed_loss():
    assert methods.all_finite(torch.tensor(1.0), []) == (True, True)
    assert methods.all_finite(torch.tensor(float("inf")), []) == (False, False)
    p = nn.Parameter(torch.ones(1))
    with pytest.raises(NonFiniteUpdate, match=r"^non-finite loss \(loss=nan\)$"):
        Stepper().update([torch.optim.SGD([p], lr=1.0)], (p * float("nan")).sum(), [p])
