"""The residual image encoder/decoder: building, forward shapes, conditioning, errors, eval determinism."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from softintrovae.errors import UserError
from softintrovae.models.resnet import ResidualBlock, ResidualDecoder, ResidualEncoder, build_resnet


pytestmark = pytest.mark.usefixtures("single_thread")


# (image shape, channels, final feature-map side): small widths keep every case well under a second
CASES = [
    ((1, 8, 8), (4, 8, 8), 1),
    ((3, 16, 16), (4, 8), 4),
    ((3, 32, 32), (4, 8, 8), 4),
    ((1, 28, 28), (4, 8), 7),
    ((3, 64, 64), (4, 4, 8, 8), 4),
    ((3, 128, 128), (4, 4, 8, 8, 8), 4),
    ((3, 256, 256), (4, 4, 4, 8, 8, 8), 4),
]


@pytest.mark.parametrize("shape, channels, side", CASES, ids=[str(c[0][1]) for c in CASES])
def test_encoder_and_decoder_shapes_for_every_supported_size(shape, channels, side):
    encoder = ResidualEncoder(shape, channels, z_dim=5)
    decoder = ResidualDecoder(shape, channels, z_dim=5)
    x = torch.rand(2, *shape)
    assert encoder.features(x).shape == (2, channels[-1], side, side)
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (2, 5)
    assert decoder.start_shape == (channels[-1], side, side)
    assert decoder(mu).shape == (2, *shape)
    assert encoder.z_dim == decoder.z_dim == 5 and encoder.num_classes == decoder.num_classes == 0


def test_residual_block_uses_a_1x1_conv_only_when_the_width_changes():
    assert isinstance(ResidualBlock(4, 4).identity, torch.nn.Identity)
    widening = ResidualBlock(4, 6)
    assert widening.identity.kernel_size == (1, 1) and widening.identity.bias is None
    assert widening(torch.rand(2, 4, 5, 5)).shape == (2, 6, 5, 5)


def test_build_resnet_reads_z_dim_and_channels():
    config = SimpleNamespace(z_dim=3, channels=[4, 8])
    encoder, decoder = build_resnet(config, (1, 28, 28), num_classes=10)
    assert encoder.z_dim == decoder.z_dim == 3 and encoder.num_classes == decoder.num_classes == 10
    assert decoder(torch.randn(2, 3), torch.tensor([0, 9])).shape == (2, 1, 28, 28)


def test_conditional_models_take_the_class_and_the_decoder_depends_on_it():
    torch.manual_seed(0)
    encoder = ResidualEncoder((3, 16, 16), (4, 8), z_dim=6, num_classes=3).eval()
    decoder = ResidualDecoder((3, 16, 16), (4, 8), z_dim=6, num_classes=3).eval()
    assert encoder.head.in_features == 8 * 4 * 4 + 3
    assert decoder.project[0].in_features == 6 + 3
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 2])
    mu, logvar = encoder(x, y)
    assert mu.shape == logvar.shape == (2, 6)
    assert not torch.equal(mu, encoder(x, torch.tensor([1, 1]))[0])
    z = torch.randn(2, 6)
    assert decoder(z, y).shape == (2, 3, 16, 16)
    assert not torch.allclose(decoder(z, y), decoder(z, torch.tensor([1, 0])))


def test_conditional_models_without_labels_are_a_user_error():
    encoder = ResidualEncoder((1, 8, 8), (4,), z_dim=2, num_classes=4)
    decoder = ResidualDecoder((1, 8, 8), (4,), z_dim=2, num_classes=4)
    with pytest.raises(UserError, match="class-conditional"):
        encoder(torch.rand(1, 1, 8, 8))
    with pytest.raises(UserError, match="class-conditional"):
        decoder(torch.randn(1, 2))


@pytest.mark.parametrize(
    "shape, channels, bad",
    [
        ((3, 30, 30), (4, 8), "30"),  # neither a power of two nor 28
        ((3, 4, 4), (4,), "4"),  # a power of two below 8
        ((3, 32, 16), (4,), "32×16"),  # not square
        ((1, 28, 28), (4, 8, 8), r"\(4, 8, 8\)"),  # 28 / 8 is not whole
        ((3, 8, 8), (4, 4, 4, 4), r"\(4, 4, 4, 4\)"),  # 8 / 16 < 1
        ((3, 8, 8), (), "none"),
    ],
)
def test_unsupported_sizes_are_a_one_line_user_error_naming_the_value(shape, channels, bad):
    for model in (ResidualEncoder, ResidualDecoder):
        with pytest.raises(UserError, match=bad) as info:
            model(shape, channels, z_dim=2)
        assert "\n" not in str(info.value)


def test_eval_mode_is_deterministic_and_train_mode_updates_batchnorm_statistics():
    torch.manual_seed(0)
    encoder, decoder = ResidualEncoder((3, 16, 16), (4, 8), z_dim=4), ResidualDecoder((3, 16, 16), (4, 8), z_dim=4)
    x = torch.rand(3, 3, 16, 16)
    encoder(x)  # one training-mode pass moves the BatchNorm running statistics
    assert not torch.equal(encoder.features[1].running_mean, torch.zeros(4))
    encoder.eval(), decoder.eval()
    mu_a, logvar_a = encoder(x)
    mu_b, logvar_b = encoder(x)
    assert torch.equal(mu_a, mu_b) and torch.equal(logvar_a, logvar_b)
    assert torch.equal(decoder(mu_a), decoder(mu_a))
    assert torch.allclose(encoder(x[:1])[0], mu_a[:1], atol=1e-6)  # eval mode: a code does not depend on the batch
