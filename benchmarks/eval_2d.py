"""Seconds of the 2D final evaluation's forward passes: −ELBO on the 1024×1024 grid and 12,800 points.

Compares, in one process and on the same paper-sized networks (MLP 4×256, random weights: the cost
does not depend on them):
  reference  the pass the evaluation ran before: 65,536 points at a time, torch's threads inside
             each pass (each layer's 64 MB output on fresh pages, a barrier after every op);
  current    ``softintrovae.metrics.deterministic_negative_elbo``: 8,192 points at a time, the passes
             side by side on torch's threads, each single-threaded;
and checks that both give the same values, bit for bit. Prints wall and CPU seconds, their ratios
against the reference, GFLOP per evaluation and achieved GFLOP/s against a matmul peak measured
here, and the CPU (torch's capability, threads, load). Rounds alternate between variants so that
machine noise hits both alike; the median round is reported. Nothing is asserted: read the ratios.

    python benchmarks/eval_2d.py [--rounds 3] [--grid-size 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from softintrovae.data import Toy2DStream
from softintrovae.metrics import deterministic_negative_elbo, square_grid
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.objectives import kl_to_standard_normal
from train_step_2d import matmul_peak_gflops  # the benchmark beside this one (python puts this folder on the path)


@torch.no_grad()
def reference_negative_elbo(encoder, decoder, x, batch_size: int = 65536):
    out = []
    for chunk in x.split(batch_size):
        mu, logvar = encoder(chunk)
        out.append(kl_to_standard_normal(mu, logvar, reduction="none") + (chunk - decoder(mu).float()).pow(2).sum(1))
    return torch.cat(out)


def timed(function) -> tuple[float, float, torch.Tensor]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    values = function()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grid-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, decoder = MLPEncoder().eval(), MLPDecoder().eval()
    points = torch.cat([Toy2DStream("8gaussians", 1).sample(12800, torch.Generator().manual_seed(0)), square_grid(2.0, args.grid_size)])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference_negative_elbo(encoder, decoder, points[:4096])
    gflop = counter.get_total_flops() / 4096 * len(points) / 1e9
    print(f"CPU: torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; matmul peak {matmul_peak_gflops(torch.float32):.0f} GFLOP/s")  # fmt: skip
    print(f"{len(points):,} points, {gflop:.0f} GFLOP per evaluation")
    variants = {
        "reference": lambda: reference_negative_elbo(encoder, decoder, points),
        "current": lambda: deterministic_negative_elbo(encoder, decoder, points),
    }
    rounds = {name: [] for name in variants}
    values = {}
    for _ in range(args.rounds):
        for name, function in variants.items():
            wall, cpu, values[name] = timed(function)
            rounds[name].append((wall, cpu))
    same = torch.equal(values["reference"], values["current"])
    base_wall, base_cpu = (statistics.median(r[i] for r in rounds["reference"]) for i in (0, 1))
    for name, measured in rounds.items():
        wall, cpu = (statistics.median(r[i] for r in measured) for i in (0, 1))
        print(f"{name:>9}: {wall:6.2f} s wall ({base_wall / wall:4.2f}x), {cpu:6.2f} s CPU ({base_cpu / cpu:4.2f}x), {gflop / wall:5.0f} GFLOP/s")
    print(f"same values, bit for bit: {same}")


if __name__ == "__main__":
    main()
