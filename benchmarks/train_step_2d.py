"""Iterations per second of one Soft-IntroVAE update on the 2D setting (MLP 4×256, batch 512).

Compares, in one process and on the same weights and batch:
  reference  the pass-by-pass step of SPEC §2 plus the official loop's logging pass
             (``softintrovae.reference``), i.e. what a user of the official code pays;
  optimized  ``softintrovae.methods.SoftIntroVAE.step``;
each in fp32 and with bf16 autocast, plus the VAE warm-up update (for the full-run estimate). Prints it/s, ratios against the fp32 reference, FLOPs per
step (torch.utils.flop_counter) and achieved GFLOP/s against a matmul peak measured here.
Rounds alternate between variants so that machine noise hits all of them alike; the median
round is reported. Nothing is asserted: read the ratios.

    python benchmarks/train_step_2d.py [--seconds 3] [--rounds 3] [--batch-size 512] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from softintrovae.config import MethodConfig
from softintrovae.data import Toy2DStream
from softintrovae.methods import SoftIntroVAE
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.reference import reference_soft_introvae_step

HP = dict(beta_rec=0.2, beta_kl=0.3, beta_neg=0.9)  # Table 5, 8 Gaussians


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def make_variants(batch_size: int):
    torch.manual_seed(0)
    encoder, decoder = MLPEncoder(), MLPDecoder()
    x = Toy2DStream("8gaussians", batch_size).batch(0)
    bf16 = partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    variants = {}
    for precision, autocast in (("fp32", nullcontext), ("bf16-mixed", bf16)):
        e, d = copy.deepcopy(encoder), copy.deepcopy(decoder)
        opts = (torch.optim.Adam(e.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4))

        def reference(e=e, d=d, opts=opts, autocast=autocast):
            with autocast():
                reference_soft_introvae_step(e, d, *opts, x, z_dim=2, scale=0.5, **HP)

        variants[f"reference {precision}"] = reference
        e, d = copy.deepcopy(encoder), copy.deepcopy(decoder)
        opts = (torch.optim.Adam(e.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4))
        method = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=0, **HP), scale=0.5, z_dim=2, autocast=autocast)
        variants[f"optimized {precision}"] = partial(method.step, x, 0)
    e, d = copy.deepcopy(encoder), copy.deepcopy(decoder)
    opts = (torch.optim.Adam(e.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4))
    warmup = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=1, **HP), scale=0.5, z_dim=2)
    variants["warm-up fp32"] = partial(warmup.step, x, 0)  # the VAE updates of the first 2,000 steps
    return variants


def iterations_per_second(fn, seconds: float) -> float:
    fn()  # warm-up (allocator, kernels)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def flops_per_step(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16-mixed": matmul_peak_gflops(torch.bfloat16)}
    print(f"matmul peak (2048², measured): fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16-mixed']:.1f} GFLOP/s")

    variants = make_variants(args.batch_size)
    flops = {name: flops_per_step(fn) for name, fn in variants.items()}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            rates[name].append(iterations_per_second(fn, args.seconds))

    base = statistics.median(rates["reference fp32"])
    print(f"\n2D Soft-IntroVAE step, batch {args.batch_size}, median of {args.rounds} rounds")
    print(f"{'variant':<22}{'it/s':>8}{'vs ref fp32':>13}{'GFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}")
    for name, values in rates.items():
        rate = statistics.median(values)
        gflop = flops[name] / 1e9
        peak = peaks[name.split()[1]]
        print(f"{name:<22}{rate:>8.2f}{rate / base:>12.2f}x{gflop:>12.2f}{gflop * rate:>9.1f}{100 * gflop * rate / peak:>7.1f}%")
    opt = statistics.median(rates["optimized fp32"])
    print(f"\noptimized fp32 / reference fp32: {opt / base:.2f}x (target >= 1.15x)")
    best_bf16 = statistics.median(rates["optimized bf16-mixed"])
    print(f"optimized bf16-mixed / reference fp32: {best_bf16 / base:.2f}x (target >= 3x)")
    full_run = 2000 / statistics.median(rates["warm-up fp32"]) + 28000 / opt
    print(f"estimated 30k-iteration run (2,000 warm-up) at optimized fp32: {full_run / 60:.1f} min")


if __name__ == "__main__":
    main()
