"""The bad-input corpus: malformed command lines, config files, presets, data files and run
directories, output locations that cannot be written, numbers outside what the code can use,
inconsistent resumes, and inputs whose message must name the real problem. Every one must exit with
status 2 and one line, ``softintrovae: error: ...``, that names the problem (the ``expect`` text) —
never a traceback — leave existing runs byte for byte as they were, and create nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from softintrovae.cli import main
from softintrovae.rundir import RunDir

from .conftest import TINY
from .conftest import write_mnist_files

SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
IMAGE_SETS = ["--set", "data.batch_size=4", "--set", "model.channels=[4]", "--set", "model.z_dim=2", "--set", "train.epochs=0",
              "--set", "train.steps=2", "--set", "train.progress=false", "--set", "train.eval_every=0"]  # fmt: skip


class Place:
    """A scratch folder with builders for bad files; ``run`` and ``image_run`` are copies of finished runs."""

    def __init__(self, root: Path, runs: dict[str, Path]):
        self.root, self._runs = root, runs
        self.cwd: Path | None = None  # the working folder the command runs in, when a case sets one
        self.cleanups: list[Callable[[], None]] = []

    def read_only(self, name: str) -> Path:
        """A folder this process cannot write, root included: a read-only bind mount for root, else no write permission."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            self.cleanups.append(lambda: folder.chmod(0o755))
            return folder
        for command in (["mount", "--bind", folder, folder], ["mount", "-o", "remount,bind,ro", folder]):
            if subprocess.run(command, capture_output=True).returncode != 0:
                subprocess.run(["umount", folder], capture_output=True)
                pytest.skip("root cannot make a read-only folder here (mount is not permitted)")
        self.cleanups.append(lambda: subprocess.run(["umount", folder], check=True))
        return folder

    def read_only_copy(self, kind: str) -> Path:
        """The copy of a finished run (``run``, ``image_run``), made read-only."""
        self.copy(kind)
        return self.read_only(kind)

    def chdir(self, folder: Path) -> Path:
        self.cwd = folder
        return folder

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


def train_to(p, out: Path) -> list[str]:
    return ["train", "vae-8gaussians", "--out", str(out), *SETS]


def damaged_checkpoint(p: Place, damage: Callable[[bytes], bytes]) -> Path:
    """A copy of the finished 2D run whose only checkpoint is damaged and has no checksum to catch it."""
    run = p.run
    checkpoint = p.checkpoint(run)
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    os.remove(str(checkpoint) + ".sha256")
    return run


def foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


Case = tuple[Callable[["Place"], list[str]], str]  # (argv builder, what the line must name)

COMMAND_LINES: dict[str, Case] = {
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
}

CONFIG_FILES: dict[str, Case] = {
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
}

PRESETS: dict[str, Case] = {
    "unknown preset": (lambda p: train(p, "soft-introvae-moons"), "unknown preset 'soft-introvae-moons'"),
    "npz preset without data.root": (lambda p: train(p, "npz"), "needs data.root"),
    "cifar10 preset without data.root": (lambda p: train(p, "cifar10"), "needs data.root"),
    "mnist preset, data not installed": (lambda p: train(p, "mnist"), "set data.root"),
    "epochs on 2D data": (lambda p: train(p, "vae-8gaussians", "--set", "train.epochs=2"), "has no epochs"),
    "steps on an epochs preset": (lambda p: train(p, "fashion-mnist-small", "--set", "train.steps=5"), "train.steps is ignored"),
    "fp16 on the CPU": (lambda p: train(p, "vae-8gaussians", "--set", "train.precision=fp16-mixed", "--set", "train.device=cpu"), "fp16-mixed needs a CUDA device"),
    "CUDA device missing": (lambda p: train(p, "vae-8gaussians", "--set", "train.device=cuda"), "CUDA is not available"),
    "conditional 2D model": (lambda p: train(p, "vae-8gaussians", "--set", "model.conditional=true"), "model.conditional is true, but the data have no class labels"),
}

DATA_FILES: dict[str, Case] = {
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
}

RUN_DIRECTORIES: dict[str, Case] = {
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
    "no pictures": (lambda p: ["sample", str(p.image_run), "-n", "0"], "argument -n/--n: must be an integer >= 1, got 0"),
    "sweep into another sweep": (lambda p: p.file("s/sweep.yaml", "source: other\n") and ["sweep", "vae-8gaussians", "--out", str(p.root / "s")], "holds a different sweep"),
}

NOT_WRITABLE = "is not writable"

OUTPUT_LOCATIONS: dict[str, Case] = {
    "train into a read-only folder": (lambda p: train_to(p, p.read_only("ro") / "new"), NOT_WRITABLE),
    "train by default into a read-only working folder": (lambda p: p.chdir(p.read_only("ro")) and ["train", "vae-8gaussians", *SETS], NOT_WRITABLE),
    "train under a file": (lambda p: train_to(p, Path(p.file("f", "x")) / "new"), "is a file, not a folder"),
    "train into a file": (lambda p: train_to(p, Path(p.file("f", "x"))), "is a file, not a folder"),
    "demo under a file": (lambda p: ["demo", "--out", str(Path(p.file("f", "x")) / "new")], "is a file, not a folder"),
    "resume a read-only run": (lambda p: ["train", "--resume", str(p.read_only_copy("run"))], NOT_WRITABLE),
    "evaluate a read-only run": (lambda p: ["evaluate", str(p.read_only_copy("run"))], NOT_WRITABLE),
    "sample into a folder": (lambda p: ["sample", str(p.image_run), "--out", str(p.root)], "is a folder; give a file name"),
    "sample under a file": (lambda p: ["sample", str(p.image_run), "--out", str(Path(p.file("f", "x")) / "s.png")], "is a file, not a folder"),
    "sample of a read-only run": (lambda p: ["sample", str(p.read_only_copy("image_run"))], NOT_WRITABLE),
    "reconstruct into a read-only folder": (lambda p: ["reconstruct", str(p.image_run), "--out", str(p.read_only("ro") / "r.png")], NOT_WRITABLE),
    "interpolate into a read-only folder": (lambda p: ["interpolate", str(p.image_run), "--out", str(p.read_only("ro") / "i.png")], NOT_WRITABLE),
    "OOD report into a file": (lambda p: ["ood", str(p.image_run), "--out", f"npz={p.npz(images=images())}", "--report", p.file("f", "x")], "is a file, not a folder"),
    "OOD report into a read-only folder": (lambda p: ["ood", str(p.image_run), "--out", f"npz={p.npz(images=images())}", "--report", str(p.read_only("ro") / "r")], NOT_WRITABLE),
    "sweep into a read-only folder": (lambda p: ["sweep", "vae-8gaussians", *SETS, "--out", str(p.read_only("ro") / "s")], NOT_WRITABLE),
    "sweep into a file": (lambda p: ["sweep", "vae-8gaussians", *SETS, "--out", p.file("f", "x")], "is a file, not a folder"),
    "reproduce into a read-only folder": (lambda p: ["reproduce", "collapse", "--out", str(p.read_only("ro") / "r")], NOT_WRITABLE),
    "reproduce into a file": (lambda p: ["reproduce", "ood", "--runs", str(p.image_run), str(p.image_run), "--out", p.file("f", "x")], "is a file, not a folder"),
    "feature net into a read-only folder": (lambda p: ["feature-net", "train", "--dataset", "npz", "--out", str(p.read_only("ro") / "n.pt")], NOT_WRITABLE),
}

NUMBERS: dict[str, Case] = {
    "negative data seed": (lambda p: train(p, "vae-8gaussians", "--set", "data.seed=-1"), "data.seed must be an integer >= 0, got -1"),
    "negative eval seed": (lambda p: train(p, "vae-8gaussians", "--set", "eval.seed=-3"), "eval.seed must be an integer >= 0, got -3"),
    "seed beyond int64": (lambda p: train(p, "vae-8gaussians", "--set", f"train.seed={2**64}"), "'train.seed' must be an integer in torch's int64 range"),
    "batch size beyond int64": (lambda p: train(p, "vae-8gaussians", "--set", f"data.batch_size={10**20}"), "'data.batch_size' must be an integer in torch's int64 range"),
    "steps as a huge float": (lambda p: train(p, "vae-8gaussians", "--set", "train.steps=1e30"), "'train.steps' must be an integer in torch's int64 range"),
    "infinite beta": (lambda p: train(p, "vae-8gaussians", "--set", "method.beta_kl=.inf"), "'method.beta_kl' must be a finite number, got inf"),
    "NaN beta": (lambda p: train(p, "vae-8gaussians", "--set", "method.beta_neg=.nan"), "'method.beta_neg' must be a finite number, got nan"),
    "learning rate overflowing to inf": (lambda p: train(p, "vae-8gaussians", "--set", "optim.lr_encoder=1e400"), "'optim.lr_encoder' must be a finite number"),
    "integer too large for a float": (lambda p: train(p, "vae-8gaussians", "--set", f"method.margin={10**400}"), "'method.margin' must be a finite number"),
    "infinite growth learning rate": (lambda p: train(p, "vae-8gaussians", "--set", "growth.lr=[.inf]"), "'growth.lr[0]' must be a finite number"),
    "NaN Adam beta in a file": (lambda p: train(p, p.file("c.yaml", "optim: {betas: [0.9, .nan]}\n")), "'optim.betas[1]' must be a finite number"),
    "histogram too fine": (lambda p: train(p, "vae-8gaussians", "--set", "eval.bins=5000"), "eval.bins must be an integer between 1 and 4096"),
    "gnELBO grid too large": (lambda p: train(p, "vae-8gaussians", "--set", "eval.grid_size=100000"), "eval.grid_size must be an integer between 1 and 8192"),
    "negative picture seed": (lambda p: ["sample", str(p.image_run), "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    "picture seed beyond int64": (lambda p: ["sample", str(p.image_run), "--seed", str(2**64)], "argument --seed: must be an integer >= 0"),
    "too many pictures": (lambda p: ["sample", str(p.image_run), "-n", "5000"], "a grid holds at most 1024 images, got -n 5000"),
    "interpolation grid too large": (lambda p: ["interpolate", str(p.image_run), "--size", "1000"], "argument --size: must be an integer between 2 and 64"),
    "no importance samples": (lambda p: ["ood", str(p.image_run), "--out", "digits", "--samples", "0"], "argument --samples: must be an integer >= 1, got 0"),
    "no translation rows": (lambda p: ["translate", str(p.image_run), "--rows", "0"], "argument --rows: must be an integer between 1 and 64"),
    "sweep with no seeds": (lambda p: ["sweep", "vae-8gaussians", "--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
    "reproduce with no iterations": (lambda p: ["reproduce", "collapse", "--iterations", "0"], "argument --iterations: must be an integer >= 1, got 0"),
    "feature net with no epochs": (lambda p: ["feature-net", "train", "--dataset", "npz", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
}

RESUMES: dict[str, Case] = {
    "resume below the run's step": (lambda p: ["train", "--resume", str(p.run), "--set", "train.steps=1"], "train.steps=1 would end the run at step 1, but it is at step 2"),
    "resume of an image run below its step": (
        lambda p: ["train", "--resume", str(p.image_run), "--set", "train.steps=1"], "train.steps=1 would end the run at step 1, but it is at step 2"
    ),
    "resume with another seed": (lambda p: ["train", "--resume", str(p.run), "--set", "train.seed=7"], "cannot change train.seed when resuming"),
    "resume with a negative step count": (lambda p: ["train", "--resume", str(p.run), "--set", "train.steps=-5"], "train.steps must be > 0, got -5"),
}

MESSAGES: dict[str, Case] = {
    "key twice in a config file": (lambda p: train(p, p.file("c.yaml", "train:\n  steps: 3\n  steps: 4\n")), "the key 'steps' appears twice (lines 2 and 3)"),
    "key twice in a flow mapping": (lambda p: train(p, p.file("c.yaml", "method: {beta_kl: 1, beta_kl: 2}\n")), "the key 'beta_kl' appears twice"),
    "key twice in an override": (lambda p: train(p, "vae-8gaussians", "--set", "model.channels={a: 1, a: 2}"), "the key 'a' appears twice"),
    "key twice in a run's config.yaml": (lambda p: ["evaluate", str(edit_config(p.run, **{"  beta_kl:": "  beta_neg: 1.0\n  beta_kl:"}))], "the key 'beta_neg' appears twice"),
    "null section with an override into it": (lambda p: train(p, p.file("c.yaml", "train: null\n")), "config section 'train' must be a mapping, got null"),
    "number as a section with an override into it": (lambda p: train(p, p.file("c.yaml", "train: 5\n")), "config section 'train' must be a mapping, got 5"),
    "empty checkpoint without checksum": (lambda p: ["evaluate", str(damaged_checkpoint(p, lambda raw: b""))], "the file is empty"),
    "truncated checkpoint without checksum": (lambda p: ["evaluate", str(damaged_checkpoint(p, lambda raw: raw[: len(raw) // 2]))], "the file is truncated or damaged"),
    "checkpoint cut by one byte without checksum": (lambda p: ["evaluate", str(damaged_checkpoint(p, lambda raw: raw[:-1]))], "the file is truncated or damaged"),
    "text file as a checkpoint": (lambda p: ["train", "--resume", str(damaged_checkpoint(p, lambda raw: b"hello\n"))], "it is not a zip archive"),
    "foreign zip as a checkpoint": (lambda p: ["evaluate", str(damaged_checkpoint(p, lambda raw: foreign_zip()))], "not one torch.save wrote"),
    "checkpoint file as the run to evaluate": (lambda p: ["evaluate", str(p.checkpoint(p.run))], "is a file, not a run directory; the run directory holding it is"),
    "checkpoint file as the run to resume": (lambda p: ["train", "--resume", str(p.checkpoint(p.run))], "is a file, not a run directory"),
    "run directory as a config": (lambda p: train(p, str(p.run)), "is a folder, not a preset or a config .yaml file; continue it with: softintrovae train --resume"),
    "FID of a 2D run": (lambda p: ["evaluate", str(p.run), "--metrics", "fid10k_train_fmnistnet"], "FID/KID measure images; this is a 2D run"),
    "OOD detection of a 2D run": (lambda p: ["ood", str(p.run), "--out", "digits"], "is a 2D run: OOD detection scores images, so it needs an image run"),
    "OOD reproduction with 2D runs": (lambda p: ["reproduce", "ood", "--runs", str(p.run), str(p.run), "--out", str(p.root / "o")], "OOD detection scores images"),
}

CLASSES: dict[str, dict[str, Case]] = {
    "command lines": COMMAND_LINES,
    "config files": CONFIG_FILES,
    "presets": PRESETS,
    "data files": DATA_FILES,
    "run directories": RUN_DIRECTORIES,
    "output locations that cannot be written": OUTPUT_LOCATIONS,
    "numbers outside what the code can use": NUMBERS,
    "inconsistent resumes": RESUMES,
    "messages that must name the real problem": MESSAGES,
}
CORPUS: dict[str, Case] = {case: build for cases in CLASSES.values() for case, build in cases.items()}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "vae-8gaussians", "--out", str(root / "run"), "--set", "train.steps=2", *SETS]) == 0
    npz = root / "images.npz"
    np.savez(npz, images=images())
    assert main(["train", "npz", "--out", str(root / "image_run"), "--set", f"data.root={npz}", *IMAGE_SETS]) == 0
    return {"run": root / "run", "image_run": root / "image_run"}


def test_the_corpus_is_large_and_the_docs_count_it():
    assert len(CORPUS) == sum(map(len, CLASSES.values())) >= 130  # no id is used twice
    docs = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    assert f"**{len(CORPUS)} malformed inputs**" in docs
    for name, cases in CLASSES.items():
        assert f"| {name} | {len(cases)} |" in docs, name


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, finished_runs, capsys, monkeypatch):
    build, expect = CORPUS[case]
    place = Place(tmp_path, finished_runs)
    try:
        argv = build(place)
        touched = {kind: snapshot(tmp_path / kind) for kind in ("run", "image_run") if (tmp_path / kind).exists()}
        listing = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        if place.cwd is not None:
            monkeypatch.chdir(place.cwd)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        listed_after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    finally:
        monkeypatch.undo()  # back to the working folder first: a mounted one cannot be unmounted while in use
        for cleanup in reversed(place.cleanups):
            cleanup()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("softintrovae: error: "), err
    assert expect in lines[0], lines[0]
    assert listed_after == listing  # nothing created or removed
    for kind, before in touched.items():  # a refused command leaves the run as it found it
        assert snapshot(tmp_path / kind) == before, kind
    assert not list(tmp_path.glob("*-ran"))  # no payload of a pickle or a YAML tag was executed
