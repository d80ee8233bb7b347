"""The baseline of section g: the gate on the thread-pool gRPC server it used to run on.

Until the asyncio server, ``GateServer`` was ``grpc.server(ThreadPoolExecutor(16))``: each
call took a worker thread from the moment its headers arrived until it was answered, so
16 calls that never finished sending their request stopped the server. ``ThreadPoolGate``
is that server again, with the same services (Check through the service's synchronous
``handler()``, health, reflection) and the same public methods, for measuring what the
asyncio server costs or saves on the same machine in the same run.

``python -m bench.sync_server serve ...`` is ``authz-server serve ...`` (same options,
same key store, watcher and metrics, through ``running_gate``) with ``ThreadPoolGate``
in place of ``GateServer``; ``--threads`` sizes its pool, as it used to.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz_server import cli, server
from authz_server.transports.grpc import SERVICE_NAME, AuthorizationService

__all__ = ["ThreadPoolGate", "main"]


class ThreadPoolGate:
    """``GateServer``'s interface on ``grpc.server`` with a pool of ``threads`` workers."""

    def __init__(self, service: AuthorizationService, listen: str, *, threads: int = 16) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 0)]
        )
        self._server.add_generic_rpc_handlers((service.handler(),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = self._server.add_insecure_port(listen)
        self.listen = listen
        self._lock = threading.Lock()
        self._draining = False

    @property
    def address(self) -> str:
        return f"{self.listen.rpartition(':')[0]}:{self.port}"

    def start(self, *, serving: bool = True) -> None:
        self.set_serving(serving)
        self._server.start()

    def set_serving(self, serving: bool) -> bool:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with self._lock:
            if serving and self._draining:
                return False
            for name in ("", SERVICE_NAME):
                self.health.set(name, status)
        return True

    def begin_drain(self) -> None:
        with self._lock:
            self._draining = True
        self.set_serving(False)

    def stop(self, grace: float | None = 5.0) -> None:
        self.begin_drain()
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))


def main(argv: Sequence[str] | None = None) -> int:
    """``authz-server`` with the thread-pool server; ``--threads`` sizes the pool."""
    threads = 16
    arguments = list(sys.argv[1:] if argv is None else argv)
    if "--threads" in arguments:
        threads = int(arguments[arguments.index("--threads") + 1])

    def thread_pool_gate(service: AuthorizationService, listen: str, **_: object) -> ThreadPoolGate:
        return ThreadPoolGate(service, listen, threads=threads)

    server.GateServer = thread_pool_gate  # type: ignore[assignment,misc]  # running_gate's
    return cli.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
