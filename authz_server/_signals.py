"""Stop on SIGTERM or SIGINT, wherever the kernel delivers them.

The kernel may hand a process-directed signal to any thread (gRPC's, the watcher's,
an HTTP server's), while Python runs signal handlers only in the main thread, and
only once that thread runs bytecode again. A main thread blocked in ``Event.wait()``
may then never wake. The handlers' C side always writes to the wakeup fd, so the
main thread blocks on that instead.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """``with StopSignals() as stop: ... stop.wait()`` returns once a stop signal came.

    Install it before announcing readiness so that an early signal still stops cleanly;
    the previous handlers and wakeup fd are restored on exit. ``received`` counts the
    signals, so that a second one can cut a drain short (``wait(count=2)``).
    """

    def __init__(self, on_signal: Callable[[str], None] | None = None) -> None:
        self.event = threading.Event()
        self.received = 0
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1  # handlers run one at a time, in the main thread
        if self._on_signal is not None:
            self._on_signal(signal.Signals(signum).name)
        self.event.set()

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        return self

    def wait(self, timeout: float | None = None, *, count: int = 1) -> bool:
        """Block until ``count`` stop signals in all have arrived (or :meth:`set` was
        called), or ``timeout`` seconds pass; True once that many came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._reached(count):
            remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if remaining <= 0:
                break
            # Returning to the interpreter is what lets the Python handler run.
            select.select([self._reader], [], [], remaining)
            with contextlib.suppress(BlockingIOError):
                self._reader.recv(256)
        return self._reached(count)

    def _reached(self, count: int) -> bool:
        return self.event.is_set() and (count <= 1 or self.received >= count)

    def set(self) -> None:
        """Stop as if a signal came (counted as one, for ``count``)."""
        self.received += 1
        self.event.set()
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._reader.close()
        self._writer.close()
