"""The demo dapp of ``make run``: a page on its own origin that calls the gate with fetch().

:class:`DappPage` serves, on loopback:

- ``/``: ``dapp.html``, plain HTML and JavaScript, no build step. It calls the demo project
  through Envoy with a fresh JWT and without one, and shows both answers. ``?endpoint=``
  and ``?project=`` point it elsewhere (the browser test uses them).
- ``/token``: ``{"token": "<a fresh JWT>"}``, minted by ``mint_token`` for each request.
  A stand-in for the customer's own backend, which is where a real dapp gets its
  short-lived tokens: it is for the demo only and listens on loopback only.

Its origin (``http://127.0.0.1:<port>``) differs from Envoy's by the port, so every call the
page makes is a cross-origin one, with the preflight a browser sends before it.
"""

from __future__ import annotations

import html
import ipaddress
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import TracebackType
from typing import Any, Final

__all__ = ["DappPage"]

_PAGE: Final = "dapp.html"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class DappPage:
    """The demo page and its token endpoint on ``ThreadingHTTPServer``; a context manager.

    ``endpoint`` is the URL the project id is appended to (``http://127.0.0.1:10000/eth/``).
    """

    def __init__(
        self,
        endpoint: str,
        project: str,
        mint_token: Callable[[], str],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not _is_loopback(host):
            # /token hands out valid tokens to whoever asks: never beyond this machine.
            raise ValueError(f"the demo dapp serves tokens, so loopback only; got {host!r}")
        template = resources.files(__package__).joinpath(_PAGE).read_text(encoding="utf-8")
        self.page = (
            template.replace("%ENDPOINT%", html.escape(endpoint))
            .replace("%PROJECT%", html.escape(project))
            .encode()
        )
        self.mint_token = mint_token
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); 0 before ``start``."""
        return self._server.server_address[1] if self._server is not None else 0

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/"

    def start(self) -> DappPage:
        if self._server is not None:
            raise RuntimeError("DappPage is already started")
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dapp-page:{self.port}",
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

    def __enter__(self) -> DappPage:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dapp: DappPage) -> None:
        self.dapp = dapp
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path in ("/", "/index.html"):
            self._send(200, self.server.dapp.page, "text/html; charset=utf-8")
        elif path == "/token":
            token = json.dumps({"token": self.server.dapp.mint_token()}).encode()
            self._send(200, token, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        # Tokens expire: never from a cache. The page is tiny.
        self.send_header("cache-control", "no-store")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `make run`'s output is for its banner and the gate's log lines."""
