"""Exported models: a trained model's weights as one ``.safetensors`` file, nothing pickled.

The file holds the encoder's tensors under ``encoder.*`` and the sampling decoder's (the EMA copy
when the run kept one, else the trained decoder) under ``decoder.*``; its metadata, plain strings,
hold the resolved config and the model record as JSON:

==================  =================================================================
``format``          ``softintrovae-model``
``format_version``  ``1``
``config``          the run's resolved config (JSON of ``Config.to_dict()``)
``model``           ``input_shape``, ``num_classes``, ``latents``, ``step``, ``method``,
                    ``decoder`` (``ema`` or ``trained``: which decoder was written)
==================  =================================================================

so that :meth:`TrainedModel.load <softintrovae.checkpoint.TrainedModel.load>` rebuilds the networks
from the file alone, on a machine without the training data, and computes what the run computes.
This module is the file format only; :meth:`TrainedModel.export` and :func:`softintrovae.checkpoint.export_model`
write a trained model with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import CorruptCheckpoint, UserError, first_line
from .files import atomic_write_bytes

SUFFIX = ".safetensors"
FORMAT = "softintrovae-model"
FORMAT_VERSION = "1"


def _tensors(prefix: str, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory or are not contiguous: each gets its own copy
    return {f"{prefix}.{key}": value.detach().cpu().contiguous().clone() for key, value in network.state_dict().items()}


def write_export(out: str | Path, networks: dict[str, torch.nn.Module], config: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write ``networks`` (``{"encoder": ..., "decoder": ...}``) with the config and model record as
    metadata to ``out``, a ``.safetensors`` file, atomically; returns its path."""
    out = Path(out)
    if out.suffix != SUFFIX:
        raise UserError(f"the exported file must end in {SUFFIX}, got {str(out)!r}")
    tensors = {key: value for name, network in networks.items() for key, value in _tensors(name, network).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(config), "model": json.dumps(record)}
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write_bytes(out, lambda f: f.write(data))
    return out


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config as plain data, a checkpoint-like state) of an exported file: the state holds
    ``encoder``, ``decoder``, ``step``, ``model`` and ``exported`` (the file's model record)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"exported model {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as exc:  # SafetensorError for truncated or foreign files, OSError for unreadable ones
        reason = first_line(exc)
        raise CorruptCheckpoint(f"exported model {str(path)!r} is corrupt or not a safetensors file ({reason[:120]})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is a safetensors file but not a softintrovae export (no format: {FORMAT} in its metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{str(path)!r} has export format version {metadata.get('format_version')!r}; this softintrovae reads {FORMAT_VERSION}")
    try:
        config, record = json.loads(metadata["config"]), json.loads(metadata["model"])
        step = int(record["step"])
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpoint(f"exported model {str(path)!r} has unreadable metadata (config and model must be JSON)") from None
    state = {
        "step": step,
        "model": record,
        "exported": record,
        **{network: {k[len(network) + 1 :]: v for k, v in tensors.items() if k.startswith(network + ".")} for network in ("encoder", "decoder")},
    }
    return config, state


__all__ = ["FORMAT", "SUFFIX", "read_export", "write_export"]
