"""Images per second of one Soft-IntroVAE update on the image architectures (paper Table 6).

For the residual networks the presets ship (CIFAR-10: 3×32×32, channels 64-128-256, z 128; MNIST /
Fashion-MNIST: 1×28×28, channels 64-128, z 32; fashion-mnist-small: 1×28×28, channels 16-32, z 32;
CelebA 256 on a GPU), at each batch size, compares in one process and on the same weights and batch:
  reference       the pass-by-pass step of SPEC §2 plus the official loop's logging pass
                  (``softintrovae.reference``), fp32, NCHW: what a user of the official code pays;
  optimized P L   ``softintrovae.methods.SoftIntroVAE.step`` in precision P (fp32, bf16-mixed, fp16-mixed
                  on CUDA; those the device only emulates are skipped) and layout L (NCHW, channels_last);
  compiled P L    the same with ``torch.compile(mode=--compile)`` networks, when asked for.
Rounds alternate between variants so that machine noise hits all of them alike; the median round
is reported, with ratios against the reference measured in the same run. Nothing is asserted.

    python benchmarks/train_step_images.py [--archs cifar10,mnist,fmnist-small] [--batch-sizes 32,128,256]
                                           [--precisions fp32,bf16-mixed] [--seconds 2] [--rounds 3]
                                           [--threads N] [--device cpu|cuda] [--compile MODE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import compiled, keep_working, add_arguments, autocast, setup, timed_calls
from softintrovae.config import MethodConfig
from softintrovae.methods import SoftIntroVAE
from softintrovae.models.resnet import ResidualDecoder, ResidualEncoder
from softintrovae.reference import reference_soft_introvae_step

ARCHS = {  # image shape, channels, z_dim, (β_rec, β_kl, β_neg) of the presets
    "cifar10": ((3, 32, 32), (64, 128, 256), 128, (1.0, 1.0, 256.0)),
    "mnist": ((1, 28, 28), (64, 128), 32, (1.0, 1.0, 256.0)),
    "fmnist-small": ((1, 28, 28), (16, 32), 32, (1.0, 1.0, 256.0)),
    "celeba256": ((3, 256, 256), (64, 128, 256, 512, 512, 512), 256, (1.0, 0.5, 1024.0)),
}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def make_variants(arch: str, batch_size: int, device: torch.device, precisions=("fp32",), compile_mode: str | None = None) -> dict:
    shape, channels, z_dim, (beta_rec, beta_kl, beta_neg) = ARCHS[arch]
    torch.manual_seed(0)
    encoder = ResidualEncoder(shape, channels, z_dim).to(device)
    decoder = ResidualDecoder(shape, channels, z_dim).to(device)
    x = torch.rand(batch_size, *shape, device=device)
    scale = 1.0 / (shape[0] * shape[1] * shape[2])
    hp = dict(beta_rec=beta_rec, beta_kl=beta_kl, beta_neg=beta_neg)

    def fresh(memory_format=torch.contiguous_format):
        e = copy.deepcopy(encoder).to(memory_format=memory_format)
        d = copy.deepcopy(decoder).to(memory_format=memory_format)
        return e, d, (torch.optim.Adam(e.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4))

    e, d, opts = fresh()
    # partial binds the reference's own networks now (a lambda over e, d would see the last variant's)
    variants = {"reference fp32": partial(reference_soft_introvae_step, e, d, *opts, x, z_dim=z_dim, scale=scale, **hp)}
    kinds = [("optimized", None)] + ([("compiled", compile_mode)] if compile_mode else [])
    for precision in precisions:
        for kind, mode in kinds:
            for layout, memory_format in LAYOUTS.items():
                e, d, opts = fresh(memory_format)
                if mode:
                    e, d = compiled(e, d, mode=mode)
                config = MethodConfig(vae_warmup_steps=0, **hp)
                method = SoftIntroVAE(e, d, *opts, config, scale=scale, z_dim=z_dim, autocast=autocast(precision, device))
                variants[f"{kind} {precision} {layout}"] = partial(method.step, x.contiguous(memory_format=memory_format), 0)
    return variants


def flops_per_step(variants: dict) -> dict[str, float]:
    """GFLOP of one call of the fp32 reference and the fp32 NCHW optimized step (torch.utils.flop_counter)."""
    counted = {}
    for name in ("reference fp32", "optimized fp32 NCHW"):
        with FlopCounterMode(display=False) as counter:
            variants[name]()
        counted[name] = counter.get_total_flops() / 1e9
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="cifar10,mnist,fmnist-small", help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--batch-sizes", default="32,128,256")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", default=None, help="also time the optimized step with torch.compile(mode=...) networks")
    parser.add_argument("--flops", action="store_true", help="also count the FLOPs of one reference and one optimized fp32 step")
    add_arguments(parser, precisions="fp32")
    args = parser.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown architecture {unknown[0]!r} (known: {', '.join(ARCHS)})")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    device, precisions = setup(parser, args)

    summary = []
    for arch in archs:
        for batch_size in batch_sizes:
            variants = make_variants(arch, batch_size, device, precisions, args.compile)
            keep_working(variants, [name for name in variants if name.startswith("compiled")])
            rates: dict[str, list[float]] = {name: [] for name in variants}
            faults: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    calls, faulted = timed_calls(fn, args.seconds, device)
                    rates[name].append(batch_size * calls)
                    faults[name].append(faulted)
            base = statistics.median(rates["reference fp32"])
            print(f"\n{arch} architecture, batch {batch_size}, median of {args.rounds} rounds")
            print(f"{'variant':<38}{'img/s':>9}{'vs reference':>14}{'page faults/step':>18}")
            for name, values in rates.items():
                rate = statistics.median(values)
                print(f"{name:<38}{rate:>9.1f}{rate / base:>13.2f}x{statistics.median(faults[name]):>18,.0f}")
            if args.flops:
                print(f"{'GFLOP per step':<38}" + "   ".join(f"{name} {gflop:.1f}" for name, gflop in flops_per_step(variants).items()))
            ratios = {name: statistics.median(v) / base for name, v in rates.items() if name != "reference fp32"}
            summary.append((arch, batch_size, ratios))

    print("\nratios against the reference step (targets: fp32 >= 1x at every batch, >= 1.2x at batch 128)")
    for arch, batch_size, ratios in summary:
        shown = "   ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
        print(f"  {arch:<12} batch {batch_size:<4} {shown}")


if __name__ == "__main__":
    main()
