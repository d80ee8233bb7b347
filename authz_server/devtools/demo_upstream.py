"""A tiny JSON-RPC 2.0 "node" to stand behind Envoy in the demo and the end-to-end tests.

It answers ``eth_blockNumber`` (a block number that grows with every call), ``eth_chainId``
and ``net_version``, single calls and batches, with the JSON-RPC error objects for parse
errors, invalid requests and unknown methods. It remembers the headers of the latest requests
(``JsonRpcNode.requests``) so a test can see exactly what Envoy let through.

``python -m authz_server.devtools.demo_upstream --listen HOST:PORT`` runs it until SIGINT or
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from .._signals import StopSignals
from ..config import Endpoint
from .background import BackgroundHttpServer

__all__ = ["JsonRpcNode", "main"]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601

_MAX_BODY: Final = 1 << 20
_FIRST_BLOCK: Final = 0x1000000
_STATIC_RESULTS: Final = {"eth_chainId": "0x1", "net_version": "1"}

_Response = dict[str, Any]


class JsonRpcNode(BackgroundHttpServer):
    """A JSON-RPC node on ``ThreadingHTTPServer``; a context manager that starts and stops it."""

    thread_name = "json-rpc-node"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history: int = 1000) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._requests: deque[dict[str, str]] = deque(maxlen=history)
        self._block = _FIRST_BLOCK

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        return _Server(address, self)

    @property
    def requests(self) -> list[dict[str, str]]:
        """Headers of the most recent requests, oldest first, names lower-cased."""
        with self._lock:
            return list(self._requests)

    def _record(self, headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append(headers)

    def _next_block(self) -> str:
        with self._lock:
            self._block += 1
            return hex(self._block)

    def answer(self, body: bytes) -> Any:
        """The JSON-RPC reply to one HTTP body; ``None`` when nothing is owed (notifications)."""
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(None, PARSE_ERROR, "Parse error")
        if isinstance(message, list):
            if not message:
                return _error(None, INVALID_REQUEST, "Invalid Request")
            replies = [reply for call in message if (reply := self._call(call)) is not None]
            return replies or None
        return self._call(message)

    def _call(self, call: Any) -> _Response | None:
        if not isinstance(call, dict):
            return _error(None, INVALID_REQUEST, "Invalid Request")
        call_id = call.get("id")
        if (
            call.get("jsonrpc") != "2.0"
            or not isinstance(call.get("method"), str)
            or not _is_valid_id(call_id)
            or not isinstance(call.get("params", []), list | dict)
        ):
            return _error(
                call_id if _is_valid_id(call_id) else None, INVALID_REQUEST, "Invalid Request"
            )
        method: str = call["method"]
        result = self._next_block() if method == "eth_blockNumber" else _STATIC_RESULTS.get(method)
        if "id" not in call:
            return None  # a notification: no reply, whatever happened
        if result is None:
            return _error(call_id, METHOD_NOT_FOUND, "Method not found")
        return {"jsonrpc": "2.0", "id": call_id, "result": result}


def _is_valid_id(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _error(call_id: object, code: int, message: str) -> _Response:
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], node: JsonRpcNode) -> None:
        self.node = node
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets its keep-alive connection (Envoy restarting, or closing an
        # idle one) is ordinary for a node, not worth socketserver's traceback per connection.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as a real node does; every reply below carries a Content-Length.
    protocol_version = "HTTP/1.1"
    # A reply goes out as two writes (headers, then body): with Nagle's algorithm the
    # body waited for the peer's delayed ACK of the headers, 40 ms on every request.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.server.node._record(self._header_dict())
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            self._send(411, b"")
            return
        if int(length) > _MAX_BODY:
            self.close_connection = True
            self._send(413, b"")
            return
        reply = self.server.node.answer(self.rfile.read(int(length)))
        if reply is None:
            self._send(204, b"")
        else:
            self._send(200, json.dumps(reply).encode(), "application/json")

    def do_GET(self) -> None:
        self.server.node._record(self._header_dict())
        self._send(405, b"", extra={"allow": "POST"})

    def _header_dict(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("content-type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a demo node that logs every request drowns the output it sits behind."""


def _parse_listen(value: str) -> tuple[str, int]:
    try:
        endpoint = Endpoint.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return endpoint.host, endpoint.port


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m authz_server.devtools.demo_upstream",
        description="A demo JSON-RPC node (eth_blockNumber, eth_chainId, net_version).",
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 8545),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8545)",
    )
    host, port = parser.parse_args(argv).listen
    with StopSignals() as stop, JsonRpcNode(host, port) as node:
        sys.stdout.write(f"demo JSON-RPC node listening on {host}:{node.port}\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
