"""A client that polls Check about once a millisecond and notes when the answer flips.

Used by d (a key deleted: until denied) and e (a key added among 50,000: until allowed).
It keeps a few connections per serving address and goes round them, so that with
several worker processes a change counts as in force only once every connection, and
so every process behind them, gives the new answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Final

import grpc

from .checks import CHECK_METHOD, decode_verdict

__all__ = ["Prober"]

_PERIOD_S: Final = 0.001


class Prober:
    def __init__(self, addresses: Sequence[str], *, per_address: int = 2) -> None:
        self._channels = [
            grpc.insecure_channel(address, options=[("bench.probe", number)])
            for number in range(per_address)
            for address in addresses
        ]
        self._calls = [channel.unary_unary(CHECK_METHOD, None, None) for channel in self._channels]
        self.sent = 0

    def allowed(self, number: int, request: bytes) -> bool:
        self.sent += 1
        answer: bytes = self._calls[number](request, timeout=5)
        return decode_verdict(answer) == "allow"

    def wait_for(
        self, request: bytes, *, allowed: bool, since: float, timeout: float
    ) -> tuple[float, float]:
        """Seconds from ``since`` to the first answer ``allowed`` on any connection, and
        until every connection has given it; NaN for what did not happen in ``timeout``."""
        first: list[float | None] = [None] * len(self._calls)
        number = 0
        next_at = time.perf_counter()
        while time.perf_counter() - since < timeout:
            if first[number] is None and self.allowed(number, request) == allowed:
                first[number] = time.perf_counter() - since
            if all(value is not None for value in first):
                break
            number = (number + 1) % len(self._calls)
            next_at = _pace(next_at)
        seen = [value for value in first if value is not None]
        earliest = min(seen) if seen else math.nan
        everywhere = max(seen) if len(seen) == len(first) else math.nan
        return earliest, everywhere

    def keep_probing(self, request: bytes, seconds: float) -> list[float]:
        """Probe round the connections for ``seconds``; the latencies in milliseconds."""
        latencies = []
        number = 0
        end = time.perf_counter() + seconds
        next_at = time.perf_counter()
        while time.perf_counter() < end:
            began = time.perf_counter()
            self.allowed(number, request)
            latencies.append((time.perf_counter() - began) * 1000)
            number = (number + 1) % len(self._calls)
            next_at = _pace(next_at)
        return latencies

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _pace(next_at: float) -> float:
    """Sleep until one probe period after ``next_at``; the time the next probe is due
    (now, when the probes have fallen behind)."""
    next_at += _PERIOD_S
    pause = next_at - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
        return next_at
    return time.perf_counter()
