"""Checkpoints: the file format, its checksum, loading with fallback, and the trained model.

:meth:`TrainedModel.load` is the one way in for a trained model: it takes a run directory or a
checkpoint file, reads the config and the checkpoint once each, and needs no training data, since
a checkpoint records its model's input shape, number of classes and latent layout.

A checkpoint is a ``torch.save`` of plain containers and tensors (it loads with
``weights_only=True``), written atomically with its SHA-256 in ``NAME.sha256`` beside it (written
before the rename, so a visible checkpoint always has its checksum; ``sha256sum -c`` reads it).
Loading reads the file once, checks the checksum on those bytes and unpickles them; a truncated,
altered or foreign file raises :class:`~softintrovae.errors.CorruptCheckpoint`. In a folder of
checkpoints a corrupt newest one is passed over, with a warning, for the one before it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import Config, config_from_dict, load_run_config
from .data import build_data
from .errors import CorruptCheckpoint, UserError, first_line, warn
from .export import SUFFIX as EXPORT_SUFFIX
from .export import read_export, write_export
from .files import atomic_write_bytes, atomic_write_text, sha256_hex
from .likelihood import score_images
from .models import Decoder, Encoder, LatentLayout, build_models, class_labels, eval_mode, forward

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")

# Test hook, for the crash tests only: while this variable holds a step number, the process kills
# itself with SIGKILL halfway through writing that step's checkpoint (a crash during a write).
KILL_DURING_CHECKPOINT_ENV = "SOFTINTROVAE_TEST_KILL_DURING_CHECKPOINT"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class _HashingWriter:
    """A write-only file that hashes what passes through it (torch.save needs only ``write``)."""

    def __init__(self, file, die_midway: bool = False):
        self.file, self.sha256, self.written, self.die_midway = file, hashlib.sha256(), 0, die_midway
        self.error: OSError | None = None  # torch.save hides it behind its own RuntimeError

    def write(self, data) -> int:
        if self.die_midway and self.written > 0:  # the crash-test hook: part of the file is on disk
            self.file.flush()
            os.fsync(self.file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        self.sha256.update(data)
        self.written += len(data)
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _dies_during(path: Path) -> bool:
    step = os.environ.get(KILL_DURING_CHECKPOINT_ENV)
    match = CHECKPOINT_PATTERN.search(path.name)
    return bool(step and match and int(match.group(1)) == int(step))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with its SHA-256 beside it."""
    path = Path(path)
    writer: list[_HashingWriter] = []

    def write(f) -> None:
        writer.append(_HashingWriter(f, die_midway=_dies_during(path)))
        try:
            torch.save(state, writer[0])
        except Exception:
            if writer[0].error is not None:  # e.g. a full disk: report that, not torch's follow-up error
                raise writer[0].error from None
            raise

    def write_checksum() -> None:
        atomic_write_text(checksum_path(path), f"{writer[0].sha256.hexdigest()}  {path.name}\n")

    atomic_write_bytes(path, write, before_replace=write_checksum)


def _check_checksum(path: Path, data: bytes) -> None:
    """Raise :class:`CorruptCheckpoint` when ``data`` (the bytes of ``path``) do not match its ``.sha256``.

    A checkpoint without one (written by an older version) is not checked.
    """
    recorded = checksum_path(path)
    if not recorded.is_file():
        return
    expected = recorded.read_text().split()
    if not expected or sha256_hex(data) != expected[0]:
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt: its SHA-256 does not match {recorded.name}")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

    The file is read once; its checksum is checked on those bytes before they are unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {str(path)!r} ({exc.strerror or exc})") from None
    _check_checksum(path, data)
    buffer = io.BytesIO(data)
    try:
        return torch.load(buffer, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is corrupt or not a softintrovae checkpoint: {_why_unloadable(data, exc)}") from None


def _why_unloadable(data: bytes, error: Exception) -> str:
    """What is wrong with checkpoint bytes that ``torch.load`` refused, in words: torch's own messages
    name its internals (``negative seek value``, ``[Errno 22]``, a zip library's error codes)."""
    if not data:
        return "the file is empty"
    if not data.startswith(b"PK\x03\x04"):
        return "it is not a zip archive, which torch.save writes"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged, names = archive.testzip(), archive.namelist()
    except Exception:  # zipfile raises several types for a cut-off archive
        return f"the file is truncated or damaged ({len(data):,} bytes; its zip directory is missing or unreadable)"
    if not any(name.endswith("/data.pkl") for name in names):
        return "it is a zip archive, but not one torch.save wrote (no data.pkl)"
    if damaged is not None:
        return f"the file is damaged (its entry {damaged!r} fails its CRC check)"
    if "Weights only load failed" in str(error):
        return "it holds Python objects that loading would have to run code for (refused)"
    return first_line(error)[:120]


def list_checkpoints(folder: Path) -> list[Path]:
    """``step_*.pt`` files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """:func:`load_checkpoint`, and the state must be a training checkpoint (a dict with an int ``step``)."""
    state = load_checkpoint(path)
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
        raise CorruptCheckpoint(f"checkpoint {str(path)!r} is not a softintrovae training checkpoint")
    return state


def load_latest_usable(folder: Path, where: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads and matches its checksum, and its state; None
    if there is none. A corrupt one is passed over with a warning; if every one is corrupt,
    :class:`CorruptCheckpoint` names the newest (``where``: the run directory, for the message)."""
    first_error: CorruptCheckpoint | None = None
    for path in reversed(list_checkpoints(folder)):
        try:
            state = load_training_checkpoint(path)
        except CorruptCheckpoint as exc:
            first_error = first_error or exc
            continue
        if first_error is not None:
            warn(f"{first_error}; using the previous checkpoint {path.name} (step {state['step']})")
        return path, state
    if first_error is not None:
        raise CorruptCheckpoint(f"no usable checkpoint in {str(where)!r}: {first_error}")
    return None


# ---- a run directory's config and checkpoints ----------------------------------------------------

RUN_CONFIG = "config.yaml"
CHECKPOINT_DIR = "checkpoints"


def check_run_dir(path: Path) -> Path:
    """``path`` if it is a run directory (a folder with a config.yaml), else one line saying what it is."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        holder = path.parent.parent if path.parent.name == CHECKPOINT_DIR and CHECKPOINT_PATTERN.search(path.name) else None
        hint = f"; the run directory holding it is {str(holder)!r}" if holder else ""
        raise UserError(f"{str(path)!r} is a file, not a run directory{hint}")
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if not (path / RUN_CONFIG).is_file():
        raise UserError(f"{str(path)!r} is not a run directory (no config.yaml)")
    return path


def model_record(input_shape: tuple[int, ...], num_classes: int, latents: LatentLayout) -> dict[str, Any]:
    """What a checkpoint records of its model besides the weights, so that it loads without its data."""
    return {"input_shape": list(input_shape), "num_classes": int(num_classes), "latents": latents.to_dict()}


# ---- the trained model ---------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A trained encoder/decoder pair and what is needed to use it, loaded without the training data.

    ``decoder`` is the trained decoder and ``decoder_ema`` its exponential moving average when the run
    kept one; :attr:`sampling_decoder` (the EMA copy when there is one) draws samples, reconstructions
    and metrics. Networks are in eval mode on the CPU after loading (see :meth:`to`).
    """

    config: Config
    encoder: Encoder
    decoder: Decoder
    decoder_ema: Decoder | None
    input_shape: tuple[int, ...]
    num_classes: int
    latents: LatentLayout
    step: int
    checkpoint: Path  # the file the weights came from
    run_dir: Path | None  # the run directory, when loaded from one
    state: dict[str, Any]  # the checkpoint's content (training state, timings)

    @property
    def method(self) -> str:
        return self.config.method.name

    @property
    def sampling_decoder(self) -> Decoder:
        return self.decoder_ema if self.decoder_ema is not None else self.decoder

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @classmethod
    def load(cls, path: str | Path, config: Config | None = None) -> "TrainedModel":
        """From a run directory (its newest usable checkpoint), a checkpoint file, or a ``.safetensors``
        file written by ``softintrovae export`` (see :mod:`softintrovae.export`).

        ``config`` replaces the run's (e.g. with other ``eval.*`` settings); by default it is the run
        directory's config.yaml, or the config the checkpoint or exported file holds.
        """
        path = Path(path)
        if path.suffix == EXPORT_SUFFIX:  # an exported file: its decoder is the run's sampling decoder
            data, state = read_export(path)
            return cls.from_state(config or config_from_dict(data), state, path)
        if path.is_dir():
            run_dir = check_run_dir(path)
            config = config or load_run_config(run_dir / RUN_CONFIG)
            loaded = load_latest_usable(run_dir / CHECKPOINT_DIR, run_dir)
            if loaded is None:
                raise UserError(f"run directory {str(run_dir)!r} has no checkpoint to evaluate or use yet")
            checkpoint, state = loaded
        else:
            run_dir, checkpoint = None, path
            state = load_training_checkpoint(path)
            if config is None:
                if not isinstance(state.get("config"), dict):
                    raise UserError(f"checkpoint {str(path)!r} holds no config: load its run directory instead")
                config = config_from_dict(state["config"])
        return cls.from_state(config, state, checkpoint, run_dir)

    @classmethod
    def from_state(cls, config: Config, state: dict[str, Any], checkpoint: Path, run_dir: Path | None = None) -> "TrainedModel":
        """Build the networks of ``config`` and load a checkpoint's ``state`` into them."""
        input_shape, num_classes = _model_shape(config, state, checkpoint)
        encoder, decoder = build_models(config.model, input_shape, num_classes)
        decoder_ema = None
        try:
            encoder.load_state_dict(state["encoder"])
            decoder.load_state_dict(state["decoder"])
            if "decoder_ema" in state:
                _, decoder_ema = build_models(config.model, input_shape, num_classes)
                decoder_ema.load_state_dict(state["decoder_ema"])
        except (KeyError, RuntimeError) as exc:
            reason = first_line(exc)
            raise UserError(f"checkpoint {str(checkpoint)!r} does not fit this run's config.yaml ({reason[:160]})") from None
        model = cls(config, encoder, decoder, decoder_ema, input_shape, num_classes, encoder.latents, int(state["step"]), checkpoint, run_dir, state)
        for network in model.networks():
            network.eval()
        return model

    def networks(self) -> list[torch.nn.Module]:
        return [n for n in (self.encoder, self.decoder, self.decoder_ema) if n is not None]

    def to(self, device: str | torch.device) -> "TrainedModel":
        """Move the networks to ``device``; returns self."""
        for network in self.networks():
            network.to(device)
        return self

    def record(self) -> dict[str, Any]:
        return model_record(self.input_shape, self.num_classes, self.latents)

    def export(self, out: str | Path) -> Path:
        """Write the encoder and the sampling decoder with the config to a ``.safetensors`` file (see
        :mod:`softintrovae.export`); :meth:`load` of it computes what this model computes."""
        record = {**self.record(), "step": self.step, "method": self.method, "decoder": "ema" if self.decoder_ema is not None else "trained"}
        return write_export(out, {"encoder": self.encoder, "decoder": self.sampling_decoder}, self.config.to_dict(), record)

    # ---- using it: encode, decode, sample, reconstruct (eval mode, no gradients) -----------------

    def _labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        if not self.num_classes:
            if labels is not None:
                raise UserError("this model is not class-conditional: give no labels")
            return None
        if labels is None:
            raise UserError(f"this model is class-conditional ({self.num_classes} classes): give the labels")
        return torch.as_tensor(labels, dtype=torch.long, device=self.device).expand(n)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of images or points x (B, *input_shape)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise UserError(f"the model takes inputs of shape {self.input_shape}, got {tuple(x.shape[1:])}")
        with eval_mode(self.encoder):
            return forward(self.encoder, x.to(self.device), self._labels(labels, len(x)))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """D(z) (no output activation) for latents z (B, z_dim), with the sampling decoder."""
        with eval_mode(self.sampling_decoder):
            return forward(self.sampling_decoder, z.to(self.device), self._labels(labels, len(z)))

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` decoded prior samples z ~ N(0, I); a conditional model draws classes 0..K−1 in turn
        unless ``labels`` are given."""
        if n < 1:
            raise UserError(f"the number of samples must be >= 1, got {n}")
        z = torch.randn(n, self.latents.z_dim, generator=generator)
        if labels is None and self.num_classes:
            labels = class_labels(n, self.num_classes)
        return self.decode(z, labels)

    def scores(self, images: Tensor, labels: Tensor | None = None, samples: int = 5, seed: int = 0, progress=None) -> dict[str, Tensor]:
        """Per-image likelihood scores (N,) of float images in [0, 1]: ``elbo`` (β = 1), ``elbo_beta``
        (the run's β's) and ``iw`` (importance-weighted log p(x) with ``samples`` draws), in nats; see
        :mod:`softintrovae.likelihood`."""
        method = self.config.method
        return score_images(
            self.encoder, self.sampling_decoder, images, labels=self._labels(labels, len(images)) if labels is not None else None,
            beta_rec=method.beta_rec, beta_kl=method.beta_kl, kind=method.reconstruction, samples=samples, seed=seed, progress=progress,
        )  # fmt: skip

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None, samples: int = 5, seed: int = 0) -> Tensor:
        """Importance-weighted log p(x) (N,), in nats, with ``samples`` draws: the OOD score of ``softintrovae ood``."""
        return self.scores(x, labels, samples=samples, seed=seed)["iw"]

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """D(μ(x)): the deterministic reconstruction of x."""
        mu, _ = self.encode(x, labels)
        return self.decode(mu, labels)


def export_model(model: TrainedModel | str | Path, out: str | Path) -> Path:
    """``softintrovae export``: a trained model (or a run directory / checkpoint to load) as a ``.safetensors`` file."""
    return as_trained(model).export(out)


def as_trained(model: TrainedModel | str | Path) -> TrainedModel:
    """A loaded model as it is, or a run directory / checkpoint / exported file loaded once."""
    return model if isinstance(model, TrainedModel) else TrainedModel.load(model)


def require_images(model: TrainedModel, purpose: str) -> None:
    """One line when ``model`` is not an image model: a 2D run has no pictures to draw or images to score."""
    if len(model.input_shape) != 3:
        raise UserError(f"{str(model.run_dir or model.checkpoint)!r} is a 2D run: {purpose}")


def _model_shape(config: Config, state: dict[str, Any], checkpoint: Path) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) as the checkpoint records them; a checkpoint written before
    they were recorded needs its training data to tell."""
    record = state.get("model")
    if isinstance(record, dict):
        return tuple(int(s) for s in record["input_shape"]), int(record["num_classes"])
    try:
        data = build_data(config)
    except UserError as exc:
        raise UserError(
            f"checkpoint {str(checkpoint)!r} was written before checkpoints recorded their input shape, "
            f"so loading it needs its training data, which is missing: {exc}"
        ) from None
    return tuple(data.input_shape), data.num_classes if config.model.conditional else 0
