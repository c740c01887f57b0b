"""Iterations per second of one Soft-IntroVAE update on the 2D setting (MLP 4×256, batch 512).

Compares, in one process and on the same weights and batch:
  reference  the pass-by-pass step of SPEC §2 plus the official loop's logging pass
             (``softintrovae.reference``), i.e. what a user of the official code pays;
  optimized  ``softintrovae.methods.SoftIntroVAE.step``;
each in every precision asked for that the device runs natively (bf16 on a CPU without bf16
instructions is skipped, with a line saying so), plus the VAE warm-up update (for the full-run
estimate). ``--compile MODE`` adds the optimized step with ``torch.compile(mode=MODE)`` networks
(``reduce-overhead`` uses CUDA graphs on a GPU). ``--runs K`` adds K runs trained as one batched
model (``softintrovae.stacked``) and reports runs·it/s against K separate optimized steps.

Prints it/s, ratios against the fp32 reference, FLOPs per step (torch.utils.flop_counter) and
achieved GFLOP/s against a matmul peak measured here. Rounds alternate between variants so that
machine noise hits all of them alike; the median round is reported. Nothing is asserted.

    python benchmarks/train_step_2d.py [--seconds 3] [--rounds 3] [--batch-size 512] [--threads N]
                                       [--device cpu|cuda] [--precisions fp32,bf16-mixed]
                                       [--runs K] [--compile default|reduce-overhead]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import compiled, keep_working, DTYPES, add_arguments, autocast, calls_per_second, matmul_peak_gflops, setup
from softintrovae.config import MethodConfig, load_config
from softintrovae.data import Toy2DStream
from softintrovae.methods import SoftIntroVAE
from softintrovae.models import MLPDecoder, MLPEncoder
from softintrovae.reference import reference_soft_introvae_step
from softintrovae.stacked import StackedRuns

HP = dict(beta_rec=0.2, beta_kl=0.3, beta_neg=0.9)  # Table 5, 8 Gaussians


def make_variants(batch_size: int, device: torch.device, precisions, compile_mode: str | None = None, runs: int = 0, hidden_dim: int = 256):
    """name → (one step, precision, runs it trains)."""
    torch.manual_seed(0)
    encoder, decoder = MLPEncoder(hidden_dim=hidden_dim).to(device), MLPDecoder(hidden_dim=hidden_dim).to(device)
    x = Toy2DStream("8gaussians", batch_size).batch(0).to(device)

    def fresh():
        e, d = copy.deepcopy(encoder), copy.deepcopy(decoder)
        return e, d, (torch.optim.Adam(e.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4))

    variants = {}
    for precision in precisions:
        context = autocast(precision, device)
        e, d, opts = fresh()

        def reference(e=e, d=d, opts=opts, context=context):
            with context():
                reference_soft_introvae_step(e, d, *opts, x, z_dim=2, scale=0.5, **HP)

        variants[f"reference {precision}"] = (reference, precision, 1)
        e, d, opts = fresh()
        method = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=0, **HP), scale=0.5, z_dim=2, autocast=context)
        variants[f"optimized {precision}"] = (partial(method.step, x, 0), precision, 1)
        if compile_mode:
            e, d, opts = fresh()
            e, d = compiled(e, d, mode=compile_mode)
            method = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=0, **HP), scale=0.5, z_dim=2, autocast=context)
            variants[f"compiled {precision}"] = (partial(method.step, x, 0), precision, 1)
        if runs:
            overrides = {"data.batch_size": batch_size, "model.hidden_dim": hidden_dim, "method.vae_warmup_steps": 0, "train.device": str(device), "train.precision": precision}
            stacked = StackedRuns(load_config("soft-introvae-8gaussians", overrides), range(runs))
            batch = stacked.batch(0)
            variants[f"stacked x{runs} {precision}"] = (partial(stacked.method.step, batch, 0), precision, runs)
    e, d, opts = fresh()
    warmup = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=1, **HP), scale=0.5, z_dim=2)
    variants["warm-up fp32"] = (partial(warmup.step, x, 0), "fp32", 1)  # the VAE updates of the first 2,000 steps
    return variants


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
    parser.add_argument("--hidden-dim", type=int, default=256, help="width of the MLPs (the demo uses 128)")
    parser.add_argument("--runs", type=int, default=0, help="also time K runs stacked into one batched model")
    parser.add_argument("--compile", default=None, help="also time the optimized step with torch.compile(mode=...) networks")
    add_arguments(parser)
    args = parser.parse_args()
    device, precisions = setup(parser, args)
    precisions = ["fp32"] + [p for p in precisions if p != "fp32"]  # the ratios are against the fp32 reference
    peaks = {p: matmul_peak_gflops(DTYPES.get(p, torch.float32), device) for p in precisions}
    print("matmul peak (2048², measured): " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))

    variants = make_variants(args.batch_size, device, precisions, args.compile, args.runs, args.hidden_dim)
    keep_working(variants, [name for name in variants if name.startswith("compiled")])
    # a compiled step does the optimized step's arithmetic (and counting would trace it again)
    flops = {name: flops_per_step(fn) for name, (fn, _, _) in variants.items() if not name.startswith("compiled")}
    flops.update({name: flops[name.replace("compiled", "optimized")] for name in variants if name.startswith("compiled")})
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (fn, _, _) in variants.items():
            rates[name].append(calls_per_second(fn, args.seconds, device, at_least=3))

    base = statistics.median(rates["reference fp32"])
    print(f"\n2D Soft-IntroVAE step, width {args.hidden_dim}, batch {args.batch_size} per run, median of {args.rounds} rounds")
    print(f"{'variant':<24}{'it/s':>9}{'runs·it/s':>11}{'vs ref fp32':>13}{'GFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}")
    for name, values in rates.items():
        _, precision, runs = variants[name]
        rate = statistics.median(values)
        gflop = flops[name] / 1e9
        print(
            f"{name:<24}{rate:>9.2f}{rate * runs:>11.2f}{rate * runs / base:>12.2f}x{gflop:>12.2f}"
            f"{gflop * rate:>9.1f}{100 * gflop * rate / peaks[precision]:>7.1f}%"
        )
    opt = statistics.median(rates["optimized fp32"])
    print(f"\noptimized fp32 / reference fp32: {opt / base:.2f}x (target >= 1.15x)")
    for precision in precisions[1:]:
        print(f"optimized {precision} / reference fp32: {statistics.median(rates[f'optimized {precision}']) / base:.2f}x")
    for precision in precisions:
        if f"compiled {precision}" in rates:
            compiled = statistics.median(rates[f"compiled {precision}"])
            print(f"compiled {precision} / optimized {precision}: {compiled / statistics.median(rates[f'optimized {precision}']):.2f}x")
    if args.runs:
        stacked = args.runs * statistics.median(rates[f"stacked x{args.runs} fp32"])
        print(f"stacked x{args.runs} fp32: {stacked:.1f} runs·it/s = {stacked / opt:.2f}x K separate optimized fp32 steps")
        table2 = 60 * 30000 / stacked / 60  # Table 2: 4 datasets x 3 methods x 5 seeds x 30k iterations
        print(f"  at this rate 60 runs of 30,000 iterations (Table 2's count) take {table2:.0f} min")
    full_run = 2000 / statistics.median(rates["warm-up fp32"]) + 28000 / opt
    print(f"estimated 30k-iteration run (2,000 warm-up) at optimized fp32: {full_run / 60:.1f} min")


if __name__ == "__main__":
    main()
