"""The ways Envoy asks: one module per transport, all serving one decision core.

Each transport serves on an event loop in a thread of its own, made by :func:`new_loop`.
"""

from __future__ import annotations

import asyncio

__all__ = ["new_loop"]


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop, else asyncio's.

    All the per-call work of a transport runs on its one loop thread. Measured in
    bench/RESULTS.md (2026-11-30, section i): straight to the gRPC port, uvloop served 1.16
    and 1.03 times the calls of asyncio's loop (medians of two runs); through Envoy, the
    same within the noise. The HTTP transport's raw protocol was fastest on it too.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
