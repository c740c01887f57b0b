"""Data sources. Every source is a stream of batches that can start at any step (for resuming)."""

from __future__ import annotations

from .toy2d import TOY2D, Toy2DStream

DATASETS = dict(TOY2D)


def build_data(config) -> Toy2DStream:
    """The batch stream for ``config.data``."""
    return Toy2DStream(config.data.name, config.data.batch_size, config.data.seed)


__all__ = ["DATASETS", "TOY2D", "Toy2DStream", "build_data"]
