"""CPU training keeps the memory it frees: repeated large allocations stop faulting pages in."""

import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, torch
from softintrovae.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    a = torch.empty(48 << 20, dtype=torch.uint8).fill_(1)  # above glibc's largest dynamic mmap threshold
    b = torch.empty(8 << 20, dtype=torch.uint8).fill_(1)
    del a, b
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_kept_memory_is_reused_without_page_faults():
    kept, with_keep = faults("keep")
    if not kept:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, default = faults("default")
    pages = 10 * (56 << 20) // 4096
    assert default > pages // 2  # by default each step maps most of its 56 MiB afresh
    assert with_keep < default // 2  # measured here: about a third (the rest: pages glibc still releases)


@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_run_keeps_freed_memory_unless_told_not_to(monkeypatch, keep):
    from softintrovae import trainer
    from softintrovae.config import load_config

    from .conftest import tiny_overrides

    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    trainer.Trainer(load_config("demo", {**tiny_overrides(), "train.keep_freed_memory": keep, "train.device": "cpu"}), None)
    assert len(calls) == (1 if keep else 0)
