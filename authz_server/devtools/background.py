"""A ``ThreadingHTTPServer`` on a thread of its own: the devtools' small HTTP services (the
demo JSON-RPC node, the demo dapp page) are one of these each.

A subclass says how to build its server (:meth:`BackgroundHttpServer._make_server`) and
what its thread is called; this class binds it (port 0 picks a free port), serves it in a
daemon thread, stops it, and is the context manager around both.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self

__all__ = ["BackgroundHttpServer"]


class BackgroundHttpServer:
    """Serves ``_make_server``'s server on ``host:port`` in a thread between start and stop."""

    thread_name = "http-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        raise NotImplementedError

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); 0 before ``start``."""
        return self._server.server_address[1] if self._server is not None else 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._server = self._make_server(self._address)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_name}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
