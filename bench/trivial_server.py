"""The baseline for section a: the gate's gRPC stack with a Check that always says OK.

Same ``GateServer`` (gRPC's asyncio server on a loop thread, health service), same
request deserializer and pass-through response serializer as the real service; only the
decision is gone: ``Check`` returns one pre-encoded OK ``CheckResponse``. The ratio of
the real service's throughput to this one is therefore the cost of deciding.

``python -m bench.trivial_server --listen 127.0.0.1:0 [--workers N] [--thread-pool]``
logs ``serving on HOST:PORT`` once per serving process, then runs until SIGTERM or SIGINT.
With ``--workers N`` it runs N such processes, each on a port of its own, the way
``authz-server serve --workers N`` does, so that the two compare at the same process count.
``--thread-pool`` serves it on the thread-pool server the gate used before
(``bench.sync_server.ThreadPoolGate``, 16 threads): the baseline of section g.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Final

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.keystore import Snapshot
from authz_server.transports.grpc import AuthorizationService, GateServer
from authz_server.verifier import Policy

from .sync_server import ThreadPoolGate

__all__ = ["TrivialService", "main"]

_OK: Final = external_auth_pb2.CheckResponse(
    ok_response=external_auth_pb2.OkHttpResponse(headers_to_remove=["authorization"])
).SerializeToString()


class TrivialService(AuthorizationService):
    """``AuthorizationService`` whose Check skips every step and allows."""

    def __init__(self) -> None:
        empty = Snapshot()
        super().__init__(lambda: empty, Policy())

    def check_serialized(
        self, request: external_auth_pb2.CheckRequest, context: object = None
    ) -> bytes:
        return _OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trivial_server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--thread-pool", action="store_true", help="the thread-pool server (16 threads)"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _n, _f: stop.set())

    if args.workers > 1:
        command = [sys.executable, "-m", "bench.trivial_server", "--listen", args.listen]
        if args.thread_pool:
            command.append("--thread-pool")
        children = [subprocess.Popen(command) for _ in range(args.workers)]
        while not stop.wait(0.2):
            if any(child.poll() is not None for child in children):
                break
        for child in children:
            child.terminate()
        for child in children:
            child.wait()
        return 0

    server: GateServer | ThreadPoolGate = (
        ThreadPoolGate(TrivialService(), args.listen)
        if args.thread_pool
        else GateServer(TrivialService(), args.listen)
    )
    server.start()
    print(f"serving on {server.address}: trivial always-OK servicer", file=sys.stderr, flush=True)
    while not stop.wait(0.2):
        pass
    server.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
