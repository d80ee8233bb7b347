"""A per-project budget for failed signature checks, so that no project's flood starves others.

Checking a signature is the one costly step of a decision (42 us for RSA-2048, 1.1 ms for
RSA-8192 with a 32-bit exponent, measured here). Tokens that fail it are never cached, so a
client that sends bad signatures to one project could make the service spend all of its
time on them, and every other project's requests would wait. Each project therefore gets a
token bucket of signature-checking time: failed checks drain it by the time they took;
while it is empty, that project's tokens that would need a check are denied at once
(``Reason.THROTTLED``) until the bucket refills. Successful checks cost nothing here: they
are cached, and a customer minting a fresh token per request is never throttled for it.
Tokens already verified and cached keep passing, throttled or not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["BURST_SECONDS", "DEFAULT_RATE", "FailedCheckBudget"]

# Seconds of failed signature checks per second, per project: a tenth of a core, about
# 2,400 bad RSA-2048 tokens a second, or 90 bad RSA-8192 ones.
DEFAULT_RATE: Final = 0.1
# A project may spend this many seconds' worth of its rate at once (0.25 s at the default).
BURST_SECONDS: Final = 2.5


class FailedCheckBudget:
    """Per project, how much signature-checking time failed checks may still take."""

    def __init__(
        self,
        *,
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst is None:
            burst = rate * BURST_SECONDS
        if not (rate > 0 and burst > 0):
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        # project -> (seconds left, when that was computed). Only projects with keys get an
        # entry (only they check signatures), so the table is bounded by the keys directory.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.throttled = 0  # checks refused for lack of budget, for metrics

    def allows(self, project: str) -> bool:
        """Whether ``project`` may have a signature checked now."""
        bucket = self._buckets.get(project)
        if bucket is None:
            return True
        left, then = bucket
        if left + (self._clock() - then) * self.rate > 0:
            return True
        self.throttled += 1
        return False

    def charge(self, project: str, seconds: float) -> None:
        """A signature check of ``project`` failed after ``seconds``."""
        now = self._clock()
        with self._lock:
            left, then = self._buckets.get(project, (self.burst, now))
            left = min(self.burst, left + (now - then) * self.rate) - seconds
            self._buckets[project] = (left, now)
