"""Run tracking: TensorBoard event files that TensorBoard's own reader parses, CSV tables, the
callback API (every hook, a stop at a chosen step that leaves a resumable checkpoint)."""

from __future__ import annotations

import builtins
import csv
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from softintrovae import train, resume
from softintrovae.callbacks import STOP, Callback, CallbackList, StopAtStep
from softintrovae.checkpoint import load_checkpoint
from softintrovae.errors import UserError
from softintrovae.rundir import RunDir

from .conftest import DEBIAN_FASHION_MNIST, tiny_image, tiny_overrides

pytestmark = pytest.mark.usefixtures("single_thread")


def event_tags(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_events_hold_scalars_pictures_and_the_config(npz, tmp_path):
    pytest.importorskip("tensorboard")
    overrides = tiny_image(npz, train__steps=6, train__log_every=1, train__eval_every=3, train__loggers=["tensorboard", "csv"])
    result = train("npz", out=tmp_path / "run", overrides=overrides)
    events = event_tags(result.run_dir / "tensorboard")
    tags = events.Tags()
    assert {"train/lr", "train/loss_encoder", "eval/rec_mse", "eval/kl", "final/rec_mse", "final/kl"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("eval/kl")] == [3] and events.Scalars("final/kl")[0].value == pytest.approx(result.metrics["kl"])
    assert {"eval/samples", "eval/reconstructions", "final/samples", "final/reconstructions"} <= set(tags["images"])
    assert events.Images("final/samples")[0].width > 100
    assert "config/text_summary" in tags["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    beta_neg: 256.0\n" in text and "    - tensorboard\n" in text  # the resolved config, as Markdown code
    with open(result.run_dir / "csv" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and "loss_decoder" in rows[0]
    assert (result.run_dir / "csv" / "eval.csv").is_file() and (result.run_dir / "csv" / "final.csv").is_file()


def test_a_2d_run_logs_its_density_plot(tmp_path):
    pytest.importorskip("tensorboard")
    result = train("soft-introvae-8gaussians", out=tmp_path / "run", overrides=tiny_overrides(train__steps=5, train__loggers=["tensorboard"]))
    tags = event_tags(result.run_dir / "tensorboard").Tags()
    assert {"final/samples", "final/density"} <= set(tags["images"]) and {"final/kl", "final/gnelbo"} <= set(tags["scalars"])


class Recorder(Callback):
    """Notes every hook call (step-end calls as the step number)."""

    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.step))

    def on_step_end(self, trainer, step, losses):
        assert losses and all(isinstance(v, torch.Tensor) for v in losses.values())
        self.calls.append(step)

    def on_log(self, trainer, record):
        self.calls.append((record["kind"], record["step"]))

    def on_eval(self, trainer, step, metrics, final):
        assert set(trainer.evaluator.pictures) == {"reconstructions", "samples"}
        self.calls.append(("eval", step, final))

    def on_checkpoint(self, trainer, step, path):
        assert path.is_file()
        self.calls.append(("checkpoint", step))

    def on_train_end(self, trainer, metrics):
        self.calls.append(("end", sorted(metrics or {})))


def test_every_hook_is_called_in_order(npz, tmp_path):
    recorder = Recorder()
    train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=4, train__log_every=2, train__eval_every=2, train__checkpoint_every=4),
          callbacks=[recorder])  # fmt: skip
    assert recorder.calls == [
        ("start", 0), 1, 2, ("train", 2), ("eval", 2), ("eval", 2, False), 3, 4, ("train", 4), ("checkpoint", 4),
        ("final", 4), ("eval", 4, True), ("end", ["kl", "rec_mse"]),
    ]  # fmt: skip


def test_a_callback_stops_the_run_at_a_chosen_step_and_it_resumes_exactly(npz, tmp_path):
    overrides = tiny_image(npz, train__steps=12, train__checkpoint_every=5, train__loggers=["csv"])
    whole = train("npz", out=tmp_path / "whole", overrides=overrides)
    stopped = train("npz", out=tmp_path / "run", overrides=overrides, callbacks=[StopAtStep(7)])
    assert stopped.stopped_at == 7 and stopped.metrics == {}
    run = RunDir(stopped.run_dir)
    assert load_checkpoint(run.latest_checkpoint())["step"] == 7 and not run.final_metrics_path.exists()
    assert not run.lock_path.exists()
    finished = resume(stopped.run_dir)
    assert finished.stopped_at is None and finished.metrics == whole.metrics
    got, want = (load_checkpoint(RunDir(p).latest_checkpoint()) for p in (stopped.run_dir, whole.run_dir))
    for network in ("encoder", "decoder"):
        assert all(torch.equal(got[network][k], v) for k, v in want[network].items())
    assert (tmp_path / "run" / "csv" / "train.csv").read_text() == (tmp_path / "whole" / "csv" / "train.csv").read_text()


def test_a_stop_from_any_hook_ends_the_run_after_the_current_step(npz, tmp_path):
    class StopOnFirstEval(Callback):
        def on_eval(self, trainer, step, metrics, final):
            return STOP

    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=9, train__eval_every=3), callbacks=[StopOnFirstEval()])
    assert result.stopped_at == 3


def test_resumed_logs_drop_what_was_logged_after_the_checkpoint(npz, tmp_path):
    pytest.importorskip("tensorboard")
    overrides = tiny_image(npz, train__steps=8, train__log_every=1, train__checkpoint_every=4, train__loggers=["tensorboard", "csv"])
    train("npz", out=tmp_path / "run", overrides=overrides, callbacks=[StopAtStep(6)])
    run = RunDir(tmp_path / "run")
    run.latest_checkpoint().unlink()  # as if killed at step 6: the last checkpoint is step 4's, steps 5 and 6 are trained again
    resume(run.path)
    events = event_tags(run.path / "tensorboard")
    assert [e.step for e in events.Scalars("train/lr")] == list(range(1, 9))
    with open(run.path / "csv" / "train.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))
    assert [r["step"] for r in run.read_log() if r["kind"] == "train"] == list(range(1, 9))


def test_logger_settings_are_checked_before_a_run_directory_exists(npz, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="train.loggers must be one of jsonl, tensorboard, csv, got 'wandb'"):
        train("npz", out=tmp_path / "a", overrides=tiny_image(npz, train__loggers=["wandb"]))
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match=r"tensorboard needs the tensorboard package: pip install 'softintrovae\[tensorboard\]'"):
        train("npz", out=tmp_path / "b", overrides=tiny_image(npz, train__loggers=["tensorboard"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(TypeError, match="has none of the callback hooks"):
        CallbackList([object()])


def test_metrics_jsonl_is_always_written(npz, tmp_path):
    result = train("npz", out=tmp_path / "run", overrides=tiny_image(npz, train__steps=2, train__loggers=["csv"]))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "final"


def test_the_tracking_docs_examples_run_with_stand_ins_for_wandb_and_mlflow(tmp_path, monkeypatch):
    """docs/tracking.md's code blocks, in order, with tiny budgets (and fake tracker modules)."""
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("the W&B example trains on Debian's Fashion-MNIST")
    import softintrovae

    calls: list[tuple] = []
    stand_ins = {
        "wandb": ["init", "log", "finish", "Image"],
        "mlflow": ["start_run", "log_params", "log_metrics", "log_artifact", "end_run"],
    }
    for module_name, functions in stand_ins.items():
        module = types.ModuleType(module_name)
        for function in functions:
            setattr(module, function, lambda *a, _name=f"{module_name}.{function}", **k: calls.append((_name, a, k)))
        monkeypatch.setitem(sys.modules, module_name, module)
    budgets = {
        "fashion-mnist-small": {"model.channels": [4], "model.z_dim": 4, "data.batch_size": 8, "train.epochs": 0, "train.steps": 3,
                                "train.eval_every": 2, "train.progress": False},
        "soft-introvae-8gaussians": tiny_overrides(train__steps=6, train__eval_every=3, method__vae_warmup_steps=2, train__keep_checkpoints=1),
    }  # fmt: skip
    real_train = softintrovae.train
    monkeypatch.setattr(softintrovae, "train", lambda preset, **kwargs: real_train(preset, overrides=budgets[preset], **kwargs))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "docs" / "tracking.md").read_text(), re.S):
        exec(compile(block, "docs/tracking.md", "exec"), namespace)
    names = [name for name, _, _ in calls]
    assert names.count("wandb.init") == 1 and names.count("wandb.finish") == 1 and names.count("wandb.Image") == 4
    logged = [a[0] for name, a, _ in calls if name == "wandb.log"]
    assert {"train/loss_encoder", "train/lr", "eval/rec_mse", "final/kl"} <= set().union(*logged)
    params = next(a[0] for name, a, _ in calls if name == "mlflow.log_params")
    assert params["method.beta_neg"] == 0.9 and params["data.name"] == "8gaussians"
    assert any(name == "mlflow.log_artifact" and a[0].endswith(".pt") for name, a, _ in calls)
    assert names.count("mlflow.start_run") == names.count("mlflow.end_run") == 1
