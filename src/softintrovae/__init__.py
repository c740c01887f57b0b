"""softintrovae: introspective VAEs (Soft-IntroVAE, IntroVAE, VAE) in PyTorch.

Three imports do what the CLI does::

    from softintrovae import load_config, train, evaluate
    result = train(load_config("soft-introvae-8gaussians", {"train.steps": 5000}), out="runs/sivae")
    print(result.metrics)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .callbacks import STOP, Callback, StopAtStep  # noqa: E402
from .config import Config, load_config, load_presets  # noqa: E402
from .errors import TrainingDiverged, UserError  # noqa: E402
from .methods import METHODS, IntroVAE, Method, SoftIntroVAE, VAE  # noqa: E402
from .trainer import RunResult, Trainer, evaluate, resume, train  # noqa: E402

__all__ = [
    "STOP",
    "Callback",
    "Config",
    "IntroVAE",
    "METHODS",
    "Method",
    "RunResult",
    "SoftIntroVAE",
    "StopAtStep",
    "Trainer",
    "TrainingDiverged",
    "UserError",
    "VAE",
    "evaluate",
    "load_config",
    "load_presets",
    "resume",
    "train",
]
