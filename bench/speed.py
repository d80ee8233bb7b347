"""How fast this machine's CPU is right now, as the time of a fixed pure-Python loop.

On a shared virtual machine the speed of a core can drift by a factor of two within
seconds, without any of it showing as steal time. The run takes this reading while idle,
at the start and after each section, and reports the spread beside the figures.
"""

from __future__ import annotations

import time

__all__ = ["reference_ns"]

_ITERATIONS = 100_000


def reference_ns() -> float:
    """Nanoseconds per iteration of a fixed loop; the best of three tries."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for number in range(_ITERATIONS):
            total += number
        best = min(best, (time.perf_counter() - began) / _ITERATIONS)
    return best * 1e9
