"""Images per second of one Soft-IntroVAE update on the image architectures (paper Table 6).

For the CIFAR-10 (3×32×32, channels 64-128-256, z 128) and MNIST (1×28×28, channels 64-128, z 32)
residual networks, at each batch size, compares in one process and on the same weights and batch:
  reference            the pass-by-pass step of SPEC §2 plus the official loop's logging pass
                       (``softintrovae.reference``), fp32, NCHW: what a user of the official code pays;
  optimized fp32       ``softintrovae.methods.SoftIntroVAE.step``, NCHW and channels_last;
  optimized bf16-mixed the same under bf16 autocast, NCHW and channels_last.
Rounds alternate between variants so that machine noise hits all of them alike; the median round
is reported, with ratios against the reference measured in the same run. Nothing is asserted.
bf16 pays off only where the CPU has native bf16 (AVX-512 BF16 / AMX) or on a GPU.

    python benchmarks/train_step_images.py [--archs cifar10,mnist] [--batch-sizes 32,128]
                                           [--precisions fp32,bf16-mixed] [--seconds 2] [--rounds 3]
                                           [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext
from functools import partial

import torch

from softintrovae.config import MethodConfig
from softintrovae.methods import SoftIntroVAE
from softintrovae.models.resnet import ResidualDecoder, ResidualEncoder
from softintrovae.reference import reference_soft_introvae_step

ARCHS = {  # image shape, channels, z_dim, (β_rec, β_kl, β_neg) of the official defaults
    "cifar10": ((3, 32, 32), (64, 128, 256), 128, (1.0, 1.0, 256.0)),
    "mnist": ((1, 28, 28), (64, 128), 32, (1.0, 1.0, 256.0)),
}


PRECISIONS = ("fp32", "bf16-mixed")


def make_variants(arch: str, batch_size: int, device: torch.device, precisions=PRECISIONS) -> dict:
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
    variants = {"reference fp32": lambda: reference_soft_introvae_step(e, d, *opts, x, z_dim=z_dim, scale=scale, **hp)}
    bf16 = partial(torch.autocast, device.type, dtype=torch.bfloat16)
    for precision, autocast in [(p, a) for p, a in (("fp32", nullcontext), ("bf16-mixed", bf16)) if p in precisions]:
        for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            e, d, opts = fresh(memory_format)
            method = SoftIntroVAE(e, d, *opts, MethodConfig(vae_warmup_steps=0, **hp), scale=scale, z_dim=z_dim, autocast=autocast)
            variants[f"optimized {precision} {layout}"] = partial(method.step, x.contiguous(memory_format=memory_format), 0)
    return variants


def steps_per_second(fn, seconds: float, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (allocator, kernel selection)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        fn()
        sync()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="cifar10,mnist", help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="optimized-step precisions to time (bf16 is slow without native bf16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown architecture {unknown[0]!r} (known: {', '.join(ARCHS)})")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions must list some of {', '.join(PRECISIONS)}, got {args.precisions!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    summary = []
    for arch in archs:
        for batch_size in batch_sizes:
            variants = make_variants(arch, batch_size, device, precisions)
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    rates[name].append(batch_size * steps_per_second(fn, args.seconds, device))
            base = statistics.median(rates["reference fp32"])
            print(f"\n{arch} architecture, batch {batch_size}, median of {args.rounds} rounds")
            print(f"{'variant':<38}{'img/s':>9}{'vs reference':>14}")
            for name, values in rates.items():
                rate = statistics.median(values)
                print(f"{name:<38}{rate:>9.1f}{rate / base:>13.2f}x")
            ratios = {
                f"{precision} {layout}": statistics.median(rates[f"optimized {precision} {layout}"]) / base
                for precision, layout in (("fp32", "NCHW"), ("fp32", "channels_last"), ("bf16-mixed", "channels_last"))
                if f"optimized {precision} {layout}" in rates
            }
            summary.append((arch, batch_size, ratios))

    print("\nratios against the reference step (targets: fp32 >= 1.2x, bf16-mixed + channels_last >= 2x)")
    for arch, batch_size, ratios in summary:
        shown = "   ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
        print(f"  {arch:<8} batch {batch_size:<4} {shown}")


if __name__ == "__main__":
    main()
