"""Stalled Check calls, held open until SIGTERM: the attack of section g4.

``python -m bench.stall --target HOST:PORT --connections 8 --calls 32`` opens that many
HTTP/2 connections (one gRPC channel each, with its own subchannel) and on each starts
``--calls`` Check calls as client-streaming calls whose request stream never yields: the
server gets the HEADERS of a Check and waits, forever, for its request message. It
prints ``holding N stalled calls`` once they are all started, and lets go on SIGTERM.

(The tests' ``raw_http2`` client does the same from plain sockets, and also sends half a
message on some calls; this one uses the gRPC library the benchmark already depends on.)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from grpc import aio

from .checks import CHECK_METHOD

__all__ = ["main"]


async def _hold(target: str, connections: int, calls: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def never() -> AsyncIterator[bytes]:
        await stop.wait()
        return
        yield b""  # an async generator that ends without a message

    channels = [
        aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    held = [
        channel.stream_unary(CHECK_METHOD)(never()) for channel in channels for _ in range(calls)
    ]
    print(f"holding {len(held)} stalled calls on {connections} connections", flush=True)
    await stop.wait()
    for call in held:
        call.cancel()
    for channel in channels:
        await channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--calls", type=int, default=32, help="stalled calls per connection")
    args = parser.parse_args(argv)
    asyncio.run(_hold(args.target, args.connections, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
