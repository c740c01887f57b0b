"""The 2D metrics of paper §6.1 / Table 2, defined exactly as the official evaluation (SPEC §3).

- ``kl``: KL(P ‖ Q) between 100×100-bin density histograms of 5,000 real (P) and 5,000 generated
  (Q) points over the dataset's square; ``Σ P·(log P − log(Q + 1e-14)) / bins`` (torch's
  ``kl_div(..., reduction='batchmean')`` over the histogram's rows). Table 2's "KL".
- ``jsd_official``: ``½[KL(M ‖ P) + KL(M ‖ Q)]`` with M = ½(P + Q) in the same units. This is what
  Table 2 calls "JSD"; note the arguments are reversed against the textbook definition.
- ``jsd_textbook``: ``½[KL(P ‖ M) + KL(Q ‖ M)]`` on the histograms normalised to probabilities,
  in nats (between 0 and log 2). Not comparable with Table 2; reported for honesty.
- ``gnelbo``: grid-normalised ELBO. −ELBO(x) = KL(q(z|x) ‖ p(z)) + ‖x − D(μ(x))‖² (β = 1, z = μ),
  on a 1024×1024 grid over the square and on 12,800 data points;
  ``gnelbo = mean_data(−ELBO) / (Σ_grid(−ELBO) + Σ_data(−ELBO))``. Table 2 lists it ×1e7.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..objectives import kl_to_standard_normal

LOG_EPS = 1e-14


def histogram_density(points: np.ndarray, limit: float, bins: int = 100) -> np.ndarray:
    """Density histogram (bins × bins) of (N, 2) points over [−limit, limit]², as ``np.histogram2d``."""
    hist, _, _ = np.histogram2d(
        points[:, 0], points[:, 1], bins=bins, range=[[-limit, limit], [-limit, limit]], density=True
    )
    return hist


def _kl_batchmean(p: np.ndarray, q: np.ndarray) -> float:
    """Σ p·(log p − log(q + 1e-14)) / rows, zero where p = 0 (torch ``kl_div``, ``batchmean``)."""
    log_q = torch.from_numpy(np.log(q + LOG_EPS))
    return float(F.kl_div(log_q, torch.from_numpy(p), reduction="batchmean"))


def histogram_kl(p: np.ndarray, q: np.ndarray) -> float:
    return _kl_batchmean(p, q)


def histogram_jsd_official(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    return 0.5 * (_kl_batchmean(m, p) + _kl_batchmean(m, q))


def histogram_jsd_textbook(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * (np.log(a[mask]) - np.log(b[mask]))))

    return 0.5 * (kl(p, m) + kl(q, m))


@contextmanager
def _one_intra_op_thread() -> Iterator[int]:
    """torch ops single-threaded for a while; yields the number of threads torch had."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def deterministic_negative_elbo(
    encoder: nn.Module, decoder: nn.Module, x: Tensor, batch_size: int | None = None, progress=None
) -> Tensor:
    """−ELBO with β = 1 and z = μ(x): KL(q(z|x) ‖ p(z)) + ‖x − D(μ)‖², per point (N,), in fp32.

    On the CPU the passes of ``batch_size`` points (default 8192) run side by side on torch's threads,
    each pass single-threaded: independent passes need no barrier after every layer, where threads
    sharing one pass wait for each other (on a busy machine, for one that is not running). Each
    point's value is the same either way. ``progress`` (a tqdm bar, optional) advances per pass.
    """
    cpu = x.device.type == "cpu"  # pragma: no mutate (speed and device only: docs/testing.md)
    batch_size = batch_size or (8192 if cpu else 65536)  # pragma: no mutate (speed and device only: docs/testing.md)
    starts = range(0, len(x), batch_size)

    def one_pass(start: int) -> Tensor:
        with torch.inference_mode():  # per thread: it is thread-local
            chunk = x[start : start + batch_size]
            mu, logvar = encoder(chunk)
            return kl_to_standard_normal(mu, logvar, reduction="none") + (chunk - decoder(mu).float()).pow(2).sum(1)

    out = torch.empty(len(x), dtype=torch.float32, device=x.device)  # pragma: no mutate (speed and device only: docs/testing.md)
    with _one_intra_op_thread() if cpu else nullcontext(torch.get_num_threads()) as threads:  # pragma: no mutate (speed and device only: docs/testing.md)
        with ThreadPoolExecutor(max(1, min(threads if cpu else 1, len(starts)))) as pool:  # pragma: no mutate (speed and device only: docs/testing.md)
            for start, values in zip(starts, pool.map(one_pass, starts)):
                out[start : start + len(values)] = values
                if progress is not None:
                    progress.update(len(values))
    return out


def square_grid(limit: float, size: int, device: torch.device | str = "cpu") -> Tensor:
    """(size², 2) points of a size × size grid over [−limit, limit]², row-major in y then x."""
    axis = torch.linspace(-limit, limit, size, device=device)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def grid_normalized_elbo(neg_elbo_data: Tensor, neg_elbo_grid: Tensor) -> float:
    normaliser = neg_elbo_grid.double().sum() + neg_elbo_data.double().sum()
    return float(neg_elbo_data.double().mean() / normaliser)


def histogram_metrics(real: np.ndarray, generated: np.ndarray, limit: float, bins: int = 100) -> dict[str, float]:
    return compare_histograms(histogram_density(real, limit, bins), histogram_density(generated, limit, bins))


def compare_histograms(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """``kl``, ``jsd_official`` and ``jsd_textbook`` of the real (``p``) and generated (``q``) density histograms."""
    return {
        "kl": histogram_kl(p, q),
        "jsd_official": histogram_jsd_official(p, q),
        "jsd_textbook": histogram_jsd_textbook(p, q),
    }
