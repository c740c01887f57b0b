"""Class-conditional models, mixed precision settings, channels_last, and data-parallel training
(two gloo processes under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from softintrovae.cli import main
from softintrovae.config import MethodConfig, load_config
from softintrovae.data import ImageStream
from softintrovae.errors import RunWarning, UserError
from softintrovae.methods import SoftIntroVAE, Stepper
from softintrovae.models import build_models
from softintrovae.models.resnet import ResidualDecoder, ResidualEncoder
from softintrovae.checkpoint import load_checkpoint
from softintrovae.rundir import RunDir
from softintrovae.trainer import Trainer, autocast_for, train

from .conftest import as_cli_sets, tiny_image

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- class-conditional training --------------------------------------------------------------


def test_conditional_step_passes_each_kind_its_labels():
    seen = []

    class Recording(ResidualDecoder):
        def forward(self, z, y=None):
            seen.append(None if y is None else y.clone())
            return super().forward(z, y)

    torch.manual_seed(0)
    encoder = ResidualEncoder((1, 8, 8), (4,), z_dim=3, num_classes=5)
    decoder = Recording((1, 8, 8), (4,), z_dim=3, num_classes=5)
    optimizers = [torch.optim.Adam(m.parameters(), 1e-3) for m in (encoder, decoder)]
    method = SoftIntroVAE(encoder, decoder, *optimizers, MethodConfig(vae_warmup_steps=0), scale=1 / 64, z_dim=3)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    losses = method.step(x, 0, y)
    assert all(torch.isfinite(v) for v in losses.values())
    assert seen and all(labels is not None and torch.equal(labels, y) for labels in seen)  # reals, negatives, prior samples


def test_conditional_model_labels_change_the_output():
    torch.manual_seed(0)
    decoder = ResidualDecoder((1, 8, 8), (4,), z_dim=3, num_classes=4).eval()
    z = torch.randn(2, 3)
    with torch.no_grad():
        assert not torch.allclose(decoder(z, torch.tensor([0, 0])), decoder(z, torch.tensor([1, 1])))


def test_conditional_image_run_end_to_end(npz, tmp_path):
    out = tmp_path / "run"
    sets = as_cli_sets(tiny_image(npz, train__steps=5, model__conditional=True))
    assert main(["train", "npz", "--out", str(out), *sets]) == 0
    state = load_checkpoint(RunDir(out).latest_checkpoint())
    assert state["encoder"]["head.weight"].shape[1] == 8 * 2 * 2 + 10  # features + one-hot of the 10 classes
    for command in (["sample", str(out), "-n", "10"], ["reconstruct", str(out)], ["interpolate", str(out)]):
        assert main(command) == 0
    assert len(list((out / "pictures").glob("*.png"))) == 4
    assert (out / "samples.png").is_file() and (out / "reconstructions.png").is_file()


def test_conditional_needs_labels_and_a_resnet(tmp_path, capsys):
    rng = np.random.default_rng(0)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(UserError, match="no class labels"):
        train("npz", out=tmp_path / "a", overrides=tiny_image(unlabelled, train__steps=1, model__conditional=True))
    assert not (tmp_path / "a").exists()
    assert main(["train", "demo", "--out", str(tmp_path / "b"), "--set", "model.conditional=true"]) == 2
    assert capsys.readouterr().err.strip() == "softintrovae: error: model.conditional is true, but the data have no class labels"
    assert not (tmp_path / "b").exists()
    with pytest.raises(UserError, match="needs model.arch resnet"):
        build_models(load_config("demo", {"model.conditional": True}).model, (2,), num_classes=3)


def test_cifar10_conditional_preset_is_conditional():
    config = load_config("cifar10-conditional")
    assert config.model.conditional and config.data.name == "cifar10" and config.model.channels == [64, 128, 256]


# ---- precision and memory format -------------------------------------------------------------


def test_fp16_mixed_is_refused_off_cuda_in_one_line(npz, tmp_path, capsys):
    sets = as_cli_sets(tiny_image(npz, train__steps=1, train__precision="fp16-mixed", train__device="cpu"))
    assert main(["train", "npz", "--out", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "fp16-mixed needs a CUDA device" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert autocast_for(torch.device("cpu"), "fp32")().__class__.__name__ == "nullcontext"


def test_channels_last_trains_the_same_model_as_contiguous(npz, tmp_path):
    """NHWC changes the memory layout only: the updates agree with NCHW up to float rounding."""
    runs = {}
    for flag in (False, True):
        overrides = tiny_image(npz, train__steps=4, train__channels_last=flag)
        result = train("npz", out=tmp_path / f"cl{flag}", overrides=overrides)
        runs[flag] = load_checkpoint(RunDir(result.run_dir).latest_checkpoint())
    for network in ("encoder", "decoder"):
        for key, value in runs[False][network].items():
            torch.testing.assert_close(runs[True][network][key], value, rtol=1e-3, atol=1e-4, msg=f"{network}.{key}")


def test_bf16_mixed_image_run_is_finite(npz, tmp_path):
    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=4, train__precision="bf16-mixed", train__channels_last=True))
    assert all(np.isfinite(v) for k, v in result.metrics.items())


# ---- data parallel ---------------------------------------------------------------------------


def test_image_stream_shards_cover_each_epoch_once():
    images = torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1)
    streams = [ImageStream(images, None, batch_size=3, seed=5, rank=r, world_size=2) for r in range(2)]
    assert streams[0].steps_per_epoch == 4  # 24 images / (2 processes x 3)
    for epoch in range(2):
        seen = []
        for step in range(epoch * 4, epoch * 4 + 4):
            for stream in streams:
                seen += stream.batch(step)[0].mul(255).round().long().view(-1).tolist()
        assert sorted(seen) == list(range(24))
    single = ImageStream(images, None, batch_size=3, seed=5)
    assert torch.equal(single.batch(0)[0], streams[0].batch(0)[0])  # rank 0 starts like a single process


def _gradient_averaging_worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = torch.randn(8, 3)
    shard = data[rank * 4 : (rank + 1) * 4]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Stepper(distributed=True).update([optimizer], model(shard).pow(2).mean(), list(model.parameters()))
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    torch.multiprocessing.spawn(_gradient_averaging_worker, args=(_free_port(), tmp_path), nprocs=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = torch.randn(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    model(data).pow(2).mean().backward()
    optimizer.step()
    for rank in range(2):
        for key, value in torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).items():
            torch.testing.assert_close(value, model.state_dict()[key])


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_two_process_torchrun_run(npz, tmp_path, cache):
    """torchrun, 2 gloo processes: same weights everywhere, different data shards (held in memory, or
    read by a DataLoader worker per process), rank 0 alone writes the run, and the run resumes in a
    single process."""
    overrides = tiny_image(npz, train__steps=6, train__checkpoint_every=3, model__conditional=True, data__batch_size=4,
                           data__cache=cache, data__workers=1)  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), json.dumps(overrides),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key
    assert not torch.equal(ranks[0]["x"], ranks[1]["x"])  # each process trained on its own shard
    run = RunDir(tmp_path / "run")
    assert [p.name for p in run.checkpoints()] == ["step_0000003.pt", "step_0000006.pt"]
    steps = [r["step"] for r in run.read_log() if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one writer: no duplicated log lines
    state = load_checkpoint(run.latest_checkpoint())
    for key, value in state["encoder"].items():
        if f"encoder.{key}" in ranks[0]["params"]:
            assert torch.equal(value, ranks[0]["params"][f"encoder.{key}"])
    with pytest.warns(RunWarning, match="world_size 2 then, 1 now"):  # the shards' order cannot continue exactly
        trainer = Trainer.resume(run.path, {"train.steps": 8})
    trainer.fit()
    assert trainer.step == 8
