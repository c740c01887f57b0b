"""FID / KID machinery, offline: a small feature net trained on sklearn's digits, torchmetrics' distances."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from softintrovae.data.images import load_digits_28
from softintrovae.errors import UserError
from softintrovae.metrics.features import (
    FEATURE_NETS_ENV,
    FeatureExtractor,
    SmallClassifier,
    get_feature_extractor,
    load_feature_net,
    train_feature_net,
    weights_sha256,
)
from softintrovae.metrics.fid import compute_fid_kid, generate_images, metric_name


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_28()
    return images[:600], labels[:600]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """(checkpoint path, held-out accuracy) of a feature net trained for one short epoch."""
    out = tmp_path_factory.mktemp("feature-nets") / "fashion-mnist.pt"
    return train_feature_net(*digits, out, epochs=1, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def extractor(trained):
    net = load_feature_net(trained[0])
    return FeatureExtractor(net, "fmnistnet", net.feature_dim)


def noised(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    """images + N(0, sigma²) in uint8 units, clamped and quantised."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


# --- the feature net --------------------------------------------------------------------------------


def test_feature_net_shapes_for_gray_rgb_and_other_sizes():
    net = SmallClassifier(in_channels=1, image_size=28, num_classes=10, feature_dim=16).eval()
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert net.features(torch.rand(2, 1, 28, 28)).shape == (2, 16)
    gray = torch.rand(2, 1, 32, 32)
    rgb = gray.expand(-1, 3, -1, -1)
    torch.testing.assert_close(net.features(rgb), net.features(gray))  # RGB is averaged to gray, 32 → 28


def test_training_saves_a_weights_only_checkpoint_that_beats_chance(trained, digits):
    path, accuracy = trained
    assert accuracy > 0.3  # 10 classes: chance is 0.1
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["accuracy"] == accuracy
    net = load_feature_net(path)
    assert not net.training and weights_sha256(net) == checkpoint["weights_sha256"]
    images = digits[0][:64].float() / 255
    with torch.no_grad():
        predicted = net(images).argmax(1)
    assert (predicted == digits[1][:64]).float().mean() > 0.3


def test_extractor_takes_uint8_and_floats_alike(extractor, digits):
    images = digits[0][:8]
    with torch.no_grad():
        from_uint8 = extractor(images)
        torch.testing.assert_close(from_uint8, extractor(images.float() / 255))
    assert from_uint8.shape == (8, extractor.num_features) and len(extractor.hash) == 12
    assert not extractor.train().training  # BatchNorm statistics must not move while measuring


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "corrupt"),
        (lambda p: torch.save({"format": "something else"}, p), "not a softintrovae feature net"),
        (lambda p: p.unlink(), "does not exist"),
    ],
    ids=["truncated", "foreign", "missing"],
)
def test_bad_feature_net_files_are_one_line_user_errors(tmp_path, trained, damage, problem):
    path = tmp_path / "net.pt"
    path.write_bytes(trained[0].read_bytes())
    damage(path)
    with pytest.raises(UserError, match=problem) as error:
        load_feature_net(path)
    assert "\n" not in str(error.value)


def test_tampered_weights_fail_their_hash(tmp_path, trained):
    checkpoint = torch.load(trained[0], weights_only=True)
    checkpoint["state_dict"]["classifier.bias"] += 1
    torch.save(checkpoint, tmp_path / "net.pt")
    with pytest.raises(UserError, match="do not match their recorded hash"):
        load_feature_net(tmp_path / "net.pt")


# --- the registry -----------------------------------------------------------------------------------


def test_registry_finds_fmnistnet_through_the_environment(monkeypatch, trained, extractor):
    monkeypatch.setenv(FEATURE_NETS_ENV, str(trained[0].parent))
    found = get_feature_extractor("fmnistnet")
    assert (found.name, found.hash, found.num_features) == ("fmnistnet", extractor.hash, extractor.num_features)


def test_registry_errors_name_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(FEATURE_NETS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="fashion-mnist.pt"):
        get_feature_extractor("fmnistnet")
    with pytest.raises(UserError, match="must be one of fmnistnet, inception"):
        get_feature_extractor("lenet")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes ``import torch_fidelity`` fail
    expected = "needs torch-fidelity: pip install torch-fidelity, and the FID Inception weights file"
    with pytest.raises(UserError, match=expected):
        get_feature_extractor("inception")


# --- FID and KID ------------------------------------------------------------------------------------


def test_fid_and_kid_are_zero_for_a_set_with_itself_and_grow_with_noise(extractor, digits):
    real = digits[0][:300]
    same = compute_fid_kid(real, real, extractor, kid_subset_size=200)
    noisy = [compute_fid_kid(real, noised(real, sigma), extractor, kid_subset_size=200) for sigma in (30, 60, 120)]
    fids = [result["fid"] for result in noisy]
    assert fids[0] > 0 and fids == sorted(fids) and fids[2] > 2 * fids[0]
    assert abs(same["fid"]) < 1e-3 * fids[0]
    kids = [result["kid_mean"] for result in noisy]
    assert kids[0] > 0 and kids == sorted(kids)
    assert abs(same["kid_mean"]) < 0.1 * kids[1]  # unbiased: subset noise around 0
    assert set(same) == {"fid", "kid_mean", "kid_std"}


def test_extractor_plugged_into_torchmetrics_gives_the_same_fid(extractor, digits):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = digits[0][:200], noised(digits[0][200:400], 60)
    metric = FrechetInceptionDistance(feature=extractor)  # uint8 images go straight to the extractor
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = compute_fid_kid(real, fake, extractor, kid_subset_size=100)["fid"]
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-5)


def test_kid_subset_size_is_clipped_to_the_sample_count(extractor, digits):
    result = compute_fid_kid(digits[0][:50], noised(digits[0][:40], 60), extractor, kid_subset_size=1000)
    assert result["kid_mean"] > 0


def test_cached_real_features_give_the_same_numbers_and_are_reused(tmp_path, extractor, digits):
    real, fake = digits[0][:300], noised(digits[0][300:], 60)
    uncached = compute_fid_kid(real, fake, extractor, kid_subset_size=200)
    first = compute_fid_kid(real, fake, extractor, kid_subset_size=200, cache_key="digits_train", cache_dir=tmp_path)
    (cache_file,) = tmp_path.iterdir()
    assert cache_file.name.startswith(f"digits_train-n300-fmnistnet-{extractor.hash}-")
    features = torch.load(cache_file, weights_only=True)
    assert features.dtype == torch.float64 and features.shape == (300, extractor.num_features)
    modified = cache_file.stat().st_mtime_ns
    second = compute_fid_kid(real, fake, extractor, kid_subset_size=200, cache_key="digits_train", cache_dir=tmp_path)
    assert cache_file.stat().st_mtime_ns == modified and len(list(tmp_path.iterdir())) == 1
    assert first == pytest.approx(uncached, rel=1e-9) and second == first
    compute_fid_kid(real[:150], fake, extractor, kid_subset_size=100, cache_key="digits_train", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # another subset of the same split gets its own file


def test_a_corrupt_cache_file_is_recomputed(tmp_path, extractor, digits):
    real, fake = digits[0][:100], noised(digits[0][:100], 60)
    first = compute_fid_kid(real, fake, extractor, kid_subset_size=50, cache_key="digits_train", cache_dir=tmp_path)
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_bytes(b"not a tensor")
    again = compute_fid_kid(real, fake, extractor, kid_subset_size=50, cache_key="digits_train", cache_dir=tmp_path)
    assert again == first and torch.load(cache_file, weights_only=True).shape == (100, extractor.num_features)


def test_bad_inputs_are_user_errors(extractor, digits):
    with pytest.raises(UserError, match="uint8"):
        compute_fid_kid(digits[0].float(), digits[0], extractor)
    with pytest.raises(UserError, match="cache key"):
        compute_fid_kid(digits[0], digits[0], extractor, cache_key="../escape")


@pytest.mark.parametrize(
    "args, name",
    [
        (("fid", 10_000, "train", "fmnistnet"), "fid10k_train_fmnistnet"),
        (("fid", 50_000, "train", "inception"), "fid50k_train_inception"),
        (("kid", 500, "test", "fmnistnet"), "kid500_test_fmnistnet"),
        (("fid", 2500, "train", "fmnistnet"), "fid2500_train_fmnistnet"),
    ],
)
def test_metric_names_carry_the_protocol(args, name):
    assert metric_name(*args) == name


# --- generating images --------------------------------------------------------------------------------


class TinyDecoder(nn.Module):
    """z (B, 4) [, y (B,)] → (B, 1, 6, 6) spanning well beyond [0, 1]; records the labels it saw."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 36), nn.BatchNorm1d(36))
        self.seen_labels: list[torch.Tensor] = []

    def forward(self, z, y=None):
        if y is not None:
            self.seen_labels.append(y)
        return self.net(z).view(-1, 1, 6, 6) * 3


def test_generate_images_quantises_in_eval_mode_and_restores_the_mode():
    decoder = TinyDecoder().train()
    images = generate_images(decoder, 7, z_dim=4, batch_size=3, seed=5)
    assert images.dtype == torch.uint8 and images.shape == (7, 1, 6, 6)
    assert images.min() == 0 and images.max() == 255  # clamped to [0, 1] before quantising
    assert decoder.training
    assert decoder.net[1].num_batches_tracked == 0  # BatchNorm ran in eval mode
    torch.testing.assert_close(images, generate_images(decoder, 7, z_dim=4, batch_size=7, seed=5))
    assert not torch.equal(images, generate_images(decoder, 7, z_dim=4, seed=6))


def test_generate_images_passes_labels_to_a_conditional_decoder():
    decoder = TinyDecoder().eval()
    labels = torch.arange(5)
    generate_images(decoder, 5, z_dim=4, batch_size=2, labels=labels)
    assert torch.equal(torch.cat(decoder.seen_labels), labels) and not decoder.training
    with pytest.raises(UserError, match="labels must have shape"):
        generate_images(decoder, 4, z_dim=4, labels=labels)


def test_fid_has_the_closed_form_of_two_gaussians_moments():
    """FID = |μ_r − μ_f|² + Tr(C_r + C_f − 2 (C_r C_f)^½): a shift by m adds |m|², a scale by s of centred
    features gives (1 − s)² Tr(C). Checks our use of the library against the formula, not against itself."""
    from softintrovae.metrics.fid import fid_kid_from_features

    generator = torch.Generator().manual_seed(0)
    real = torch.randn(400, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator, dtype=torch.float64)
    real = real - real.mean(0)
    shift = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, 1.5], dtype=torch.float64)
    assert fid_kid_from_features(real, real + shift, kid_subset_size=50)["fid"] == pytest.approx(float(shift @ shift), rel=1e-4)
    trace = float(torch.cov(real.T).trace())
    assert fid_kid_from_features(real, 0.5 * real, kid_subset_size=50)["fid"] == pytest.approx(0.25 * trace, rel=1e-4)
