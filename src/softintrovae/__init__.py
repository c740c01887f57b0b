"""softintrovae: introspective VAEs (Soft-IntroVAE, IntroVAE, VAE) in PyTorch.

Three imports do what the CLI does::

    from softintrovae import load_config, train, evaluate
    result = train(load_config("soft-introvae-8gaussians", {"train.steps": 5000}), out="runs/sivae")
    print(result.metrics)

and a trained model is three lines away::

    import softintrovae
    model = softintrovae.load("runs/sivae")   # a run directory, a checkpoint or an exported .safetensors
    images = model.sample(16)

The names below are imported from their modules on first use, so that ``import softintrovae``
(and the command line's ``--help``, ``--version`` and ``presets``) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {  # name -> the module that defines it
    "Config": "config",
    "load_config": "config",
    "load_presets": "config",
    "TrainingDiverged": "errors",
    "UserError": "errors",
    "METHODS": "methods",
    "IntroVAE": "methods",
    "Method": "methods",
    "SoftIntroVAE": "methods",
    "VAE": "methods",
    "STOP": "callbacks",
    "Callback": "callbacks",
    "StopAtStep": "callbacks",
    "TrainedModel": "checkpoint",
    "export_model": "checkpoint",
    "RunResult": "trainer",
    "Trainer": "trainer",
    "evaluate": "trainer",
    "resume": "trainer",
    "train": "trainer",
}

if TYPE_CHECKING:
    from .callbacks import STOP, Callback, StopAtStep
    from .checkpoint import TrainedModel, export_model
    from .config import Config, load_config, load_presets
    from .errors import TrainingDiverged, UserError
    from .methods import METHODS, IntroVAE, Method, SoftIntroVAE, VAE
    from .trainer import RunResult, Trainer, evaluate, resume, train


def load(path: str | Path, config: Config | None = None) -> TrainedModel:
    """The trained model at ``path`` (a run directory, a checkpoint or an exported ``.safetensors``
    file), loaded without its training data: :meth:`softintrovae.checkpoint.TrainedModel.load`."""
    from .checkpoint import TrainedModel

    return TrainedModel.load(path, config)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*_EXPORTS, "__version__", "load"})


__all__ = sorted([*_EXPORTS, "load"])
