from __future__ import annotations

import pytest
import torch

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


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny tensors: a second intra-op thread only adds synchronisation (and waits on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
