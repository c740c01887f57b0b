"""One process of the two-process data-parallel test (started by torchrun from test_parallel.py).

Trains a tiny conditional image run with the shared Trainer, then every rank saves its parameters
and its first batch, so the test can compare the processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from softintrovae.config import load_config
from softintrovae.rundir import RunDir
from softintrovae.trainer import Trainer


def main(out: str, overrides: str) -> None:
    torch.set_num_threads(1)
    config = load_config("npz", json.loads(overrides))
    trainer = Trainer(config, None)
    if trainer.process.is_main:
        trainer.run = RunDir.create(Path(out) / "run", config)
    first_x, first_y = trainer.data.batch(0)
    trainer.fit()
    rank = dist.get_rank()
    params = {f"encoder.{k}": v for k, v in trainer.encoder.named_parameters()}
    params.update({f"decoder.{k}": v for k, v in trainer.decoder.named_parameters()})
    torch.save({"params": {k: v.detach() for k, v in params.items()}, "x": first_x, "y": first_y}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
