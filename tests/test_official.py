"""Importing checkpoints of the official Soft-IntroVAE image trainer: output parity, inspection, errors,
and ``softintrovae import-official``, which makes a run directory of one.

The fixtures (``shared/fixtures/official-checkpoints``, beside the repository) are checkpoints written
by the official trainer's own model, with that model's eval-mode outputs for four inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import softintrovae
from softintrovae.checkpoint import load_checkpoint
from softintrovae.cli import main
from softintrovae.config import load_config, load_run_config
from softintrovae.errors import UserError
from softintrovae.official import import_official, inspect_official, read_official

from .conftest import use_with_every_command

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-checkpoints"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/official-checkpoints is absent")

# fixture name → (preset, overrides, what inspect_official reads from the checkpoint)
CASES = {
    "fmnist28": ("fashion-mnist", {}, dict(image_shape=(1, 28, 28), channels=[64, 128], z_dim=32, num_classes=0)),
    "cifar32-small": (
        "cifar10",
        {"model.channels": [16, 32, 64], "model.z_dim": 16},
        dict(image_shape=(3, 32, 32), channels=[16, 32, 64], z_dim=16, num_classes=0),
    ),
    "cifar32-cond": (
        "cifar10-conditional",
        {"model.channels": [16, 32, 64], "model.z_dim": 16},
        dict(image_shape=(3, 32, 32), channels=[16, 32, 64], z_dim=16, num_classes=10),
    ),
    "celeb64-small": (
        "celeba256",
        {"model.channels": [8, 16, 32, 64], "model.z_dim": 24, "data.image_size": 64},
        dict(image_shape=(3, 64, 64), channels=[8, 16, 32, 64], z_dim=24, num_classes=0),
    ),
}


def checkpoint(name: str) -> Path:
    return FIXTURES / f"{name}_model_epoch_7_iter_0.pth"


@needs_fixtures
@pytest.mark.parametrize("name", CASES)
def test_imported_networks_compute_the_official_outputs(name):
    preset, overrides, held = CASES[name]
    reference = dict(np.load(FIXTURES / f"{name}_io.npz"))
    num_classes = held["num_classes"]
    encoder, decoder, info = import_official(checkpoint(name), load_config(preset, overrides), held["image_shape"], num_classes)
    assert not encoder.training and not decoder.training
    labels = torch.from_numpy(reference["y_onehot"]).argmax(1) if num_classes else None
    extra = (labels,) if num_classes else ()
    with torch.no_grad():
        mu, logvar = encoder(torch.from_numpy(reference["x"]), *extra)
        decoded = decoder(torch.from_numpy(reference["z"]), *extra)
    for produced, key in ((mu, "mu"), (logvar, "logvar"), (decoded, "decoded")):
        np.testing.assert_allclose(produced.numpy(), reference[key], rtol=0, atol=1e-5, err_msg=key)
    assert info["epoch"] == 7


@needs_fixtures
@pytest.mark.parametrize("name", CASES)
def test_inspect_reads_what_the_checkpoint_holds(name):
    _, _, held = CASES[name]
    info = inspect_official(checkpoint(name))
    assert {key: info[key] for key in held} == held
    assert info["conditional"] == (held["num_classes"] > 0) and info["epoch"] == 7


@needs_fixtures
def test_shapes_default_to_the_checkpoints():
    preset, overrides, _ = CASES["cifar32-cond"]
    encoder, decoder, _ = import_official(checkpoint("cifar32-cond"), load_config(preset, overrides))
    assert encoder.num_classes == decoder.num_classes == 10
    assert decoder(torch.zeros(2, 16), torch.tensor([0, 9])).shape == (2, 3, 32, 32)


@needs_fixtures
def test_every_tensor_is_imported_including_batchnorm_statistics():
    preset, overrides, held = CASES["cifar32-small"]
    encoder, decoder, _ = import_official(checkpoint("cifar32-small"), load_config(preset, overrides))
    official = read_official(checkpoint("cifar32-small"))["model"]
    ours = [*encoder.state_dict().values(), *decoder.state_dict().values()]
    assert len(ours) == len(official)
    # running statistics are randomised in the fixtures, so equal sums mean they were copied, not reset
    assert sum(float(t.double().sum()) for t in ours) == pytest.approx(sum(float(t.double().sum()) for t in official.values()))


@needs_fixtures
def test_a_checkpoint_for_another_preset_is_one_line_naming_the_key_and_the_fix():
    with pytest.raises(UserError) as error:
        import_official(checkpoint("fmnist28"), load_config("cifar10"), (3, 32, 32), 0)
    message = str(error.value)
    assert "\n" not in message and "does not fit cifar10" in message
    assert "encoder.main.0.weight has shape (64, 1, 5, 5), the model expects (64, 3, 5, 5)" in message
    assert "model.z_dim=32 model.channels=[64,128]" in message and "1×28×28 images" in message


@needs_fixtures
def test_a_conditional_checkpoint_into_an_unconditional_model_names_the_fc_layer():
    preset, overrides, _ = CASES["cifar32-small"]
    with pytest.raises(UserError) as error:
        import_official(checkpoint("cifar32-cond"), load_config(preset, overrides))
    message = str(error.value)
    assert "\n" not in message
    assert "encoder.fc.weight has shape (32, 1034), the model expects (32, 1024)" in message
    assert "model.conditional=true" in message


@needs_fixtures
def test_a_model_with_a_different_number_of_levels_is_refused():
    config = load_config("cifar10", {"model.channels": [16, 32, 64, 64], "model.z_dim": 16})
    expected = r"decoder\.main\.res_in_8\.conv_expand\.weight has no counterpart.*model\.channels=\[16,32,64\]"
    with pytest.raises(UserError, match=expected):
        import_official(checkpoint("cifar32-small"), config, (3, 64, 64))


@needs_fixtures
def test_truncated_foreign_and_missing_files_are_one_line(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint("fmnist28").read_bytes()[:100_000])
    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    ours = tmp_path / "ours.pth"
    torch.save({"step": 3, "encoder": {"head.weight": torch.zeros(2, 2)}}, ours)
    config = load_config("fashion-mnist")
    for path, expected in [
        (truncated, "is corrupt or not a checkpoint"),
        (text, "is corrupt or not a checkpoint"),
        (ours, "is not a checkpoint of the official Soft-IntroVAE image trainer"),
        (tmp_path / "absent.pth", "does not exist"),
    ]:
        with pytest.raises(UserError, match=expected) as error:
            import_official(path, config)
        assert "\n" not in str(error.value)
        with pytest.raises(UserError, match=expected):
            inspect_official(path)


def test_model_arch_must_be_resnet(tmp_path):
    # the tensors inspection reads, of an official model with channels (4,), z_dim 2 and 8×8 images
    state = {
        "encoder.main.0.weight": torch.zeros(4, 1, 5, 5),
        "encoder.main.res_in_4.conv2.weight": torch.zeros(4, 4, 3, 3),
        "encoder.fc.weight": torch.zeros(4, 4 * 16),
        "decoder.fc.0.weight": torch.zeros(4 * 16, 2),
        "decoder.main.predict.weight": torch.zeros(1, 4, 5, 5),
    }
    path = tmp_path / "official.pth"
    torch.save({"epoch": 1, "model": state}, path)
    info = inspect_official(path)
    assert (info["image_shape"], info["channels"], info["z_dim"], info["num_classes"]) == ((1, 8, 8), [4], 2, 0)
    with pytest.raises(UserError, match="model.arch=resnet"):
        import_official(path, load_config("fashion-mnist", {"model.arch": "mlp"}))


# ---- softintrovae import-official: a run directory of ours ----------------------------------------


def import_argv(name: str, out: Path, preset: str | None = None, overrides: dict | None = None) -> list[str]:
    preset_of, overrides_of, _ = CASES[name]
    sets = [a for k, v in (overrides_of if overrides is None else overrides).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return ["import-official", str(checkpoint(name)), "--preset", preset or preset_of, *sets, "--out", str(out)]


@needs_fixtures
@pytest.mark.parametrize("name", CASES)
def test_import_official_writes_a_run_whose_model_computes_the_official_outputs(name, tmp_path, capsys):
    preset, overrides, held = CASES[name]
    out = tmp_path / "run"
    assert main(import_argv(name, out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "command.txt", "config.yaml"]
    assert load_run_config(out / "config.yaml") == load_config(preset, overrides)
    assert (out / "command.txt").read_text().startswith(f"softintrovae import-official {checkpoint(name)} --preset {preset}")
    state = load_checkpoint(out / "checkpoints" / "step_0000007.pt")  # written with its checksum, which is checked here
    assert state["step"] == 7 and state["imported"]["epoch"] == 7 and "optimizers" not in state
    model = softintrovae.load(out)
    assert (model.step, model.input_shape, model.num_classes) == (7, held["image_shape"], held["num_classes"])
    reference = dict(np.load(FIXTURES / f"{name}_io.npz"))
    labels = torch.from_numpy(reference["y_onehot"]).argmax(1) if held["num_classes"] else None
    mu, logvar = model.encode(torch.from_numpy(reference["x"]), labels)
    decoded = model.decode(torch.from_numpy(reference["z"]), labels)
    for produced, key in ((mu, "mu"), (logvar, "logvar"), (decoded, "decoded")):
        np.testing.assert_allclose(produced.numpy(), reference[key], rtol=0, atol=1e-5, err_msg=key)


@needs_fixtures
@pytest.mark.parametrize(
    "name, preset, overrides, message",
    [
        ("fmnist28", "cifar10", {}, "does not fit cifar10: encoder.main.0.weight has shape (64, 1, 5, 5)"),
        ("cifar32-cond", "cifar10", {"model.channels": [16, 32, 64], "model.z_dim": 16}, "model.conditional=true"),
        ("celeb64-small", "celeba256", {"model.channels": [8, 16, 32, 64], "model.z_dim": 24}, "use 3×64×64 images"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_preset_is_one_line_exit_2_and_no_run(name, preset, overrides, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(import_argv(name, out, preset, overrides)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@needs_fixtures
def test_import_official_refuses_a_missing_file_and_an_existing_run(tmp_path, capsys):
    assert main(["import-official", str(tmp_path / "absent.pth"), "--preset", "fashion-mnist", "--out", str(tmp_path / "a")]) == 2
    assert main(import_argv("fmnist28", tmp_path / "run")) == 0
    assert main(import_argv("fmnist28", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "already holds a run" in err[1]
    assert not (tmp_path / "a").exists()


@needs_fixtures
def test_an_imported_run_is_sampled_reconstructed_and_exported_but_not_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(import_argv("fmnist28", out)) == 0
    use_with_every_command(out, tmp_path, (28, 28, 1))
    assert softintrovae.load(tmp_path / "model.safetensors").step == 7
    config, checkpoints = (out / "config.yaml").read_text(), sorted((out / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--set", "train.epochs=300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was imported from the official Soft-IntroVAE image trainer" in err[0] and "cannot be resumed" in err[0]
    assert (out / "config.yaml").read_text() == config and sorted((out / "checkpoints").iterdir()) == checkpoints
