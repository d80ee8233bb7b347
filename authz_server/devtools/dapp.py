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
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final

from .background import BackgroundHttpServer

__all__ = ["DappPage"]

_PAGE: Final = "dapp.html"
# The names the page may be reached by (the Host header, without its port).
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class DappPage(BackgroundHttpServer):
    """The demo page and its token endpoint on ``ThreadingHTTPServer``; a context manager.

    ``endpoint`` is the URL the project id is appended to (``http://127.0.0.1:10000/eth/``).
    """

    thread_name = "dapp-page"

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
        super().__init__(host, port)
        template = resources.files(__package__).joinpath(_PAGE).read_text(encoding="utf-8")
        self.page = (
            template.replace("%ENDPOINT%", html.escape(endpoint))
            .replace("%PROJECT%", html.escape(project))
            .encode()
        )
        self.mint_token = mint_token

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        return _Server(address, self)


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
        host = (self.headers.get("host") or "").lower()
        if host.rpartition(":")[0] not in _LOOPBACK_NAMES:
            # A page of another site whose name resolves here (DNS rebinding) gets nothing,
            # and above all no token.
            self._send(
                403, b"this demo page answers only as 127.0.0.1 or localhost\n", "text/plain"
            )
        elif path in ("/", "/index.html"):
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
