from __future__ import annotations

import pytest

# Small enough that a whole run takes a second or two on a laptop CPU.
TINY = {
    "model.hidden_dim": 16,
    "data.batch_size": 64,
    "train.progress": False,
    "train.eval_every": 0,
    "eval.num_samples": 500,
    "eval.grid_size": 32,
    "eval.elbo_samples": 256,
}


def tiny_overrides(**extra) -> dict:
    """TINY plus extra overrides given as section__key=value keyword arguments."""
    return {**TINY, **{k.replace("__", "."): v for k, v in extra.items()}}


@pytest.fixture
def tiny():
    return tiny_overrides
