"""What the training-step benchmarks share: device and precision options, the machine line, timing.

A precision the device only emulates is skipped with a line saying so: bf16 on a CPU without bf16
instructions runs matmuls about 100x slower than fp32, so a benchmark that timed it would not finish.
Whether bf16 is native is measured, not guessed: a small bf16 matmul against the same in fp32.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch

from softintrovae.allocator import keep_freed_memory

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
clock = time.perf_counter  # what timed_calls times by (setup: --clock)


def add_arguments(parser: argparse.ArgumentParser, precisions: str = "fp32,bf16-mixed") -> None:
    """--device, --precisions, --threads, --allocator, --clock, as every benchmark takes them."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"cpu, cuda or cuda:N (default: {default_device})")
    parser.add_argument(
        "--precisions",
        default=precisions,
        help=f"comma-separated, from {', '.join(PRECISIONS)}; those the device only emulates are skipped",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--allocator",
        choices=("keep", "system"),
        default="keep",
        help="keep: malloc keeps freed memory, as CPU training does (train.keep_freed_memory); system: glibc's defaults",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time by this process's CPU seconds (with --threads 1, the wall time an idle machine would show; "
        "for a machine shared with other jobs)",
    )


def parse_precisions(parser: argparse.ArgumentParser, text: str) -> list[str]:
    precisions = [p for p in text.split(",") if p]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions must list some of {', '.join(PRECISIONS)}, got {text!r}")
    return precisions


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, list[str]]:
    """Apply --threads, --clock and --allocator, check --device; returns the device and the
    precisions it runs natively (printing one line for each one skipped, and the machine line)."""
    global clock
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            parser.error("--clock cpu times CPU work; on a GPU use the wall clock")
        clock = time.process_time
    kept = device.type == "cpu" and args.allocator == "keep" and keep_freed_memory()
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    native = []
    for precision in parse_precisions(parser, args.precisions):
        reason = unsupported(precision, device)
        if reason:
            print(f"skipping {precision}: {reason}")
        else:
            native.append(precision)
    if not native:
        parser.error("none of --precisions runs natively on this device")
    memory = ", freed memory kept" if kept else ""
    timing = ", timed by process CPU seconds" if args.clock == "cpu" else ""
    print(f"torch {torch.__version__}, {machine(device)}{memory}{timing}")
    return device, native


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` should not be timed on ``device`` (None: it runs natively)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"{torch.cuda.get_device_name(device)} has no native bf16"
        return None
    if precision == "fp16-mixed":
        return "fp16-mixed is CUDA only (as in training)"
    # the median of interleaved measurements: on a shared machine one of them can be off by 100x either way
    slowdown = statistics.median(matmul_seconds(torch.bfloat16) / matmul_seconds(torch.float32) for _ in range(7))
    if slowdown > 2.0:
        return f"this CPU emulates bf16 (a bf16 matmul is {slowdown:.0f}x slower than fp32 here)"
    return None


def matmul_seconds(dtype: torch.dtype, n: int = 256, repeats: int = 7) -> float:
    """The fastest of ``repeats`` n×n matmuls: the minimum, because on a shared machine a time can only
    be inflated by other jobs, never shortened."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return min(times)


def autocast(precision: str, device: torch.device):
    """The context-manager factory the trainer uses for ``precision``."""
    if precision == "fp32":
        return nullcontext
    return partial(torch.autocast, device.type, dtype=DTYPES[precision])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_second(fn: Callable[[], object], seconds: float, device: torch.device, at_least: int = 2) -> float:
    """Calls of ``fn`` per second over at least ``seconds`` and ``at_least`` calls, after one warm-up call."""
    return timed_calls(fn, seconds, device, at_least)[0]


def timed_calls(fn: Callable[[], object], seconds: float, device: torch.device, at_least: int = 2) -> tuple[float, float]:
    """(calls per second, minor page faults per call) over at least ``seconds`` and ``at_least``
    calls, after one warm-up call."""
    fn()
    sync(device)
    count, faults, start = 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt, clock()
    while clock() - start < seconds or count < at_least:
        fn()
        count += 1
    sync(device)
    elapsed = clock() - start
    return count / elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / count


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Measured matmul throughput of an n×n product: the peak the achieved GFLOP/s are compared with."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 * calls_per_second(lambda: a @ b, seconds, device) / 1e9


def keep_working(variants: dict, names: list[str]) -> dict:
    """Call the variants named (e.g. the compiled ones) once and drop, with one line, any that fail."""
    for name in names:
        fn = variants[name][0] if isinstance(variants[name], tuple) else variants[name]
        try:
            fn()
        except Exception as exc:  # a compiler or CUDA-graph limitation: report it, time the rest
            print(f"dropping {name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
            del variants[name]
    return variants


def compiled(*networks, mode: str):
    """``torch.compile(network, mode=mode)`` for each network. The optimized step back-propagates
    through [D(z); D(z_p)] twice (``retain_graph``), which compiled backward functions with donated
    buffers refuse, so buffer donation is turned off."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    return tuple(torch.compile(network, mode=mode) for network in networks)
