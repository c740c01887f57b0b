"""Likelihood scores (ELBO, importance-weighted log p(x)) on a model with a known log p(x), AUROC,
and `softintrovae ood` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from softintrovae.cli import main
from softintrovae.likelihood import SCORES, bits_per_dim, decoder_log_likelihood, score_batch, score_images
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.ood import auroc
from softintrovae.trainer import train

from .conftest import DEBIAN_FASHION_MNIST, MNIST, Progress, tiny_image, write_mnist_files

pytestmark = pytest.mark.usefixtures("single_thread")

SIGMA2 = 0.3  # observation noise of the linear-Gaussian model; the decoder's β_rec = 1 / (2σ²)


class LinearGaussian:
    """z ~ N(0, I_2), x = Wz + b + N(0, σ²I_4), with orthogonal columns in W so that the exact
    posterior q(z|x) is a diagonal Gaussian, i.e. one our encoders can express."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
        self.W = q[:, :2] * torch.tensor([1.5, 0.7], dtype=torch.float64)
        self.b = torch.randn(4, generator=generator, dtype=torch.float64)
        self.post_var = 1.0 / (1.0 + (self.W**2).sum(0) / SIGMA2)  # diag (I + WᵀW/σ²)⁻¹

    def sample(self, n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return z @ self.W.T + self.b + math.sqrt(SIGMA2) * torch.randn(n, 4, generator=generator, dtype=torch.float64)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        covariance = self.W @ self.W.T + SIGMA2 * torch.eye(4, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance).log_prob(x)

    def encoder(self, mu_shift: float = 0.0, logvar_shift: float = 0.0) -> nn.Module:
        model = self

        class Encoder(nn.Module):
            def forward(self, x):
                mu = (x - model.b) @ model.W / SIGMA2 * model.post_var + mu_shift
                return mu, torch.log(model.post_var).expand_as(mu) + logvar_shift

        return Encoder()

    def decoder(self) -> nn.Module:
        model = self

        class Decoder(nn.Module):
            def forward(self, z):
                return z @ model.W.T + model.b

        return Decoder()


def scores(model: LinearGaussian, x, samples: int, **encoder_shift) -> dict[str, torch.Tensor]:
    return score_batch(
        model.encoder(**encoder_shift), model.decoder(), x, beta_rec=1 / (2 * SIGMA2), beta_kl=1.0,
        samples=samples, generator=torch.Generator().manual_seed(2),
    )  # fmt: skip



class Conditional(nn.Module):
    """``network`` with class labels: a label y adds y to every output (0 for the decoder's); records
    whether each call ran in training mode."""

    def __init__(self, network: nn.Module, shift_per_label: float):
        super().__init__()
        self.network, self.shift = network, nn.Parameter(torch.tensor(shift_per_label, dtype=torch.float64))
        self.modes = []

    def forward(self, inputs, labels):
        self.modes.append(self.training)
        out = self.network(inputs)
        if isinstance(out, tuple):
            return (out[0] + self.shift * labels[:, None], *out[1:])
        return out + self.shift * labels[:, None]


def test_score_images_scores_each_batch_in_eval_mode_with_its_labels_and_one_seeded_generator():
    model = LinearGaussian()
    x, labels = model.sample(5), torch.tensor([0, 1, 2, 1, 0])
    encoder, decoder = Conditional(model.encoder(), 0.5), Conditional(model.decoder(), 0.0)
    settings = {"beta_rec": 1 / (2 * SIGMA2), "beta_kl": 0.5, "samples": 3}
    generator = torch.Generator().manual_seed(7)
    batches = [score_batch(encoder, decoder, x[i : i + 2], labels=labels[i : i + 2], generator=generator, **settings) for i in (0, 2, 4)]
    progress, encoder.modes, decoder.modes = Progress(), [], []
    scored = score_images(encoder, decoder, x, seed=7, labels=labels, batch_size=2, progress=progress, **settings)
    assert progress.updates == [2, 2, 1]
    assert all(torch.equal(scored[name], torch.cat([b[name] for b in batches])) for name in SCORES)
    assert encoder.modes == decoder.modes == [False] * 3 and encoder.training and decoder.training  # eval mode, then back


def test_scoring_needs_at_least_one_importance_sample():
    model = LinearGaussian()
    with pytest.raises(ValueError, match=r"^the number of importance samples must be >= 1, got 0$"):
        scores(model, model.sample(2), samples=0)


def test_a_class_conditional_model_is_not_scored_without_labels():
    decoder = MLPDecoder(data_dim=4, hidden_dim=8)
    decoder.num_classes = 3
    with pytest.raises(ValueError, match=r"^a class-conditional model needs the images' labels to score them$"):
        score_images(MLPEncoder(data_dim=4, hidden_dim=8), decoder, torch.zeros(2, 4), beta_rec=1.0, beta_kl=1.0)


class HalfMean(nn.Module):
    """q(z|x) = N(x/2, 2²) (one latent dimension)."""

    def forward(self, x):
        return x / 2, torch.full_like(x, math.log(4.0))


class Applies(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, z):
        return self.function(z)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_score_batch_by_hand(kind):
    # x = (1, 3) with D(z) = z and β_rec = ½ (a unit-variance Gaussian decoder), or x = (1, 0) with
    # D(z) = sigmoid(z) (a Bernoulli decoder); q(z|x) = N(x/2, 2²), β_kl = 0.3; z = x/2 + 2·ε with
    # ε drawn in fp64 from the generator whatever the model's dtype (16 draws per point: from 16 on,
    # torch draws fp32 normals by another algorithm than fp64 ones)
    xs = (1.0, 3.0) if kind == "mse" else (1.0, 0.0)
    eps = torch.randn(16, 2, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)[..., 0].tolist()

    def log_n(v, mean, var):
        return -0.5 * (math.log(2 * math.pi * var) + (v - mean) ** 2 / var)

    def log_px_z(x, z):
        return log_n(x, z, 1.0) if kind == "mse" else x * math.log(1 / (1 + math.exp(-z))) + (1 - x) * math.log(1 / (1 + math.exp(z)))

    decoder = Applies((lambda z: z) if kind == "mse" else torch.sigmoid)
    x_batch, generator = torch.tensor(xs)[:, None], torch.Generator().manual_seed(5)
    got = score_batch(HalfMean(), decoder, x_batch, beta_rec=0.5, beta_kl=0.3, kind=kind, samples=16, generator=generator)
    for b, x in enumerate(xs):
        z = [x / 2 + 2 * draws[b] for draws in eps]
        log_w = [log_px_z(x, zi) + log_n(zi, 0.0, 1.0) - log_n(zi, x / 2, 4.0) for zi in z]
        kl = 0.5 * ((x / 2) ** 2 + 4.0 - 1.0 - math.log(4.0))
        rec = sum((x - zi) ** 2 if kind == "mse" else -log_px_z(x, zi) for zi in z) / 16
        assert got["elbo"][b].item() == pytest.approx(sum(log_w) / 16, rel=1e-5)
        assert got["iw"][b].item() == pytest.approx(math.log(sum(math.exp(w) for w in log_w) / 16), rel=1e-5)
        assert got["elbo_beta"][b].item() == pytest.approx(-(0.5 * rec + 0.3 * kl), rel=1e-5)

def test_gaussian_decoder_likelihood_is_a_normalised_density():
    x, x_hat = torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    expected = torch.distributions.Normal(x_hat, math.sqrt(SIGMA2)).log_prob(x).sum()
    assert decoder_log_likelihood(x, x_hat, "mse", 1 / (2 * SIGMA2)).item() == pytest.approx(expected.item())
    assert bits_per_dim(torch.tensor([-math.log(2) * 6]), 3).item() == pytest.approx(2.0)



def test_a_gaussian_decoder_needs_a_positive_beta_rec():
    with pytest.raises(ValueError, match=r"^a Gaussian decoder needs beta_rec > 0, got 0.0$"):
        decoder_log_likelihood(torch.zeros(1, 2), torch.zeros(1, 2), "mse", 0.0)

@pytest.mark.parametrize("samples", [1, 7])
def test_iw_estimate_with_the_exact_posterior_is_log_px(samples):
    model = LinearGaussian()
    x = model.sample(50)
    result = scores(model, x, samples)
    torch.testing.assert_close(result["iw"].double(), model.log_px(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(result["elbo"].double(), model.log_px(x), rtol=0, atol=1e-6)  # every weight is p(x)


def test_iw_estimate_with_an_approximate_posterior_is_a_bound_that_tightens():
    model = LinearGaussian()
    x = model.sample(400)
    truth = model.log_px(x).mean().item()
    means = {}
    for samples in (1, 8, 64):
        result = scores(model, x, samples, mu_shift=0.4, logvar_shift=0.7)
        assert (result["elbo"] <= result["iw"] + 1e-9).all()  # Jensen, per sample, on the same draws
        means[samples] = result["iw"].mean().item()
    assert means[1] < means[8] < means[64] <= truth + 0.01
    assert truth - means[1] > 0.05  # the approximation costs something measurable


def test_auroc_of_separable_and_identical_scores():
    assert auroc(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 4.0, 5.0])) == 0.0
    same = torch.linspace(0, 1, 50)
    assert auroc(same, same.clone()) == pytest.approx(0.5)


def test_ood_cli_end_to_end(npz, tmp_path, capsys):
    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=4))
    other = tmp_path / "other.npz"
    np.savez(other, images=np.full((30, 8, 8, 3), 255, dtype=np.uint8))  # all-white images
    report = tmp_path / "report"
    code = main(["ood", str(result.run_dir), "--out", f"npz={other}", "--samples", "3", "--report", str(report)])
    assert code == 0
    saved = json.loads((report / "ood.json").read_text())
    assert saved["reference"] == "in-train" and saved["counts"] == {"in-train": 40, f"npz={other}": 30}
    assert set(saved["auroc"]) == {f"npz={other}"}  # its value: test_auroc_of_separable_and_identical_scores
    assert all((report / name).is_file() for name in ("ood.md", "scores.png", "roc.png"))
    assert f"| npz={npz} | npz={other} |" in capsys.readouterr().out


def test_ood_mismatched_image_size_is_one_line(npz, tmp_path, capsys):
    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=2))
    assert main(["ood", str(result.run_dir), "--out", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "softintrovae: error: dataset 'digits' has 1x28x28 images, but the model takes 3x8x8"
    assert main(["ood", str(result.run_dir), "--out", "nonsense"]) == 2
    assert "unknown image dataset 'nonsense'" in capsys.readouterr().err
    assert main(["ood", str(result.run_dir), "--out", "digits", "--score", "bpd"]) == 2
    assert "--score must be one of elbo, elbo_beta, iw, got 'bpd'" in capsys.readouterr().err


def test_reproduce_ood_scores_both_runs_on_the_available_out_sets(tmp_path, capsys):
    pytest.importorskip("sklearn")  # the digits out-set
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey28.npz"
    np.savez(grey, images=rng.integers(0, 256, (24, 28, 28, 1), dtype=np.uint8))
    runs = []
    for method in ("vae", "soft-introvae"):
        overrides = tiny_image(grey, train__steps=2, model__channels=[4], method__name=method, eval__fid_samples=0)
        runs.append(str(train("npz", out=tmp_path / method, overrides=overrides).run_dir))
    out = tmp_path / "ood"
    assert main(["reproduce", "ood", "--runs", *runs, "--out", str(out), "--samples", "2", "--limit", "30"]) == 0
    table = (out / "ood.md").read_text()
    assert "| npz | digits |" in table and "Out-sets not available here: mnist" in table
    saved = json.loads((out / "ood.json").read_text())
    for method in ("vae", "soft-introvae"):
        assert saved[method]["counts"] == {"in-train": 24, "digits": 30}
        assert set(saved[method]["auroc_by_score"]) == {"elbo", "elbo_beta", "iw"}
        assert (out / method / "scores.png").is_file() and (out / method / "roc.png").is_file()
    assert main(["reproduce", "ood", "--runs", runs[0], "--out", str(out)]) == 2
    assert main(["reproduce", "table2", "--runs", *runs]) == 2
    assert "--runs applies to 'reproduce ood'" in capsys.readouterr().err


def test_reproduce_ood_trains_both_models_then_reuses_them(tmp_path):
    pytest.importorskip("sklearn")  # the digits out-set
    from softintrovae.experiments.ood import reproduce_ood

    rng = np.random.default_rng(0)
    grey = tmp_path / "grey28.npz"
    np.savez(grey, images=rng.integers(0, 256, (24, 28, 28, 1), dtype=np.uint8))
    overrides = tiny_image(grey, train__steps=2, model__channels=[4])
    out = tmp_path / "ood"
    first = reproduce_ood(out, preset="npz", overrides=overrides, samples=2, limit=20, progress=False)
    assert {m: first[m]["step"] for m in ("vae", "soft-introvae")} == {"vae": 2, "soft-introvae": 2}
    assert (out / "vae" / "metrics.json").is_file() and (out / "soft-introvae" / "checkpoints").is_dir()
    before = (out / "vae" / "metrics.json").stat().st_mtime_ns
    again = reproduce_ood(out, preset="npz", overrides=overrides, samples=2, limit=20, progress=False)
    assert (out / "vae" / "metrics.json").stat().st_mtime_ns == before  # finished runs are reused, not retrained
    assert again["soft-introvae"]["auroc"] == first["soft-introvae"]["auroc"]  # seeded scoring


def test_reproduce_ood_names_an_in_set_it_cannot_load_before_training_anything(tmp_path, monkeypatch, capsys):
    """``--datasets fashion-mnist,mnist`` without ``--roots mnist=...`` (and no MNIST in its default
    folder): one line naming MNIST and the flag, and no Fashion-MNIST run trained first."""
    from softintrovae.data import images as image_data

    fashion = tmp_path / "fashion"
    fashion.mkdir()
    write_mnist_files(fashion, "train", 8)
    monkeypatch.setitem(image_data.MNIST_FAMILY_DEFAULT_ROOTS, "mnist", tmp_path / "nowhere")
    out = tmp_path / "ood"
    argv = ["reproduce", "ood", "--datasets", "fashion-mnist,mnist", "--roots", f"fashion-mnist={fashion}", "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "in-distribution set mnist:" in error and "--roots mnist=ROOT" in error
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST.is_dir() and DEBIAN_FASHION_MNIST.is_dir()), reason="needs MNIST in ../shared/data/mnist and Debian's Fashion-MNIST")
def test_reproduce_ood_writes_table7s_mnist_rows_beside_the_papers(tmp_path, capsys):
    """Fashion-MNIST -> MNIST and MNIST -> Fashion-MNIST, both methods, with a budget of two steps."""
    out = tmp_path / "ood"
    tiny = ["model.channels=[4]", "model.z_dim=4", "data.batch_size=8", "train.epochs=0", "train.steps=2", "train.progress=false",
            "train.eval_every=0"]  # fmt: skip
    argv = ["reproduce", "ood", "--datasets", "fashion-mnist,mnist", "--roots", f"mnist={MNIST}", "--out", str(out),
            "--samples", "2", "--limit", "40", *[a for s in tiny for a in ("--set", s)]]  # fmt: skip
    assert main(argv) == 0
    table = (out / "ood.md").read_text()
    assert "| fashion-mnist | mnist |" in table and "| 0.996 | 0.999 |" in table
    assert "| mnist | fashion-mnist |" in table and "| 0.992 | 0.999 |" in table
    assert table in capsys.readouterr().out
    saved = json.loads((out / "ood.json").read_text())
    for in_set, out_set in (("fashion-mnist", f"mnist={MNIST}"), ("mnist", "fashion-mnist")):
        for method in ("vae", "soft-introvae"):
            result = saved[in_set][method]
            assert result["step"] == 2 and out_set in result["auroc"] and result["counts"]["in-test"] == 40
            assert (out / in_set / method / "ood" / "scores.png").is_file()
