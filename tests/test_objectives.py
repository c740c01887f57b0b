"""Loss values on hand-computed tiny tensors, and gradients against finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from softintrovae.objectives import (
    expected_exp_elbo,
    full_precision,
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


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_mse_sums_over_dimensions_and_averages_over_batch():
    x, x_hat = t([0.0, 0.0], [1.0, 1.0]), t([1.0, 2.0], [1.0, 0.0])
    assert reconstruction_loss(x, x_hat, reduction="none").tolist() == [5.0, 1.0]
    assert reconstruction_loss(x, x_hat).item() == 3.0
    assert reconstruction_loss(x, x_hat, reduction="sum").item() == 6.0


def test_mse_flattens_images():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.ones(2, 1, 2, 2)
    assert reconstruction_loss(x, x_hat, reduction="none").tolist() == [4.0, 4.0]


def test_bce_sums_over_dimensions():
    x, x_hat = t([1.0, 0.0]), t([0.5, 0.5])
    assert reconstruction_loss(x, x_hat, "bce").item() == pytest.approx(2 * math.log(2))


def test_unknown_reconstruction_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_loss(t([0.0]), t([0.0]), "l1")



def test_perceptual_by_name_needs_its_network():
    with pytest.raises(ValueError, match="needs its network"):
        reconstruction_loss(t([0.0]), t([0.0]), "perceptual")


def test_full_precision_upcasts_half_types_only():
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    assert [full_precision(torch.zeros(1, dtype=d)).dtype for d in dtypes] == [torch.float32, torch.float32, torch.float32, torch.float64]


def test_a_callable_reconstruction_gets_fp32_inputs_and_its_errors_are_reduced():
    seen = []

    def l1(a, b):
        seen.append((a.dtype, b.dtype))
        return (a - b).abs().sum(1).half()

    x, x_hat = torch.zeros(2, 3, dtype=torch.float16), torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], dtype=torch.float16)
    per_sample = reconstruction_loss(x, x_hat, l1, reduction="none")
    assert per_sample.dtype == torch.float32 and per_sample.tolist() == [3.0, 6.0]
    assert reconstruction_loss(x, x_hat, l1).item() == 4.5
    assert seen == [(torch.float32, torch.float32)] * 2

def test_kl_to_standard_normal():
    assert kl_to_standard_normal(t([0.0, 0.0]), t([0.0, 0.0])).item() == 0.0
    mu, logvar = t([1.0, 0.0]), t([0.0, math.log(2.0)])
    expected = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (2 + 0 - 1 - math.log(2))
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(expected)



def test_kl_weights_weigh_each_latent_dimension():
    mu, logvar = t([1.0, 0.0]), t([0.0, math.log(2.0)])
    weighted = kl_to_standard_normal(mu, logvar, weights=t(2.0, 0.0)).item()
    assert weighted == pytest.approx(2 * 0.5 * (1 + 1 - 1 - 0))

def test_kl_gradient_matches_finite_differences():
    mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, lv: kl_to_standard_normal(m, lv), (mu, logvar))


def test_reparameterize_uses_sigma():
    mu, logvar, eps = t([1.0]), t([math.log(4.0)]), t([0.5])
    assert reparameterize(mu, logvar, eps).item() == pytest.approx(1.0 + 2.0 * 0.5)


def test_negative_elbo_and_vae_loss():
    x, x_hat = t([0.0, 0.0]), t([1.0, 1.0])
    mu, logvar = t([1.0]), t([0.0])
    assert negative_elbo(x, x_hat, mu, logvar, beta_rec=0.5, beta_kl=2.0).item() == pytest.approx(0.5 * 2 + 2.0 * 0.5)
    bce = negative_elbo(t([1.0, 0.0]), t([0.5, 0.5]), mu, logvar, beta_rec=0.5, beta_kl=2.0, kind="bce")
    assert bce.item() == pytest.approx(0.5 * 2 * math.log(2) + 2.0 * 0.5)  # the kind it is given
    assert vae_loss(torch.tensor(2.0), torch.tensor(3.0), 0.5, 0.1).item() == pytest.approx(1.3)


def test_expected_exp_elbo_is_in_unit_interval():
    values = expected_exp_elbo(torch.tensor([0.0, 1e6, 3.0]), scale=0.5)
    assert 0 < values.item() <= 1
    assert expected_exp_elbo(torch.tensor([0.0]), scale=0.5).item() == 1.0


def test_soft_introvae_encoder_loss_by_hand():
    # s(β_rec·rec + β_kl·kl) + ¼(mean exp(−2s e_r) + mean exp(−2s e_f))
    rec, kl, s = torch.tensor(2.0), torch.tensor(1.0), 0.5
    e_r, e_f = torch.tensor([0.0, math.log(2.0)]), torch.tensor([math.log(4.0)])
    loss = soft_introvae_encoder_loss(rec, kl, [e_r, e_f], beta_rec=0.5, beta_kl=0.25, scale=s)
    expected = s * (0.5 * 2 + 0.25 * 1) + 0.25 * ((1 + 0.5) / 2 + 0.25)
    assert loss.item() == pytest.approx(expected)


def test_soft_introvae_decoder_loss_by_hand():
    # s(β_rec·rec + ½β_kl(kl_r + kl_f) + ½γ_r·β_rec(rec_r + rec_f))
    loss = soft_introvae_decoder_loss(
        torch.tensor(2.0),
        [torch.tensor(1.0), torch.tensor(3.0)],
        [torch.tensor(10.0), torch.tensor(30.0)],
        beta_rec=0.5,
        beta_kl=0.25,
        gamma_r=0.1,
        scale=0.5,
    )
    expected = 0.5 * (0.5 * 2 + 0.5 * 0.25 * 4 + 0.5 * 0.1 * 0.5 * 40)
    assert loss.item() == pytest.approx(expected)


def test_introvae_losses_by_hand():
    rec, kl = torch.tensor(2.0), torch.tensor(1.0)
    negatives = [torch.tensor(0.5), torch.tensor(3.0)]  # the second is past the margin: no hinge
    loss_e = introvae_encoder_loss(rec, kl, negatives, beta_rec=0.5, beta_kl=0.25, beta_neg=2.0, margin=2.0)
    assert loss_e.item() == pytest.approx(0.5 * 2 + 0.25 * 1 + 2.0 * (1.5 + 0.0) / 2)
    loss_d = introvae_decoder_loss(rec, negatives, beta_rec=0.5, beta_neg=2.0)
    assert loss_d.item() == pytest.approx(0.5 * 2 + 2.0 * 1.75)


def test_introvae_hinge_per_sample_differs_from_the_hinge_on_the_batch_mean():
    """Appendix 9.1.1's L_E(x, z) takes [m − KL]₊ of each sample; IntroVAE's official code of the mean."""
    rec, kl = torch.tensor(2.0), torch.tensor(1.0)
    per_sample = torch.tensor([0.5, 3.5])  # margin 2: hinges 1.5 and 0; the mean KL 2.0 is at the margin
    loss_e = introvae_encoder_loss(rec, kl, [per_sample], beta_rec=0.5, beta_kl=0.25, beta_neg=2.0, margin=2.0)
    assert loss_e.item() == pytest.approx(0.5 * 2 + 0.25 * 1 + 2.0 * (1.5 + 0.0) / 2)
    on_mean = introvae_encoder_loss(rec, kl, [per_sample.mean()], beta_rec=0.5, beta_kl=0.25, beta_neg=2.0, margin=2.0)
    assert on_mean.item() == pytest.approx(0.5 * 2 + 0.25 * 1)
    loss_d = introvae_decoder_loss(rec, [per_sample], beta_rec=0.5, beta_neg=2.0)
    assert loss_d.item() == pytest.approx(0.5 * 2 + 2.0 * 2.0)  # the decoder's term is the mean either way


def test_soft_introvae_encoder_loss_gradient_matches_finite_differences():
    e = torch.rand(4, dtype=torch.float64, requires_grad=True)
    rec = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def f(rec, e):
        return soft_introvae_encoder_loss(rec, rec * 0.3, [e[:2], e[2:]], beta_rec=0.2, beta_kl=0.3, scale=0.5)

    assert torch.autograd.gradcheck(f, (rec, e))
