"""The largest numbers the code can use, checked where numbers come in (config keys and command-line
flags), so that none overflows inside torch or numpy later."""

from __future__ import annotations

from .errors import UserError

INT_MAX = 2**63 - 1  # torch keeps sizes, counts and step numbers in int64: more overflows inside torch
SEED_MAX = 2**63 - 1  # torch.manual_seed takes [0, 2**64), numpy's SeedSequence any seed >= 0; evaluation uses seed + 2


def out_of_range(value: int, low: int, high: int = INT_MAX) -> str | None:
    """What is wrong with ``value`` (``"must be an integer >= 1, got 0"``), or None when ``low <= value <= high``."""
    if low <= value <= high:
        return None
    allowed = f">= {low}" if high == INT_MAX else f"between {low} and {high}"
    return f"must be an integer {allowed}, got {value}"


def check_int(name: str, value: int, low: int, high: int = INT_MAX) -> int:
    """``value`` if ``low <= value <= high``, else one line naming ``name`` and the range."""
    problem = out_of_range(value, low, high)
    if problem:
        raise UserError(f"{name} {problem}")
    return value


__all__ = ["INT_MAX", "SEED_MAX", "check_int", "out_of_range"]
