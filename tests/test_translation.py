"""Image translation: the two-encoder AdaIN model, per-latent KL weights, the rendered benchmark with
its ground truth, content transfer and its error, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from softintrovae.cli import main
from softintrovae.config import DataConfig, MethodConfig, ModelConfig
from softintrovae.data import rendered
from softintrovae.data.translation import load_cars3d, load_kth, load_translation_set
from softintrovae.errors import UserError
from softintrovae.methods import VAE, SoftIntroVAE, latent_betas
from softintrovae.models import build_models
from softintrovae.models.base import Encoder, LatentLayout
from softintrovae.models.layers import AdaIN, instance_statistics
from softintrovae.objectives import kl_to_standard_normal
from softintrovae.rundir import RunDir
from softintrovae import translation
from softintrovae.translation import transfer, transfer_errors, transfer_matrix

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(size: int = 16, content: int = 3, class_: int = 5):
    config = ModelConfig(arch="translation", channels=[4, 8], z_dim=content, class_z_dim=class_, hidden_dim=8)
    torch.manual_seed(0)
    return build_models(config, (3, size, size))


@pytest.fixture
def small_benchmark(monkeypatch, tmp_path):
    """The rendered benchmark shrunk to 6 identities (2 held out) x 3 azimuths x 2 elevations, cached in tmp_path."""
    monkeypatch.setattr(rendered, "NUM_CLASSES", 6)
    monkeypatch.setattr(rendered, "TEST_CLASSES", 2)
    monkeypatch.setattr(rendered, "AZIMUTHS", 3)
    monkeypatch.setattr(rendered, "ELEVATIONS", (10.0, 30.0))
    monkeypatch.setenv(rendered.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


# ---- building and shapes ------------------------------------------------------------------------


def test_paper_sized_model_has_the_layers_of_section_9_3():
    encoder, decoder = build_models(ModelConfig(arch="translation", channels=[64, 128, 256, 256], z_dim=128, class_z_dim=256), (3, 64, 64))
    for branch in (encoder.content, encoder.class_):
        convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == [64, 128, 256, 256]
        assert sum(isinstance(m, nn.Linear) for m in branch.head) == 3
    assert sum(isinstance(m, nn.Linear) for m in decoder.project) == 3
    assert sum(isinstance(m, nn.Conv2d) for m in decoder.modules()) == 6 and len(decoder.norms) == 4
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in (*encoder.modules(), *decoder.modules()))
    x = torch.rand(2, 3, 64, 64)
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (2, 384) and encoder.latents.sizes == (128, 256)
    assert decoder(mu).shape == (2, 3, 64, 64)


def test_concatenated_latent_is_content_then_class():
    encoder, decoder = tiny_model()
    x = torch.rand(4, 3, 16, 16)
    mu, logvar = encoder(x)
    torch.testing.assert_close(mu[:, :3], encoder.content(x)[0])
    torch.testing.assert_close(logvar[:, 3:], encoder.class_(x)[1])
    z_content, z_class = torch.randn(4, 3), torch.randn(4, 5)
    torch.testing.assert_close(decoder(torch.cat([z_content, z_class], 1)), decoder.decode(z_content, z_class))
    with pytest.raises(UserError, match="3 \\+ 5 dimensions, got 7"):
        decoder(torch.randn(2, 7))


def test_unsupported_settings_are_one_line_errors():
    with pytest.raises(UserError, match="unsupervised"):
        build_models(ModelConfig(arch="translation", channels=[4], conditional=True), (3, 16, 16), num_classes=3)
    with pytest.raises(UserError, match="class_z_dim must be > 0"):
        ModelConfig(arch="translation", class_z_dim=0)
    with pytest.raises(UserError, match="beta_neg_class must be >= 0"):
        MethodConfig(beta_neg_class=-1.0)


# ---- AdaIN ----------------------------------------------------------------------------------------


def test_instance_statistics_normalise_each_channel_of_each_sample():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 9, 9, generator=generator) * 4 + 2
    normalised, mean, std = instance_statistics(x, eps=0.0)
    torch.testing.assert_close(mean, x.mean((2, 3)))
    torch.testing.assert_close(std, x.std((2, 3), unbiased=False))
    torch.testing.assert_close(normalised.mean((2, 3)), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std((2, 3), unbiased=False), torch.ones(3, 5), atol=1e-5, rtol=0)


def test_adain_layer_takes_its_statistics_from_the_style_vector():
    layer = AdaIN(channels=6, style_dim=4)
    style = torch.randn(2, 4)
    scale, shift = layer.style(style).chunk(2, dim=1)
    out = layer(torch.randn(2, 6, 5, 5) * 3, style)
    torch.testing.assert_close(out.mean((2, 3)), shift, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3), unbiased=False), scale.abs(), atol=1e-3, rtol=0)
    fresh = AdaIN(channels=6, style_dim=4)  # a fresh layer's scale starts around 1, its shift around 0
    assert bool((fresh.style.bias[:6] > 0.5).all()) and bool((fresh.style.bias[6:].abs() < 0.5).all())


def test_a_translation_checkpoint_from_before_the_shared_adain_still_loads_and_computes_the_same():
    _, decoder = tiny_model()
    decoder.eval()
    z = torch.randn(3, decoder.z_dim)
    expected = decoder(z)
    old = {}  # the former layout: norms.i.affine with rows [mean; std - 1]
    for key, value in decoder.state_dict().items():
        if ".style." in key:
            std, mean = value.chunk(2, dim=0)
            old[key.replace(".style.", ".affine.")] = torch.cat([mean, std - 1.0 if key.endswith("bias") else std])
        else:
            old[key] = value
    _, fresh = tiny_model()
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.eval()(z), expected)


# ---- per-latent KL and gradient routing ----------------------------------------------------------------


def test_each_latents_kl_has_its_own_beta_and_reaches_only_its_own_encoder():
    encoder, decoder = tiny_model()
    config = MethodConfig(beta_kl=0.7, beta_kl_class=0.2, beta_neg=3.0, beta_neg_class=5.0)
    beta_kl, kl_weights, beta_neg, neg_weights = latent_betas(config, encoder.latents)
    assert beta_kl == beta_neg == 1.0
    torch.testing.assert_close(kl_weights, torch.tensor([0.7] * 3 + [0.2] * 5))
    torch.testing.assert_close(neg_weights, torch.tensor([3.0] * 3 + [5.0] * 5))
    assert latent_betas(config, LatentLayout.single(2)) == (0.7, None, 3.0, None)  # one latent: the plain scalars

    mu, logvar = encoder(torch.rand(4, 3, 16, 16))
    weighted = kl_to_standard_normal(mu, logvar, weights=kl_weights)
    by_hand = 0.7 * kl_to_standard_normal(mu[:, :3], logvar[:, :3]) + 0.2 * kl_to_standard_normal(mu[:, 3:], logvar[:, 3:])
    torch.testing.assert_close(weighted, by_hand)
    kl_content = kl_to_standard_normal(mu[:, :3], logvar[:, :3])
    grads = torch.autograd.grad(kl_content, [*encoder.content.parameters(), *encoder.class_.parameters()], allow_unused=True)
    n = len(list(encoder.content.parameters()))
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:1])  # the content encoder gets a gradient
    assert all(g is None or not g.any() for g in grads[n:])  # the class encoder none


@pytest.mark.parametrize("method_cls", [VAE, SoftIntroVAE])
def test_methods_log_and_weigh_each_latents_kl(method_cls):
    encoder, decoder = tiny_model()
    opts = (torch.optim.Adam(encoder.parameters(), 1e-4), torch.optim.Adam(decoder.parameters(), 1e-4))
    config = MethodConfig(name=method_cls.name, beta_kl=0.7, beta_kl_class=0.2, beta_neg=30.0, beta_neg_class=10.0, vae_warmup_steps=0)
    method = method_cls(encoder, decoder, *opts, config, scale=1 / 768, z_dim=decoder.z_dim)
    x = torch.rand(4, 3, 16, 16)
    before = [p.clone() for p in encoder.class_.parameters()]
    losses = method.step(x, 0)
    assert losses["kl"].item() == pytest.approx(0.7 * losses["kl_content"].item() + 0.2 * losses["kl_class"].item(), rel=1e-5)
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, encoder.class_.parameters()))


# ---- the rendered benchmark ---------------------------------------------------------------------------


def test_renderer_is_deterministic_and_identities_and_poses_differ():
    identity = rendered.object_identity(3)
    first = rendered.render(identity, 45.0, 20.0, 16)
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first, rendered.render(rendered.object_identity(3), 45.0, 20.0, 16))
    assert not np.array_equal(first, rendered.render(identity, 60.0, 20.0, 16))
    assert not np.array_equal(first, rendered.render(rendered.object_identity(4), 45.0, 20.0, 16))
    assert first.max() > 100 and (first.sum(-1) == 0).mean() > 0.2  # a lit object on a black background


def test_ground_truth_transfer_is_the_render_of_a_class_in_b_pose(small_benchmark):
    train, test = (load_translation_set(DataConfig(name="rendered-objects", image_size=16), split) for split in ("train", "test"))
    assert len(train.images) == 4 * 6 and len(test.images) == 2 * 6
    assert set(train.classes.tolist()) == {0, 1, 2, 3} and set(test.classes.tolist()) == {4, 5}
    a, b = torch.tensor([0, 7, 3, 11]), torch.tensor([8, 1, 9, 2])
    answer, known = test.ground_truth(a, b)
    assert known.all()
    for i, j, k in zip(a.tolist(), b.tolist(), answer.tolist()):
        pose = rendered.pose_angles(int(test.poses[j]), 3, (10.0, 30.0))
        expected = rendered.render(rendered.object_identity(int(test.classes[i])), *pose, 16)
        assert np.array_equal(test.images[k].permute(1, 2, 0).numpy(), expected)
    assert torch.equal(test.ground_truth(a, a)[0], a)  # transferring an image's own content gives itself
    assert list((small_benchmark / "cache" / "rendered").glob("*.npy"))  # cached for the next load
    again = load_translation_set(DataConfig(name="rendered-objects", image_size=16), "test")
    assert torch.equal(again.images, test.images)


def test_cars3d_and_kth_from_user_files(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cars.npz"
    classes, azimuth, elevation = np.repeat(np.arange(22), 4), np.tile([0, 1], 44), np.tile([0, 0, 1, 1], 22)
    np.savez(path, images=rng.integers(0, 256, (88, 8, 8, 3), dtype=np.uint8), classes=classes, azimuth=azimuth, elevation=elevation)
    train, test = load_cars3d(str(path), "train", 16), load_cars3d(str(path), "test", 16)
    assert train.images.shape == (8, 3, 16, 16) and test.images.shape == (80, 3, 16, 16)
    assert set(test.classes.tolist()) == set(range(2, 22)) and test.poses.tolist()[:4] == [0, 2, 1, 3]
    with pytest.raises(UserError, match="needs arrays 'images' and 'classes'"):
        np.savez(tmp_path / "bad.npz", x=np.zeros(3))
        load_cars3d(str(tmp_path / "bad.npz"), "train", 16)
    from PIL import Image

    for person in ("person01", "person02"):
        (tmp_path / "kth" / person).mkdir(parents=True)
        for k in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "kth" / person / f"{k}.png")
    kth_train, kth_test = load_kth(str(tmp_path / "kth"), "train", 8), load_kth(str(tmp_path / "kth"), "test", 8)
    assert kth_train.images.shape == (9, 1, 8, 8) and len(kth_test.images) == 1 and kth_test.poses is None


# ---- content transfer ---------------------------------------------------------------------------------------


class OracleEncoder(Encoder):
    """Looks each image up in the set: content latent = its pose id, class latent = its class id."""

    def __init__(self, data):
        super().__init__(LatentLayout(("content", "class"), (1, 1)))
        self.data, self.dummy = data, nn.Parameter(torch.zeros(()))

    def forward(self, x, labels=None):
        flat = self.data.images.float().div(255).flatten(1)
        index = torch.cdist(x.flatten(1), flat).argmin(1)
        mu = torch.stack([self.data.poses[index], self.data.classes[index]], 1).float()
        return mu, torch.zeros_like(mu)


class OracleDecoder(nn.Module):
    """Returns the set's image of (class, pose); ``swapped`` reads the two latents the wrong way round."""

    def __init__(self, data, swapped=False):
        super().__init__()
        self.data, self.swapped, self.dummy = data, swapped, nn.Parameter(torch.zeros(()))

    def forward(self, z):
        pose, class_ = z.long().unbind(1)
        if self.swapped:
            pose, class_ = class_, pose
        return torch.stack([self.data.images[self.data.lookup.get((c, p), 0)] for c, p in zip(class_.tolist(), pose.tolist())]).float().div(255)


def test_transfer_takes_class_from_a_and_content_from_b(small_benchmark):
    data = load_translation_set(DataConfig(name="rendered-objects", image_size=16), "test")
    encoder, decoder = OracleEncoder(data), OracleDecoder(data)
    images = data.images.float().div(255)
    a, b = torch.tensor([0, 6]), torch.tensor([7, 2])  # classes 4, 5 and 5, 4
    out = transfer(encoder, decoder, images[a], images[b])
    answer, _ = data.ground_truth(a, b)
    torch.testing.assert_close(out, images[answer])
    matrix = transfer_matrix(encoder, decoder, images[a], images[b])
    torch.testing.assert_close(matrix[1, 0], images[data.lookup[(5, int(data.poses[7]))]])

    perfect = transfer_errors(encoder, decoder, data, pairs=40, seed=0)
    assert perfect["transfer"]["mse"] == 0.0 and perfect["transfer"]["ssim"] == pytest.approx(1.0)
    swapped = transfer_errors(encoder, OracleDecoder(data, swapped=True), data, pairs=40, seed=0)
    assert swapped["transfer"]["mse"] > 0.001 and perfect["copy_content"] == swapped["copy_content"]
    assert perfect["copy_content"]["mse"] > 0.001 and perfect["copy_class"]["mse"] > 0.001


def test_latent_usage_tells_an_informative_latent_from_a_shifted_one():
    class ShiftedEncoder(Encoder):
        def __init__(self):
            super().__init__(LatentLayout(("content", "class"), (3, 2)))
            self.weight = nn.Parameter(torch.ones(()))

        def forward(self, x, labels=None):  # content: the same shift (2, 0, 0) for every image; class: x's first pixel, then 0
            n = len(x)
            content = torch.tensor([2.0, 0.0, 0.0]).expand(n, 3)
            class_ = torch.stack([x[:, 0, 0, 0] * self.weight, torch.zeros(n)], 1)
            return torch.cat([content, class_], 1), torch.zeros(n, 5)

    x = torch.zeros(1000, 1, 2, 2)
    x[:, 0, 0, 0] = torch.linspace(-2, 2, 1000)
    usage = translation.latent_usage(ShiftedEncoder(), x)
    assert usage["content"] == {"kl": pytest.approx(2.0), "kl_offset": pytest.approx(2.0), "active_units": 0, "dims": 3}
    spread = x[:, 0, 0, 0]
    assert usage["class"]["kl"] == pytest.approx(0.5 * float(spread.pow(2).mean()), rel=1e-5)
    assert usage["class"]["kl_offset"] == pytest.approx(0.0, abs=1e-9)
    assert usage["class"]["active_units"] == 1 and usage["class"]["dims"] == 2


def test_transfer_needs_a_two_latent_model():
    from softintrovae.models import build_models as build

    encoder, decoder = build(ModelConfig(arch="resnet", channels=[4], z_dim=4), (3, 8, 8))
    with pytest.raises(UserError, match="needs a translation model"):
        transfer(encoder, decoder, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))


# ---- the CLI end to end -------------------------------------------------------------------------------------


def test_translation_cli_end_to_end(small_benchmark, tmp_path, capsys):
    sets = {
        "data.image_size": 16, "data.batch_size": 8, "model.channels": "[4,4]", "model.z_dim": 3, "model.class_z_dim": 4,
        "model.hidden_dim": 8, "train.steps": 3, "train.eval_every": 0, "train.progress": "false",
    }  # fmt: skip
    runs = []
    for method in ("vae", "soft-introvae"):
        args = [a for k, v in {**sets, "method.name": method}.items() for a in ("--set", f"{k}={v}")]
        assert main(["train", "translation-rendered-small", "--out", str(tmp_path / method), *args]) == 0
        runs.append(str(tmp_path / method))
    capsys.readouterr()

    assert main(["translate", runs[1], "--rows", "2", "--columns", "3", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").is_file()
    assert main(["evaluate", runs[1], "--metrics", "transfer"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "soft-introvae" / "metrics.json").read_text())
    for name in ("transfer_mse_test", "transfer_ssim_test", "copy_content_mse_test", "copy_class_mse_test", "content_active_units_test", "class_kl_test"):
        assert saved[name] == printed[name]
    assert 0 < saved["transfer_mse_test"] < 1 and (tmp_path / "soft-introvae" / "transfer.png").is_file()

    out = tmp_path / "reproduce"
    assert main(["reproduce", "translation", "--runs", *runs, "--out", str(out)]) == 0
    table = (out / "translation.md").read_text()
    assert "| VAE |" in table and "| Soft-IntroVAE |" in table and "copy content" in table
    assert (out / "vae_transfer.png").is_file() and (out / "soft-introvae_transfer.png").is_file()
    capsys.readouterr()

    assert main(["translate", runs[1], "--split", "validation"]) == 2
    assert "--split must be train or test, got 'validation'" in capsys.readouterr().err
    assert main(["reproduce", "translation", "--seeds", "2"]) == 2
    assert "--seeds applies to 'reproduce table2', 'reproduce stability' and 'reproduce collapse', not to 'reproduce translation'" in capsys.readouterr().err


def test_transfer_curve_measures_every_kept_checkpoint_and_skips_a_corrupt_one(small_benchmark, tmp_path, capsys):
    sets = {
        "data.image_size": 16, "data.batch_size": 8, "model.channels": "[4,4]", "model.z_dim": 3, "model.class_z_dim": 4,
        "model.hidden_dim": 8, "train.steps": 6, "train.checkpoint_every": 2, "train.eval_every": 0, "train.progress": "false",
    }  # fmt: skip
    run = tmp_path / "run"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "translation-rendered-small", "--out", str(run), *args]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(run), "--metrics", "transfer-curve"]) == 0
    printed = capsys.readouterr().out
    curve = json.loads((run / "transfer_curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [2, 4, 6] and (run / "transfer_curve.png").is_file()
    assert all(f"step {step:>7}" in printed for step in (2, 4, 6))

    # the last point is the latest checkpoint's transfer error on the same pairs
    from softintrovae.checkpoint import TrainedModel

    model = TrainedModel.load(run)
    data = load_translation_set(model.config.data, "test")
    latest = transfer_errors(model.encoder, model.sampling_decoder, data, pairs=curve["pairs"], seed=curve["seed"])
    assert curve["points"][-1]["transfer"] == latest["transfer"]
    assert curve["points"][0]["transfer"] != curve["points"][-1]["transfer"]  # training moved the model
    assert curve["points"][0]["copy_content"] == curve["points"][-1]["copy_content"]  # the same pairs throughout

    middle = run / "checkpoints" / "step_0000004.pt"
    middle.write_bytes(middle.read_bytes()[:100])
    assert main(["evaluate", str(run), "--metrics", "transfer-curve"]) == 0
    assert "skipping step_0000004.pt" in capsys.readouterr().err
    assert [p["step"] for p in json.loads((run / "transfer_curve.json").read_text())["points"]] == [2, 6]

    assert main(["evaluate", str(tmp_path / "missing"), "--metrics", "transfer-curve"]) == 2


def test_reproduce_trains_with_the_overrides_and_records_them(tmp_path, monkeypatch):
    from softintrovae import trainer
    from softintrovae.experiments.common import compared_runs

    trained = []

    def fake_train(preset, out, overrides, argv, callbacks=None):
        trained.append((preset, out, overrides, argv))
        return trainer.RunResult(out, {})

    monkeypatch.setattr(trainer, "train", fake_train)
    paths = compared_runs(tmp_path, None, "translation-rendered-small", {"method.beta_rec": 2.0}, "translation")
    assert paths == {"vae": tmp_path / "vae", "soft-introvae": tmp_path / "soft-introvae"}
    for (preset, out, overrides, argv), method in zip(trained, ("vae", "soft-introvae")):
        assert preset == "translation-rendered-small" and out == tmp_path / method
        assert overrides == {"method.beta_rec": 2.0, "method.name": method}
        assert argv == ["softintrovae", "reproduce", "translation", "--set", "method.beta_rec=2.0"]  # command.txt repeats the run


# ---- the perceptual reconstruction loss -----------------------------------------------------------------------


def test_perceptual_loss_compares_features_and_passes_gradients_to_the_reconstruction():
    from softintrovae import objectives
    from softintrovae.perceptual import PerceptualLoss

    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 2, 3, stride=2, padding=1))]
    loss = PerceptualLoss(blocks, channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    x, x_hat = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8, requires_grad=True)
    h_x, h_y = (x - 0.5) / 0.25, (x_hat - 0.5) / 0.25
    first_x, first_y = blocks[0](h_x), blocks[0](h_y)
    by_hand = ((first_x - first_y) ** 2).flatten(1).mean(1) + ((blocks[1](first_x) - blocks[1](first_y)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss(x, x_hat), by_hand * 192)
    assert torch.equal(loss(x, x), torch.zeros(2))
    loss(x, x_hat).sum().backward()
    assert x_hat.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    assert loss(x[:, :1], x_hat[:, :1]).shape == (2,)  # gray images are repeated to RGB

    torch.testing.assert_close(objectives.reconstruction_loss(x, x_hat, loss), (by_hand * 192).mean())
    with pytest.raises(ValueError, match="needs its network"):
        objectives.reconstruction_loss(x, x_hat, "perceptual")


def test_perceptual_loss_of_our_feature_net_trains_a_translation_model(small_benchmark, tmp_path):
    from softintrovae.metrics.features import train_feature_net
    from softintrovae.trainer import train

    data = load_translation_set(DataConfig(name="rendered-objects", image_size=16), "train")
    net, _ = train_feature_net(data.images, data.classes, tmp_path / "net.pt", epochs=1, progress=False)
    overrides = {
        "data.image_size": 16, "data.batch_size": 8, "model.channels": [4, 4], "model.z_dim": 3, "model.class_z_dim": 4,
        "model.hidden_dim": 8, "train.steps": 2, "train.eval_every": 0, "train.progress": False,
        "method.reconstruction": "perceptual", "method.perceptual_net": str(net),
    }  # fmt: skip
    result = train("translation-rendered-small", out=tmp_path / "run", overrides=overrides)
    assert np.isfinite(result.metrics["rec_mse"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["rec"] > 0
    for bad, message in (("vgg16:/nonexistent.pth", "not found|needs torchvision"), (str(tmp_path / "none.pt"), "neither vgg16 nor")):
        with pytest.raises(UserError, match=message):
            train("translation-rendered-small", out=tmp_path / "bad", overrides={**overrides, "method.perceptual_net": bad})
