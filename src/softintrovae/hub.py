"""Sharing trained models on the Hugging Face Hub (optional: ``pip install 'softintrovae[hub]'``).

A shared model is a folder (a Hub repository) of two files: ``model.safetensors``, the export of
:mod:`softintrovae.export`, and ``README.md``, a model card with the config and the run's final
metrics. :func:`save_pretrained` writes that folder locally, :func:`push` uploads it, and
:func:`from_pretrained` loads a local folder or downloads a repository. ``huggingface_hub`` is
imported only inside :func:`push` and :func:`from_pretrained` when they need the Hub.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import TrainedModel, as_trained, export_model
from .errors import UserError, first_line
from .files import atomic_write_text

WEIGHTS = "model.safetensors"
CARD = "README.md"


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError("sharing on the Hub needs huggingface_hub: pip install 'softintrovae[hub]'") from None
    return huggingface_hub


def final_metrics(model: TrainedModel) -> dict[str, Any]:
    """The run's final metrics (``RUN/metrics.json``), or {} when the model was not loaded from a run that has them."""
    path = model.run_dir / "metrics.json" if model.run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def model_card(model: TrainedModel, repo_id: str | None = None) -> str:
    """README.md of a shared model: what it is, how to load it, its final metrics and its config."""
    metrics = final_metrics(model)
    where = repo_id or "FOLDER_OR_REPO_ID"
    shape = "×".join(map(str, model.input_shape))
    lines = [
        "---",
        "library_name: softintrovae",
        f"tags: [softintrovae, {model.method}, vae]",
        "---",
        "",
        f"# {model.config.name}: {model.method} ({model.config.model.arch}, inputs {shape})",
        "",
        f"Trained with softintrovae for {model.step} steps; "
        f"z has {model.latents.z_dim} dimensions" + (f", {model.num_classes} classes" if model.num_classes else "") + ".",
        "",
        "```python",
        "from softintrovae.hub import from_pretrained",
        "",
        f'model = from_pretrained("{where}")',
        "images = model.sample(16)",
        "```",
        "",
    ]
    if metrics:
        lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in metrics.items()]
        lines.append("")
    config = yaml.safe_dump(model.config.to_dict(), sort_keys=False)
    lines += ["## Config", "", "```yaml", config.rstrip(), "```", ""]
    return "\n".join(lines)


def save_pretrained(model: TrainedModel | str | Path, folder: str | Path, repo_id: str | None = None) -> Path:
    """Write ``model.safetensors`` and ``README.md`` of ``model`` (or of a run to load) into ``folder``."""
    model, folder = as_trained(model), Path(folder)
    export_model(model, folder / WEIGHTS)
    atomic_write_text(folder / CARD, model_card(model, repo_id))
    return folder


def push(
    model: TrainedModel | str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
    commit_message: str = "Upload softintrovae model",
) -> str:  # fmt: skip
    """Upload ``model`` (or a run to load) to the Hub repository ``repo_id`` (created when missing);
    returns the repository's URL."""
    hub = _huggingface_hub()
    model = as_trained(model)
    api = hub.HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(url)


def from_pretrained(repo_id_or_folder: str | Path, *, revision: str | None = None, token: str | None = None) -> TrainedModel:
    """The :class:`TrainedModel` of a local folder written by :func:`save_pretrained`, or of a Hub
    repository ``repo_id_or_folder`` (downloaded to the Hub's cache)."""
    folder = Path(repo_id_or_folder)
    if folder.is_dir():
        if not (folder / WEIGHTS).is_file():
            raise UserError(f"{str(folder)!r} holds no {WEIGHTS}: it is not a folder written by save_pretrained or push")
        return TrainedModel.load(folder / WEIGHTS)
    hub = _huggingface_hub()
    try:
        path = hub.hf_hub_download(str(repo_id_or_folder), WEIGHTS, revision=revision, token=token)
    except Exception as exc:  # the Hub's errors: repository or file not found, no connection, bad token
        reason = first_line(exc)
        raise UserError(f"cannot download {WEIGHTS} of {str(repo_id_or_folder)!r} from the Hub ({reason[:160]})") from None
    return TrainedModel.load(path)


__all__ = ["CARD", "WEIGHTS", "final_metrics", "from_pretrained", "model_card", "push", "save_pretrained"]
