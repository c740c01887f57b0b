"""Properties of the objectives over extreme but valid inputs (Hypothesis): finite values and
gradients, KL ≥ 0, reconstruction errors ≥ 0, and the expELBO terms of Eq. 7 in (0, 1]."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softintrovae.objectives import (
    expected_exp_elbo,
    kl_to_standard_normal,
    negative_elbo,
    reconstruction_loss,
    reparameterize,
    soft_introvae_decoder_loss,
    soft_introvae_encoder_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")
PROPERTY = settings(max_examples=150, deadline=None)

# log σ² from tiny variances (e^-60 ≈ 1e-26) to huge ones (e^60 ≈ 1e26): float32 still holds
# every KL term; μ up to 1e4 in size. Scales s of the paper's data: 2D, MNIST, CIFAR-10, 256².
LOGVAR = st.floats(-60, 60, width=32)
MU = st.floats(-1e4, 1e4, width=32)
SCALES = st.sampled_from([0.5, 1 / 784, 1 / 3072, 1 / (3 * 256 * 256)])
DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def posteriors(draw, batch=None):
    """(μ, log σ²) of shape (B, Z), and a dtype."""
    b = batch or draw(st.integers(1, 4))
    z = draw(st.integers(1, 8))
    dtype = draw(DTYPES)
    mu = draw(arrays("float32", (b, z), elements=MU))
    logvar = draw(arrays("float32", (b, z), elements=LOGVAR))
    return torch.tensor(mu, dtype=dtype), torch.tensor(logvar, dtype=dtype)


@st.composite
def images_and_reconstructions(draw, batch):
    d = draw(st.integers(1, 12))
    x = draw(arrays("float32", (batch, d), elements=st.floats(0, 1, width=32)))
    x_hat = draw(arrays("float32", (batch, d), elements=st.floats(-1e6, 1e6, width=32)))
    return torch.tensor(x), torch.tensor(x_hat)


def finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@PROPERTY
@given(posteriors())
def test_kl_is_non_negative_and_finite_with_finite_gradients(posterior):
    mu, logvar = (t.requires_grad_() for t in posterior)
    per_sample = kl_to_standard_normal(mu, logvar, reduction="none")
    assert finite(per_sample) and bool((per_sample >= 0).all()), per_sample
    per_sample.sum().backward()
    assert finite(mu.grad, logvar.grad)


@PROPERTY
@given(st.floats(-(2**-10), 2**-10, width=32), DTYPES)
def test_kl_is_non_negative_next_to_the_standard_normal(logvar, dtype):
    # where 1 + log σ² − σ² cancels: the hardest place for KL ≥ 0 in floating point
    kl = kl_to_standard_normal(torch.zeros(1, 1, dtype=dtype), torch.full((1, 1), logvar, dtype=dtype))
    assert kl.item() >= 0


@PROPERTY
@given(posteriors())
def test_reparameterized_samples_are_finite(posterior):
    mu, logvar = posterior
    assert finite(reparameterize(mu, logvar))


@PROPERTY
@given(st.data(), st.integers(1, 4))
def test_reconstruction_errors_are_non_negative_and_finite(data, batch):
    x, x_hat = data.draw(images_and_reconstructions(batch))
    mse = reconstruction_loss(x, x_hat, "mse", reduction="none")
    probabilities = torch.sigmoid(x_hat)  # includes exact 0 and 1 where |x̂| is large
    bce = reconstruction_loss(x, probabilities, "bce", reduction="none")
    assert finite(mse, bce) and bool((mse >= 0).all()) and bool((bce >= 0).all())


@PROPERTY
@given(st.data(), SCALES, st.floats(0, 5), st.floats(0, 1280))
def test_exp_elbo_terms_lie_in_zero_one(data, scale, beta_rec, beta_neg):
    mu, logvar = data.draw(posteriors())
    x, x_hat = data.draw(images_and_reconstructions(mu.shape[0]))
    neg_elbo = negative_elbo(x, x_hat, mu.float(), logvar.float(), beta_rec, beta_neg)
    term = expected_exp_elbo(neg_elbo, scale)
    assert 0 < term.item() <= 1, (term, neg_elbo)


@PROPERTY
@given(st.data(), SCALES, st.floats(0.01, 5), st.floats(0.01, 5), st.floats(0, 1280))
def test_soft_introvae_losses_and_gradients_are_finite(data, scale, beta_rec, beta_kl, beta_neg):
    b = data.draw(st.integers(1, 4))
    mu, logvar = (t.float().requires_grad_() for t in data.draw(posteriors(batch=b)))
    mu_neg, logvar_neg = (t.float().requires_grad_() for t in data.draw(posteriors(batch=2 * b)))
    x, x_hat = data.draw(images_and_reconstructions(b))
    x_hat.requires_grad_()
    x_neg = torch.cat([x_hat, x_hat]).detach()
    x_neg_hat = torch.cat([x_hat, x_hat * 0.5])
    rec = reconstruction_loss(x, x_hat)
    kl = kl_to_standard_normal(mu, logvar)
    neg_elbo = negative_elbo(x_neg, x_neg_hat, mu_neg, logvar_neg, beta_rec, beta_neg)
    encoder = soft_introvae_encoder_loss(rec, kl, list(neg_elbo.chunk(2)), beta_rec=beta_rec, beta_kl=beta_kl, scale=scale)
    kl_neg = [k.mean() for k in kl_to_standard_normal(mu_neg, logvar_neg, reduction="none").chunk(2)]
    rec_neg = [r.mean() for r in reconstruction_loss(x_neg, x_neg_hat, reduction="none").chunk(2)]
    decoder = soft_introvae_decoder_loss(rec, kl_neg, rec_neg, beta_rec=beta_rec, beta_kl=beta_kl, gamma_r=1e-8, scale=scale)
    assert finite(encoder, decoder)
    (encoder + decoder).backward()
    assert finite(mu.grad, logvar.grad, mu_neg.grad, logvar_neg.grad, x_hat.grad)


def test_the_exp_elbo_term_stays_positive_where_exp_underflows():
    # 2s·elbo = 1e4: exp(-1e4) underflows to 0 in float32 and float64 alike
    term = expected_exp_elbo(torch.tensor([1e4]), 0.5)
    assert 0 < term.item() <= torch.finfo(torch.float32).tiny * 1.0001
    assert math.isfinite(math.log(term.item()))
