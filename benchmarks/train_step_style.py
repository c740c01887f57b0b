"""Images per second and peak GPU memory of one Soft-IntroVAE update of a style-based preset, level by level.

For each level of the preset's growth schedule (4×4 up to the image size) and each precision, runs
the trainer's own step (the preset's networks, batch size of that level, in the middle of its
blend where it has one) on synthetic images and reports the median of ``--rounds`` timings of
``--steps`` steps, with bf16-mixed against fp32 measured in the same run. On CUDA it also reports
the peak memory each level needed, which tells whether a level's batch fits a given card.
Nothing is asserted.

    python benchmarks/train_step_style.py [--preset ffhq256] [--precisions fp32,bf16-mixed]
                                          [--levels 0,1,...] [--steps 5] [--rounds 3] [--device cpu|cuda]
                                          [--threads N]

Precisions the device only emulates (bf16 on a CPU without bf16 instructions) are skipped, with a
line saying so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import common
from common import add_arguments, setup
from softintrovae.config import load_config
from softintrovae.trainer import Trainer


def synthetic_npz(path: Path, size: int, channels: int, n: int) -> Path:
    """n smooth random images (low-frequency noise upsampled), uint8."""
    rng = np.random.default_rng(0)
    coarse = rng.random((n, channels, 8, 8))
    images = np.kron(coarse, np.ones((1, 1, size // 8, size // 8)))
    np.savez(path, images=(images * 255).astype(np.uint8))
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer: Trainer, level_index: int, steps: int, rounds: int) -> tuple[float, float]:
    """(median images per second, peak GB on CUDA or nan) of the trainer's step at a level."""
    level = trainer.growth.levels[level_index]
    step = level.start_step + level.blend_steps // 2
    x, _ = trainer.data.batch(step)
    x = x.to(trainer.device)
    trainer.growth.apply(step, [trainer.encoder, trainer.decoder], trainer.method, trainer.optimizers)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    for _ in range(2):  # warm-up
        trainer.method.step(x, step)
    timings = []
    for _ in range(rounds):
        sync(trainer.device)
        started = common.clock()
        for _ in range(steps):
            trainer.method.step(x, step)
        sync(trainer.device)
        timings.append((common.clock() - started) / steps)
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else float("nan")
    return x.shape[0] / statistics.median(timings), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--levels", default=None, help="comma-separated level indices (default: all)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512, help="synthetic training images")
    add_arguments(parser)
    args = parser.parse_args()
    _, precisions = setup(parser, args)

    base = load_config(args.preset)
    size = 4 * 2 ** (len(base.model.channels) - 1)
    channels = 1 if "mnist" in base.data.name else 3
    with tempfile.TemporaryDirectory() as tmp:
        npz = synthetic_npz(Path(tmp) / "images.npz", size, channels, args.images)
        overrides = {"data.name": "npz", "data.root": str(npz), "data.pad_to": 0, "train.device": args.device, "train.progress": False}
        results: dict[str, dict[int, tuple[float, float]]] = {}
        for precision in precisions:
            torch.manual_seed(0)
            trainer = Trainer(load_config(args.preset, {**overrides, "train.precision": precision}), None)
            levels = [int(v) for v in args.levels.split(",")] if args.levels else range(len(trainer.growth.levels))
            results[precision] = {i: measure(trainer, i, args.steps, args.rounds) for i in levels}
            device = trainer.device
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.preset} on {name}: images/s of one Soft-IntroVAE update (median of {args.rounds} x {args.steps} steps), peak GB")
    header = "level  res  batch  " + "  ".join(f"{p:>16}" for p in precisions)
    if len(precisions) > 1:
        header += f"  {precisions[1]}/{precisions[0]}"
    print(header)
    schedule = load_config(args.preset).growth
    first = results[precisions[0]]
    for i in first:
        batch = (schedule.batch_sizes[i] if len(schedule.batch_sizes) > 1 else (schedule.batch_sizes or [base.data.batch_size])[0])
        cells = [f"{results[p][i][0]:8.1f} ({results[p][i][1]:5.2f})" for p in precisions]
        line = f"{i:5d} {4 * 2**i:4d} {batch:6d}  " + "  ".join(f"{c:>16}" for c in cells)
        if len(precisions) > 1:
            line += f"  {results[precisions[1]][i][0] / first[i][0]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
