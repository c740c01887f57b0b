"""Run configuration: dataclasses validated on construction, presets, and ``key=value`` overrides.

One defaults source (these dataclasses) drives the CLI and the Python API. Presets are YAML data
under ``softintrovae/presets``; a user config file has the same shape (both read by
:mod:`softintrovae.yamlfiles`). The names a config may use
(datasets, architectures, methods, reconstruction losses) are the keys of the registries of the
modules that implement them, so validation and implementation cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import CACHE_MODES, DATASETS
from .errors import UserError
from .limits import INT_MAX, SEED_MAX, check_int
from .loggers import LOGGERS
from .methods import METHODS
from .models import ARCHITECTURES
from .objectives import RECONSTRUCTION_KINDS
from .yamlfiles import apply_overrides, deep_merge, load_presets, parse_override, read_config_file  # noqa: F401  (re-exported)

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
INTROVAE_NEGATIVES = ("prior", "both")
INTROVAE_HINGES = ("per-sample", "batch-mean")
ON_NONFINITE = ("stop", "skip")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _check_seed(section: object, prefix: str) -> None:
    check_int(f"{prefix}.seed", section.seed, 0, SEED_MAX)


def _check_non_negative(section: object, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(section, name)
        _check(value >= 0, f"{prefix}.{name} must be >= 0, got {value}")


@dataclass
class DataConfig:
    name: str = "8gaussians"
    batch_size: int = 512
    seed: int = 0  # the data stream's own seed, independent of the model's
    root: str | None = None  # image data: the folder or file to read (None: the dataset's default place)
    image_size: int = 64  # image folders and CelebA: the side images are resized and cropped to
    pad_to: int = 0  # > 0: zero-pad images centred to pad_to x pad_to (e.g. 28x28 Fashion-MNIST to 32x32)
    # image folders and .npz: hold the decoded images in memory, or read them on demand (stream);
    # auto holds them when they fit cache_max_mb and a quarter of the free memory
    cache: str = "auto"
    cache_max_mb: int = 4096
    workers: int | None = None  # DataLoader worker processes when streaming (None: half the CPUs, at most 8)
    standardize: bool = True  # points: train on (x - mean) / std per coordinate

    def __post_init__(self) -> None:
        _check_choice("data.name", self.name, tuple(DATASETS))
        _check(self.batch_size > 0, f"data.batch_size must be > 0, got {self.batch_size}")
        _check(self.image_size > 0, f"data.image_size must be > 0, got {self.image_size}")
        _check(self.pad_to >= 0, f"data.pad_to must be >= 0, got {self.pad_to}")
        _check_seed(self, "data")
        _check_choice("data.cache", self.cache, CACHE_MODES)
        _check(self.cache_max_mb >= 0, f"data.cache_max_mb must be >= 0, got {self.cache_max_mb}")
        _check(self.workers is None or self.workers >= 0, f"data.workers must be >= 0 or null, got {self.workers}")


@dataclass
class ModelConfig:
    arch: str = "mlp"
    z_dim: int = 2
    hidden_dim: int = 256
    hidden_layers: int = 4
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # resnet: widths, one per halving; style: one per level from 4x4 up
    conditional: bool = False  # resnet: a one-hot class label into encoder and decoder (labelled data)
    mapping_layers: int = 8  # style: layers of the decoder's z -> w mapping (the encoder's w -> z has 3)
    style_mixing: float = 0.9  # style: probability that a prior sample in training mixes two latents' styles
    blur: bool = True  # style: a [1, 2, 1] low-pass filter next to every up/down-sampling, as StyleGAN
    style_variant: str = "default"  # style: "official" computes the official style trainer's function (models/style.py)
    class_z_dim: int = 256  # translation: the class latent (model.z_dim is the content latent)

    def __post_init__(self) -> None:
        _check_choice("model.arch", self.arch, tuple(ARCHITECTURES))
        _check_choice("model.style_variant", self.style_variant, ("default", "official"))
        _check(0.0 <= self.style_mixing <= 1.0, f"model.style_mixing must be in [0, 1], got {self.style_mixing}")
        for name in ("z_dim", "hidden_dim", "hidden_layers", "mapping_layers", "class_z_dim"):
            _check(getattr(self, name) > 0, f"model.{name} must be > 0, got {getattr(self, name)}")
        _check(
            len(self.channels) > 0 and all(c > 0 for c in self.channels),
            f"model.channels must be a non-empty list of positive widths, got {self.channels}",
        )


@dataclass
class MethodConfig:
    name: str = "soft-introvae"
    beta_rec: float = 1.0
    beta_kl: float = 1.0
    beta_neg: float = 1.0
    gamma_r: float = 1e-8  # weight of the negatives' reconstruction in the decoder loss (paper §5)
    margin: float = 1.0  # IntroVAE's hard margin m
    # IntroVAE's negatives: "prior", decoded prior samples D(z_p) as Appendix 9.1.1 writes it, or "both",
    # also the reconstructions D(E(x)), as Soft-IntroVAE treats them; the hinge [m − KL]₊ on each
    # sample's KL ("per-sample", the appendix's L_E(x, z)) or on the batch mean ("batch-mean")
    introvae_negatives: str = "prior"
    introvae_hinge: str = "per-sample"
    reconstruction: str = "mse"
    scale: float | None = None  # s; None means 1 / (number of input dimensions)
    detach_negative_target: bool = False  # the official image trainer does not detach it
    vae_warmup_steps: int = 2000
    vae_warmup_epochs: int = 0  # > 0: overrides vae_warmup_steps with epochs x steps per epoch (image data)
    # two-latent models (model.arch translation): beta_kl and beta_neg weigh the content latent's KL,
    # these the class latent's (null: the same as beta_kl / beta_neg)
    beta_kl_class: float | None = None
    beta_neg_class: float | None = None
    perceptual_net: str | None = None  # reconstruction perceptual: vgg16, vgg16:PATH or a feature net file

    def __post_init__(self) -> None:
        _check_choice("method.name", self.name, tuple(METHODS))
        _check_choice("method.reconstruction", self.reconstruction, RECONSTRUCTION_KINDS)
        _check_choice("method.introvae_negatives", self.introvae_negatives, INTROVAE_NEGATIVES)
        _check_choice("method.introvae_hinge", self.introvae_hinge, INTROVAE_HINGES)
        _check_non_negative(
            self, "method", ("beta_rec", "beta_kl", "beta_neg", "gamma_r", "margin", "vae_warmup_steps", "vae_warmup_epochs")
        )
        _check(self.scale is None or self.scale > 0, f"method.scale must be > 0 or null, got {self.scale}")
        for name in ("beta_kl_class", "beta_neg_class"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"method.{name} must be >= 0 or null, got {value}")


@dataclass
class OptimConfig:
    lr_encoder: float = 2e-4
    lr_decoder: float = 2e-4
    milestones: list[int] = field(default_factory=lambda: [10000, 15000])  # MultiStepLR, per step
    lr_gamma: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's (beta1, beta2)

    def __post_init__(self) -> None:
        for name in ("lr_encoder", "lr_decoder", "lr_gamma"):
            _check(getattr(self, name) > 0, f"optim.{name} must be > 0, got {getattr(self, name)}")
        _check(all(m > 0 for m in self.milestones), f"optim.milestones must be positive, got {self.milestones}")
        _check(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1), got {self.betas}",
        )


@dataclass
class TrainConfig:
    steps: int = 30000
    epochs: int = 0  # > 0: train epochs x steps per epoch instead of `steps` (image data)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads for this process (0: torch's default, one per core)
    precision: str = "fp32"
    log_every: int = 100
    eval_every: int = 5000  # 0: evaluate only at the end
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    progress: bool = True
    channels_last: bool = False  # image models: NHWC memory format (faster convolutions on many devices)
    keep_freed_memory: bool = True  # CPU: malloc keeps freed memory for the next step (softintrovae.allocator)
    ema_half_life: int = 0  # > 0: keep an EMA copy of the decoder (half-life in training images) for evaluation
    # a NaN/inf loss or gradient: stop (keeping the last good checkpoint), or skip the batch's updates and go on
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 10  # with skip: stop after this many non-finite batches in a row
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])  # also tensorboard, csv (jsonl is always written)

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"train.steps must be > 0, got {self.steps}")
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        _check(self.threads >= 0, f"train.threads must be >= 0, got {self.threads}")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips"):
            _check(getattr(self, name) > 0, f"train.{name} must be > 0, got {getattr(self, name)}")
        _check(self.eval_every >= 0, f"train.eval_every must be >= 0, got {self.eval_every}")
        _check(self.epochs >= 0, f"train.epochs must be >= 0, got {self.epochs}")
        _check(self.ema_half_life >= 0, f"train.ema_half_life must be >= 0, got {self.ema_half_life}")
        _check_seed(self, "train")
        for name in self.loggers:
            _check_choice("train.loggers", name, tuple(LOGGERS))


GROWTH_UNITS = ("epochs", "images")


@dataclass
class GrowthConfig:
    """Progressive growing (model.arch style), level by level from 4x4 up.

    Each list has one entry per level, or a single entry for every level; an empty list leaves the
    flat setting (data.batch_size, optim.lr_*, method.beta_neg) in force.
    """

    per_level: list[float] = field(default_factory=lambda: [1.0])  # how long each level trains, in `unit`s
    unit: str = "epochs"  # epochs (of the training set) or images
    blend: list[float] = field(default_factory=lambda: [0.5])  # how long each new level's blend-in lasts, in `unit`s
    batch_sizes: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # both optimizers' learning rate, set when a level starts
    beta_neg: list[float] = field(default_factory=list)
    reset_optimizers: bool = True  # Adam's moments start afresh at every new level

    def __post_init__(self) -> None:
        _check_choice("growth.unit", self.unit, GROWTH_UNITS)
        _check(all(v >= 0 for v in self.blend), f"growth.blend must hold numbers >= 0, got {self.blend}")
        for name in ("per_level", "batch_sizes", "lr"):
            values = getattr(self, name)
            _check(all(v > 0 for v in values), f"growth.{name} must hold positive numbers, got {values}")
        _check(len(self.per_level) > 0, "growth.per_level must not be empty")
        _check(all(v >= 0 for v in self.beta_neg), f"growth.beta_neg must hold numbers >= 0, got {self.beta_neg}")


# The 2D metrics' sizes, at most: a bins² histogram, a grid_size² grid through both networks, and
# sample counts held in memory at once; each far above the paper's (100, 1024, 5000, 12800).
EVAL_MAXIMA = {"num_samples": 10**8, "bins": 4096, "grid_size": 8192, "elbo_samples": 10**8}


@dataclass
class EvalConfig:
    num_samples: int = 5000  # real and generated points for the histogram metrics
    bins: int = 100
    grid_size: int = 1024  # gnELBO grid is grid_size x grid_size
    elbo_samples: int = 12800  # data points for gnELBO
    fid_samples: int = 0  # images: generated samples for FID/KID when a feature net exists (0: skip)
    seed: int = 1234

    def __post_init__(self) -> None:
        for name, high in EVAL_MAXIMA.items():
            check_int(f"eval.{name}", getattr(self, name), 1, high)
        _check(self.fid_samples == 0 or self.fid_samples >= 2, f"eval.fid_samples must be 0 or >= 2, got {self.fid_samples}")
        _check_seed(self, "eval")


@dataclass
class Config:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building a Config from plain data, with type checks that name the key.


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [a for a in options if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            _check(-INT_MAX <= value <= INT_MAX, f"config key {key!r} must be an integer in torch's int64 range (|value| < 2**63), got {value}")
            return value
    elif annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf  # an int too large for a float, too
        elif isinstance(value, str):  # YAML 1.1 reads "1e-8" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            _check(math.isfinite(number), f"config key {key!r} must be a finite number, got {value}")
            return number
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config key {key!r} must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _check_mapping(data: Any, section: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"config section {section!r} must be a mapping, got {'null' if data is None else repr(data)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    _check_mapping(data, prefix.rstrip(".") or "root")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix + str(unknown[0])!r} (known in this section: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, prefix + name)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested plain data (missing keys take defaults)."""
    return _build(Config, data, "")


def load_run_config(path: Path) -> Config:
    """The resolved config a run directory holds (``RUN/config.yaml``)."""
    return config_from_dict(read_config_file(Path(path)))


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """A Config from a preset name, a YAML file, or a dict, with optional overrides.

    ``overrides`` is a mapping of dotted keys or a list of ``key=value`` strings (as ``--set``).
    """
    if isinstance(source, dict):
        data = source
    elif str(source).endswith((".yaml", ".yml")) or Path(source).is_file():
        data = read_config_file(Path(source))
        data.setdefault("name", Path(source).stem)
    elif Path(source).is_dir():
        resume = f"; continue it with: softintrovae train --resume {source}" if (Path(source) / "config.yaml").is_file() else ""
        raise UserError(f"{str(source)!r} is a folder, not a preset or a config .yaml file{resume}")
    else:
        presets = load_presets()
        if str(source) not in presets:
            raise UserError(f"unknown preset {str(source)!r} (run 'softintrovae presets' to list them)")
        data = presets[str(source)]
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    hints = typing.get_type_hints(Config)
    for name, value in data.items():  # the file's sections first, so that an override into one is not blamed for it
        if name in hints and dataclasses.is_dataclass(hints[name]):
            _check_mapping(value, name)
    config = config_from_dict(apply_overrides(data, overrides or {}))
    check_steps_override(config, overrides or {})
    return config


def check_steps_override(config: Config, overrides: dict[str, Any]) -> None:
    """``train.steps`` set while ``train.epochs`` > 0 would be ignored silently: refuse it instead."""
    if "train.steps" in overrides and "train.epochs" not in overrides and config.train.epochs > 0:
        raise UserError(
            f"train.steps is ignored while train.epochs is {config.train.epochs}: "
            "set train.epochs instead, or train.epochs=0 to count train.steps"
        )
