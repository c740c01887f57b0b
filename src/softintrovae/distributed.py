"""Data-parallel training under ``torchrun``: which process this is, and keeping processes in step.

``torchrun --nproc_per_node N -m softintrovae train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process trains on its own shard of every batch (the
data streams shard like ``DistributedSampler``), gradients are averaged over processes before
each optimizer step (:func:`softintrovae.methods.average_gradients`), and only rank 0 writes the
run directory: logs, checkpoints, evaluations and pictures. Without ``torchrun`` everything here
is a no-op and training is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {value!r}") from None


def current_process() -> Process:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not launched by it)."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Process()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise UserError(f"RANK {rank} is outside 0..{world_size - 1} (WORLD_SIZE {world_size})")
    return Process(rank, world_size, local_rank)


def init_process_group(process: Process, device: torch.device) -> None:
    """Join the default process group (NCCL on CUDA, gloo on the CPU) once per process."""
    if process.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def device_for(process: Process, device: torch.device) -> torch.device:
    """Each process of a multi-GPU job gets its own GPU: ``cuda:LOCAL_RANK``."""
    if process.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", process.local_rank)
    return device


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every process (same start everywhere)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src)


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()
