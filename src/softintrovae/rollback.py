"""Undoing one training step: what a step changes is copied before it and put back when its batch
is skipped (``train.on_nonfinite: skip``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def clone_state(tree: Any) -> Any:
    """A copy of nested dicts/lists/tuples whose tensors are cloned."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: clone_state(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_state(v) for v in tree)
    return tree


class StepSnapshot:
    """The networks' weights and buffers (BatchNorm statistics), the optimizers' state (Adam
    moments) and the fp16 loss scale, as they were when the snapshot was taken."""

    def __init__(self, networks: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer], scaler=None):
        self.networks, self.optimizers, self.scaler = networks, optimizers, scaler
        self.state = clone_state({
            "networks": [n.state_dict() for n in networks],
            "optimizers": [o.state_dict() for o in optimizers],
            "scaler": scaler.state_dict() if scaler else None,
        })  # fmt: skip

    def restore(self) -> None:
        for network, state in zip(self.networks, self.state["networks"]):
            network.load_state_dict(state)
        for optimizer, state in zip(self.optimizers, self.state["optimizers"]):
            optimizer.load_state_dict(state)
        if self.scaler:
            self.scaler.load_state_dict(self.state["scaler"])
