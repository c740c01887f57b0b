"""The bad-input corpus: malformed command lines, config files, presets, data files and run
directories. Every one must exit with status 2 and one line, ``softintrovae: error: ...``, that
names the problem (the ``expect`` text) — never a traceback — and leave existing runs as they were.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from softintrovae.cli import main
from softintrovae.rundir import RunDir

from .conftest import TINY
from .test_images_data import write_mnist_files

SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
IMAGE_SETS = ["--set", "data.batch_size=4", "--set", "model.channels=[4]", "--set", "model.z_dim=2", "--set", "train.epochs=0",
              "--set", "train.steps=2", "--set", "train.progress=false", "--set", "train.eval_every=0"]  # fmt: skip


class Place:
    """A scratch folder with builders for bad files; ``run`` and ``image_run`` are copies of finished runs."""

    def __init__(self, root: Path, runs: dict[str, Path]):
        self.root, self._runs = root, runs

    def file(self, name: str, content: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def npz(self, name: str = "images.npz", **arrays) -> str:
        path = self.root / name
        np.savez(path, **arrays)
        return str(path)

    def copy(self, kind: str) -> Path:
        target = self.root / kind
        if not target.exists():
            shutil.copytree(self._runs[kind], target)
        return target

    @property
    def run(self) -> Path:
        return self.copy("run")

    @property
    def image_run(self) -> Path:
        return self.copy("image_run")

    def checkpoint(self, run: Path) -> Path:
        return RunDir(run).latest_checkpoint()


def images(n=8, side=8, channels=3):
    return np.random.default_rng(0).integers(0, 256, (n, side, side, channels), dtype=np.uint8)


def idx_folder(p: Place, damage: Callable[[bytes], bytes]) -> str:
    folder = p.root / "idx"
    folder.mkdir()
    write_mnist_files(folder, "train", 8)
    images_file = folder / "train-images-idx3-ubyte.gz"
    images_file.write_bytes(gzip.compress(damage(gzip.decompress(images_file.read_bytes()))))
    return str(folder)


def truncate(raw: bytes) -> bytes:
    return raw[:-100]


def wrong_magic(raw: bytes) -> bytes:
    return b"\x08\x03" + raw[2:]


def edit_config(run: Path, **changes) -> Path:
    text = (run / "config.yaml").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    (run / "config.yaml").write_text(text)
    return run


class Malicious:
    """Unpickling this would run code: touch a marker file."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoint(p: Place) -> str:
    run = p.run
    Malicious.marker = p.root / "payload-ran"
    torch.save({"step": 2, "payload": Malicious()}, p.checkpoint(run))
    os.remove(str(p.checkpoint(run)) + ".sha256")  # so that the loader, not the checksum, must refuse it
    return str(run)


def train(p, config, *args):
    """``train CONFIG`` with the tiny settings, then ``args`` (later ``--set``s win)."""
    return ["train", config, "--out", str(p.root / "new"), *SETS, *args]


# id -> (argv builder, what the line must name)
CORPUS: dict[str, tuple[Callable[[Place], list[str]], str]] = {
    # --- the command line ---
    "no command": (lambda p: [], "required: command"),
    "unknown command": (lambda p: ["fly"], "invalid choice: 'fly'"),
    "unknown flag": (lambda p: ["train", "vae-8gaussians", "--bogus"], "unrecognized arguments: --bogus"),
    "train without config": (lambda p: ["train"], "needs a preset name"),
    "config and --resume": (lambda p: ["train", "vae-8gaussians", "--resume", str(p.run)], "not both"),
    "--out with --resume": (lambda p: ["train", "--resume", str(p.run), "--out", "x"], "--out cannot be combined"),
    "override without =": (lambda p: train(p, "vae-8gaussians", "--set", "train.steps"), "must look like section.key=value"),
    "override of a non-section": (lambda p: train(p, "vae-8gaussians", "--set", "train.steps.x=1"), "'steps' is not a config section"),
    "override value not YAML": (lambda p: train(p, "vae-8gaussians", "--set", "model.channels=[1,"), "not valid YAML"),
    "unknown on_nonfinite": (lambda p: train(p, "vae-8gaussians", "--set", "train.on_nonfinite=ignore"), "train.on_nonfinite must be one of stop, skip"),
    "zero skip limit": (lambda p: train(p, "vae-8gaussians", "--set", "train.max_consecutive_skips=0"), "train.max_consecutive_skips must be > 0"),
    "sweep with 0 workers": (lambda p: ["sweep", "vae-8gaussians", "--workers", "0", "--out", str(p.root / "s")], "argument --workers: must be an integer >= 1, got 0"),
    "sweep grid syntax": (lambda p: ["sweep", "vae-8gaussians", "--grid", "method.beta_kl:1", "--out", str(p.root / "s")], "must look like"),
    "bad --metrics name": (lambda p: ["evaluate", str(p.run), "--metrics", "fid_forever"], "fid_forever"),
    "reproduce flag for another experiment": (lambda p: ["reproduce", "stability", "--datasets", "rings"], "--datasets applies to 'reproduce table2'"),
    "reproduce margins not numbers": (lambda p: ["reproduce", "stability", "--margins", "1,x", "--out", str(p.root / "r")], "comma-separated list of numbers"),
    # --- config files ---
    "malformed YAML": (lambda p: train(p, p.file("c.yaml", "method: {name: vae\n")), "not valid YAML (line"),
    "YAML list": (lambda p: train(p, p.file("c.yaml", "- 1\n- 2\n")), "must hold a mapping of sections, got list"),
    "empty config file": (lambda p: train(p, p.file("c.yaml", "")), "must hold a mapping of sections, got NoneType"),
    "not UTF-8": (lambda p: train(p, p.file("c.yaml", b"\xff\xfe\x00binary")), "not a UTF-8 text file"),
    "config is a folder": (lambda p: (p.root / "d.yaml").mkdir() or train(p, str(p.root / "d.yaml")), "cannot read config file"),
    "missing config file": (lambda p: train(p, str(p.root / "absent.yaml")), "No such file or directory"),
    "unknown section": (lambda p: train(p, p.file("c.yaml", "optimizer: {lr: 1}\n")), "unknown config key 'optimizer'"),
    "unknown key": (lambda p: train(p, p.file("c.yaml", "method: {betakl: 1}\n")), "unknown config key 'method.betakl'"),
    "section not a mapping": (lambda p: train(p, p.file("c.yaml", "optim: 5\n")), "config section 'optim' must be a mapping"),
    "ill-typed value": (lambda p: train(p, p.file("c.yaml", "train: {steps: many}\n")), "'train.steps' must be int, got 'many'"),
    "bool for a count": (lambda p: train(p, p.file("c.yaml", "train: {steps: true}\n")), "'train.steps' must be int"),
    "list for a number": (lambda p: train(p, p.file("c.yaml", "method: {beta_kl: [1]}\n")), "'method.beta_kl' must be float"),
    "negative weight": (lambda p: train(p, p.file("c.yaml", "method: {beta_rec: -0.5}\n")), "method.beta_rec must be >= 0"),
    "zero learning rate": (lambda p: train(p, p.file("c.yaml", "optim: {lr_encoder: 0}\n")), "optim.lr_encoder must be > 0"),
    "unknown method": (lambda p: train(p, p.file("c.yaml", "method: {name: gan}\n")), "method.name must be one of"),
    "unknown dataset": (lambda p: train(p, p.file("c.yaml", "data: {name: moons}\n")), "data.name must be one of"),
    "YAML python tag": (lambda p: train(p, p.file("c.yaml", f"name: !!python/object/apply:pathlib.Path.touch ['{p.root}/tag-ran']\n")), "not valid YAML"),
    # --- presets ---
    "unknown preset": (lambda p: train(p, "soft-introvae-moons"), "unknown preset 'soft-introvae-moons'"),
    "npz preset without data.root": (lambda p: train(p, "npz"), "needs data.root"),
    "cifar10 preset without data.root": (lambda p: train(p, "cifar10"), "needs data.root"),
    "mnist preset, data not installed": (lambda p: train(p, "mnist"), "set data.root"),
    "epochs on 2D data": (lambda p: train(p, "vae-8gaussians", "--set", "train.epochs=2"), "has no epochs"),
    "steps on an epochs preset": (lambda p: train(p, "fashion-mnist-small", "--set", "train.steps=5"), "train.steps is ignored"),
    "fp16 on the CPU": (lambda p: train(p, "vae-8gaussians", "--set", "train.precision=fp16-mixed", "--set", "train.device=cpu"), "fp16-mixed needs a CUDA device"),
    "CUDA device missing": (lambda p: train(p, "vae-8gaussians", "--set", "train.device=cuda"), "CUDA is not available"),
    "conditional 2D model": (lambda p: train(p, "vae-8gaussians", "--set", "model.conditional=true"), "model.conditional is true, but the data have no class labels"),
    # --- data files ---
    "truncated IDX": (lambda p: train(p, "mnist", "--set", f"data.root={idx_folder(p, truncate)}"), "its header (8, 28, 28) says"),
    "IDX wrong magic": (lambda p: train(p, "mnist", "--set", f"data.root={idx_folder(p, wrong_magic)}"), "wrong magic number"),
    "IDX missing": (lambda p: train(p, "mnist", "--set", f"data.root={p.root}"), "train-images-idx3-ubyte.gz"),
    "empty image folder": (lambda p: (p.root / "empty").mkdir() or train(p, "image-folder", "--set", f"data.root={p.root / 'empty'}"), "holds no .png/.jpg/.jpeg files"),
    "unreadable image": (lambda p: train(p, "image-folder", "--set", f"data.root={Path(p.file('pics/a.png', b'not a png')).parent}"), "cannot read image"),
    "npz with wrong keys": (lambda p: train(p, "npz", "--set", f"data.root={p.npz(pictures=images())}"), "has no array named images or x"),
    "npz not a zip": (lambda p: train(p, "npz", "--set", f"data.root={p.file('i.npz', b'plain bytes')}"), "is not an .npz (zip) archive"),
    "npz holding objects": (lambda p: train(p, "npz", "--set", f"data.root={p.npz(images=np.array([{}, {}], dtype=object))}"), "not a readable .npz archive"),
    "npz float images out of range": (lambda p: train(p, "npz", "--set", f"data.root={p.npz(images=images().astype(np.float32))}"), "must lie in [0, 1]"),
    "npz labels of another length": (lambda p: train(p, "npz", "--set", f"data.root={p.npz(images=images(), labels=np.arange(3))}"), "must be 8 non-negative integers"),
    "npz image size unsupported": (lambda p: train(p, "npz", *IMAGE_SETS, "--set", f"data.root={p.npz(images=images(side=12))}"), "image size 12 is not supported"),
    "npz batch larger than the data": (lambda p: train(p, "npz", *IMAGE_SETS, "--set", "data.batch_size=16", "--set", f"data.root={p.npz(images=images())}"), "larger than the dataset (8 images)"),
    "conditional without labels": (lambda p: train(p, "npz", *IMAGE_SETS, "--set", "model.conditional=true", "--set", f"data.root={p.npz(images=images())}"), "the data have no class labels"),
    "OOD set of another image size": (lambda p: ["ood", str(p.image_run), "--out", f"npz={p.npz('big.npz', images=images(side=16))}", "--limit", "4"], "has 3x16x16 images, but the model takes 3x8x8"),
    # --- run directories ---
    "missing run directory": (lambda p: ["evaluate", str(p.root / "nowhere")], "does not exist"),
    "not a run directory": (lambda p: ["evaluate", str(p.root)], "is not a run directory (no config.yaml)"),
    "resume of a missing run": (lambda p: ["train", "--resume", str(p.root / "nowhere")], "does not exist"),
    "run config not YAML": (lambda p: ["train", "--resume", str(edit_config(p.run, **{"method:": "method: {"}))], "config.yaml' is not valid YAML"),
    "run config with an unknown key": (lambda p: ["evaluate", str(edit_config(p.run, **{"beta_kl:": "betakl:"}))], "unknown config key 'method.betakl'"),
    "run without checkpoints": (lambda p: shutil.rmtree(p.run / "checkpoints") or ["evaluate", str(p.run)], "has no checkpoint to evaluate"),
    "every checkpoint corrupt": (lambda p: p.checkpoint(p.run).write_bytes(b"\x00garbage") and ["evaluate", str(p.run)], "no usable checkpoint"),
    "checkpoint of another architecture": (lambda p: ["train", "--resume", str(edit_config(p.run, **{"hidden_dim: 16": "hidden_dim: 32"}))], "does not fit this run's config.yaml"),
    "foreign .pt file": (lambda p: torch.save(torch.zeros(3), p.checkpoint(p.run)) or os.remove(str(p.checkpoint(p.run)) + ".sha256") or ["evaluate", str(p.run)], "not a softintrovae training checkpoint"),
    "checkpoint that would run code": (lambda p: ["evaluate", malicious_checkpoint(p)], "corrupt or not a softintrovae checkpoint"),
    "resume changing the method": (lambda p: ["train", "--resume", str(p.run), "--set", "method.beta_kl=0.5"], "cannot change 'method.beta_kl'"),
    "train into an existing run": (lambda p: ["train", "vae-8gaussians", "--out", str(p.run)], "already holds a run"),
    "run locked by a live process": (
        lambda p: (p.run / "lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()})) and ["train", "--resume", str(p.run)],
        f"is in use by process {os.getpid()}",
    ),
    "unreadable lock file": (lambda p: (p.run / "lock").write_text("garbage") and ["evaluate", str(p.run)], "not a lock file"),
    "pictures of a 2D run": (lambda p: ["sample", str(p.run)], "is a 2D run"),
    "no pictures": (lambda p: ["sample", str(p.image_run), "-n", "0"], "argument -n: must be an integer between 1 and 1024, got 0"),
    "sweep into another sweep": (lambda p: p.file("s/sweep.yaml", "source: other\n") and ["sweep", "vae-8gaussians", "--out", str(p.root / "s")], "holds a different sweep"),
}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "vae-8gaussians", "--out", str(root / "run"), "--set", "train.steps=2", *SETS]) == 0
    npz = root / "images.npz"
    np.savez(npz, images=images())
    assert main(["train", "npz", "--out", str(root / "image_run"), "--set", f"data.root={npz}", *IMAGE_SETS]) == 0
    return {"run": root / "run", "image_run": root / "image_run"}


def test_the_corpus_is_large():
    assert len(CORPUS) >= 30


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, finished_runs, capsys):
    build, expect = CORPUS[case]
    place = Place(tmp_path, finished_runs)
    argv = build(place)
    touched = {kind: snapshot(tmp_path / kind) for kind in ("run", "image_run") if (tmp_path / kind).exists()}
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("softintrovae: error: "), err
    assert expect in lines[0], lines[0]
    for kind, before in touched.items():  # a refused command leaves the run as it found it
        assert snapshot(tmp_path / kind) == before, kind
    assert not list(tmp_path.glob("*-ran"))  # no payload of a pickle or a YAML tag was executed
