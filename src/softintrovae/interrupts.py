"""What Ctrl-C (SIGINT) and SIGTERM do, for every command.

Outside the training loop both raise :class:`KeyboardInterrupt` (:func:`interrupts_raise`), so a
command stops where it is, its cleanups run (locks released, temporary files removed, nothing
recorded as done) and the command line exits with 130 and one line. Inside the training loop
(:func:`stop_after_step`) the first signal lets the current step finish and a checkpoint be saved;
a second one raises at once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _handling(handler: Callable) -> Iterator[None]:
    previous = {}
    try:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise(signum, frame):
    raise KeyboardInterrupt


def interrupts_raise():
    """SIGTERM raises :class:`KeyboardInterrupt` as SIGINT does: a scheduler's stop is a Ctrl-C."""
    return _handling(_raise)


def stop_after_step(flag: dict[str, bool]):
    """First SIGINT/SIGTERM sets ``flag["stop"]`` (the loop stops after the current step); a second one
    raises :class:`KeyboardInterrupt`."""

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    return _handling(handler)


__all__ = ["SIGNALS", "interrupts_raise", "stop_after_step"]
