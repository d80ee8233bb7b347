"""A gRPC load generator that can send a different CheckRequest on every call.

h2load sends one body for a whole run, so it cannot make every request carry a new
token. This generator can: it reads pre-serialized CheckRequests (``--requests``, each
prefixed with its 4-byte big-endian length), and ``--concurrency`` grpc.aio calls in flight
over ``--connections`` HTTP/2 connections take them in order. With ``--no-repeat`` the
measurement ends when the requests run out, so no token is ever sent twice (and none
can be answered from the service's cache).

Several ``--target`` addresses (worker processes with a port each) share the connections.
It runs in its own process and prints one JSON object: requests, seconds, rate,
latency percentiles, gRPC errors, and how many responses were each distinct answer.
Its own ceiling is whatever it reaches against the trivial servicer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc

from .checks import CHECK_METHOD

__all__ = ["main", "read_requests", "write_requests"]


def write_requests(path: Path, requests: Sequence[bytes]) -> None:
    with path.open("wb") as out:
        for request in requests:
            out.write(len(request).to_bytes(4, "big"))
            out.write(request)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        requests.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return requests


async def _run(args: argparse.Namespace, requests: list[bytes]) -> dict[str, object]:
    # A distinct channel argument per connection: channels with equal arguments share one
    # subchannel (one TCP connection), and --workers servers spread connections, not calls.
    targets = args.target.split(",")
    channels = [
        grpc.aio.insecure_channel(
            targets[number % len(targets)], options=[("bench.connection", number)]
        )
        for number in range(max(args.connections, len(targets)))
    ]
    calls = [channel.unary_unary(CHECK_METHOD, None, None) for channel in channels]
    total = len(requests)
    next_index = 0
    measuring = False
    stop = asyncio.Event()
    exhausted_at = 0.0
    latencies: list[float] = []
    answers: Counter[bytes] = Counter()
    errors: Counter[str] = Counter()

    async def worker(number: int) -> None:
        nonlocal next_index, exhausted_at
        call = calls[number % len(calls)]
        while not stop.is_set():
            index = next_index
            next_index += 1
            if index >= total:
                if args.no_repeat:
                    exhausted_at = exhausted_at or time.perf_counter()
                    stop.set()
                    return
                index %= total
            started = time.perf_counter()
            try:
                answer = await call(requests[index], timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                if measuring:
                    errors[exc.code().name] += 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - started)
                answers[answer] += 1

    workers = [asyncio.create_task(worker(n)) for n in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    measuring = True
    began = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.duration)
    ended = exhausted_at or time.perf_counter()
    measuring = False
    stop.set()
    await asyncio.gather(*workers, return_exceptions=True)
    for channel in channels:
        await channel.close(None)
    latencies.sort()
    seconds = ended - began
    done = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(done - 1, int(q * done))] * 1000 if done else float("nan")

    return {
        "requests": done,
        "seconds": seconds,
        "rate": done / seconds if seconds > 0 else 0.0,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "errors": dict(errors),
        "answers": {base64.b64encode(a).decode(): n for a, n in answers.items()},
        "exhausted": bool(exhausted_at),
        "sent": min(next_index, total) if args.no_repeat else next_index,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load")
    parser.add_argument(
        "--target", required=True, help="HOST:PORT of the Check service (comma-separated: several)"
    )
    parser.add_argument("--requests", required=True, type=Path, help="length-prefixed requests")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--no-repeat", action="store_true", help="stop when requests run out")
    args = parser.parse_args(argv)
    requests = read_requests(args.requests)
    if not requests:
        parser.error(f"no requests in {args.requests}")
    result = asyncio.run(_run(args, requests))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
