"""softintrovae: introspective VAEs (Soft-IntroVAE, IntroVAE, VAE) in PyTorch.

Three imports do what the CLI does::

    from softintrovae import load_config, train, evaluate
    result = train(load_config("soft-introvae-8gaussians", {"train.steps": 5000}), out="runs/sivae")
    print(result.metrics)

and a trained model is three lines away::

    import softintrovae
    model = softintrovae.load("runs/sivae")   # a run directory, a checkpoint or an exported .safetensors
    images = model.sample(16)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import TrainedModel  # noqa: E402
from .config import Config, load_config, load_presets  # noqa: E402
from .errors import TrainingDiverged, UserError  # noqa: E402
from .checkpoint import export_model  # noqa: E402
from .methods import METHODS, IntroVAE, Method, SoftIntroVAE, VAE  # noqa: E402
from .trainer import RunResult, Trainer, evaluate, resume, train  # noqa: E402

load = TrainedModel.load  # the one way in for a trained model (see TrainedModel.load)

__all__ = [
    "Config",
    "IntroVAE",
    "METHODS",
    "Method",
    "RunResult",
    "SoftIntroVAE",
    "TrainedModel",
    "Trainer",
    "TrainingDiverged",
    "UserError",
    "VAE",
    "evaluate",
    "export_model",
    "load",
    "load_config",
    "load_presets",
    "resume",
    "train",
]
