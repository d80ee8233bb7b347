"""The HTTP face of the gate: Envoy's HTTP ext_authz (``http_service``).

Envoy sends each request's original method and path (with an empty ``path_prefix``) and
the headers its ``authorization_request.allowed_headers`` lets through. The answer is 200
with ``x-jwt-kid`` and ``x-authz-project`` (for ``allowed_upstream_headers``) and
``x-envoy-auth-headers-to-remove`` naming what the upstream must not see; or 403 with the
contract's JSON body. HTTP mode has no ``context_extensions``: the project is always the
path's last segment.

The client address is the last ``X-Forwarded-For`` entry, the one Envoy appends with
``use_remote_address: true`` (or the entry ``trusted_proxy_hops`` further left, for
proxies of the operator's own in front of Envoy): see
:func:`~authz_server.facts.client_from_forwarded_for`. No other header names it.

The server is a raw :class:`asyncio.Protocol` over httptools (on uvloop when it is
installed), measured the fastest way to serve this in Python (issue 11). Each request is
decided as soon as it is complete, in the callback that completed it, so pipelined
requests are answered in order. Nothing a client sends can stop other connections: a
request must be complete within ``request_timeout`` seconds of its first byte (or of the
connection), heads are capped at ``MAX_HEAD_BYTES``, a malformed request is answered 400
and its connection closed, and a connection left idle for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Final, cast

import httptools

from ..config import Endpoint
from ..cors import Preflight, preflight_headers
from ..facts import RequestFacts, client_from_forwarded_for
from ..gate import (
    AUTHZ_PROJECT_HEADER,
    JWT_KID_HEADER,
    EncodedAnswers,
    Gate,
    cors_denial_headers,
    denial_body,
    headers_to_remove,
    project_from_path,
)
from ..verifier import Allowed, Reason
from . import new_loop

__all__ = ["MAX_HEAD_BYTES", "HttpGateServer"]

log = logging.getLogger("authz_server.http")

# The request line and headers together; Envoy's own default limit is 60 KiB, but what it
# sends here (a path and a few allowed headers) is far smaller.
MAX_HEAD_BYTES: Final = 16 * 1024
# Envoy closes its idle connections first (the rendered cluster's idle_timeout is shorter),
# so a request never races this server closing the connection it was sent on.
IDLE_TIMEOUT_S: Final = 300.0
REQUEST_TIMEOUT_S: Final = 10.0


def _response(status: str, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_BAD_REQUEST: Final = _response("400 Bad Request", [], b"", close=True)
_HEAD_TOO_LARGE: Final = _response("431 Request Header Fields Too Large", [], b"", close=True)


class _Head(Exception):
    """Raised out of a parser callback: the request's head went past ``MAX_HEAD_BYTES``."""


class _Encoder:
    """Decisions as HTTP responses, the ones that repeat encoded once (as gRPC's)."""

    def __init__(self, gate: Gate, *, forward_jwt: bool) -> None:
        self.gate = gate
        self._remove_on_open = ", ".join(headers_to_remove(None, forward_jwt=forward_jwt))
        self._remove_on_allow = ", ".join(headers_to_remove("", forward_jwt=forward_jwt))
        answers = EncodedAnswers(self._encode_allowed, self._encode_denied)
        self._allowed = answers.allowed
        self._denied = answers.denied

    def answer(self, facts: RequestFacts) -> bytes:
        """The encoded response (keep-alive) to one request; never raises."""
        project = facts.project
        try:
            decision = self.gate.decide(facts)
            if isinstance(decision, Allowed):
                if decision.headers or decision.removed:  # a project's claim headers
                    return self._encode_allowed(
                        project, decision.kid, decision.headers, decision.removed
                    )
                return self._allowed(project, decision.kid)
            if isinstance(decision, Preflight):
                # Any status but 200 is answered to the client as it is, headers included
                # (those of allowed_client_headers); the request goes no further.
                headers = list(preflight_headers(decision.origin))
                return _response("204 No Content", headers, b"", close=False)
            if self.gate.cors_denials and (cors := cors_denial_headers(facts.origin)):
                # Per origin, so never kept: origins are the client's to choose.
                return self._encode_denied(decision.reason, project, cors)
            return self._denied(decision.reason, project)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything; message not logged
            return self._denied(self.gate.fail(project, exc, facts.request_id).reason, project)

    def _encode_allowed(
        self,
        project: str,
        kid: str | None,
        extra: tuple[tuple[str, str], ...] = (),
        removed: tuple[str, ...] = (),
    ) -> bytes:
        """``extra`` (a project's claim headers, ``x-jwt-*``) reach the upstream through
        the rendered ``allowed_upstream_headers``, which replace client copies."""
        headers = [(AUTHZ_PROJECT_HEADER, project)]
        if kid is not None:
            headers.append((JWT_KID_HEADER, kid))
        headers += extra
        to_remove = self._remove_on_open if kid is None else self._remove_on_allow
        if removed:
            to_remove = ", ".join((to_remove, *removed))
        headers.append(("x-envoy-auth-headers-to-remove", to_remove))
        return _response("200 OK", headers, b"", close=False)

    def _encode_denied(
        self, reason: Reason, project: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        body = denial_body(reason, project).encode()
        headers = [("content-type", "application/json"), *extra]
        return _response("403 Forbidden", headers, body, close=False)


def _without_body(response: bytes) -> bytes:
    """A response to HEAD: the same head (its content-length included), no body."""
    return response[: response.index(b"\r\n\r\n") + 4]


def _closing(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    return head + b"\r\nconnection: close\r\n\r\n" + body


def _joined(previous: str | None, value: bytes) -> str:
    text = value.decode("latin-1")
    return text if previous is None else f"{previous},{text}"


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and writes their answers in order."""

    def __init__(self, server: _Listener) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._authorization: str | None = None
        self._request_id: str | None = None
        self._origin: str | None = None
        self._forwarded_for: str | None = None
        self._cors_method: str | None = None
        self._cors_headers: str | None = None
        self._head_bytes = 0
        self._head_buffered = 0
        self._completed = 0
        self._in_head = False
        # The time the current request started (its first byte, or the connection's
        # opening for the first one); None while idle between requests.
        self._request_started: float | None = self._loop.time()
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not derive from asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._schedule_check()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            completed = self._completed
            self._parser.feed_data(data)
            if self._in_head:
                # httptools keeps a header's partial bytes to itself: a chunk that ends
                # inside a head, and completed no request before it, counts in full.
                self._head_buffered = (
                    self._head_buffered + len(data) if self._completed == completed else 0
                )
                if self._head_buffered > MAX_HEAD_BYTES:
                    raise _Head
        except _Head:
            self._refuse(_HEAD_TOO_LARGE)
        except httptools.HttpParserCallbackError as exc:
            self._refuse(_HEAD_TOO_LARGE if isinstance(exc.__context__, _Head) else _BAD_REQUEST)
        except httptools.HttpParserUpgrade:
            # Answered as any request (Envoy forwards no Upgrade here); what would follow
            # is another protocol, so the connection ends.
            self._close()
        except httptools.HttpParserError:
            self._refuse(_BAD_REQUEST)
        except Exception as exc:  # noqa: BLE001 - a connection's fault never reaches the loop
            # The type only: a message could quote what the client sent (a token).
            log.error("unexpected %s on an HTTP connection; closed", type(exc).__name__)
            self._refuse(_BAD_REQUEST)

    def pause_writing(self) -> None:
        # A client that sends requests and never reads the answers: stop reading it
        # rather than buffer answers without end.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._authorization = None
        self._request_id = None
        self._origin = None
        self._forwarded_for = None
        self._cors_method = None
        self._cors_headers = None
        self._in_head = True
        self._head_bytes = 0
        self._head_buffered = 0
        if self._request_started is None:
            self._request_started = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        lowered = name.lower()
        if lowered == b"authorization":
            # A repeated header is refused by Envoy; taking the first one here is as strict.
            if self._authorization is None:
                self._authorization = value.decode("latin-1")
        elif lowered == b"x-request-id":
            self._request_id = value.decode("latin-1")
        # Repeats of these are joined as Envoy joins them (RFC 9110 section 5.3): an origin
        # list then matches nothing, and Envoy's own X-Forwarded-For entry stays the last.
        elif lowered == b"origin":
            origin = value.decode("latin-1")  # inline: on most requests, once per request
            self._origin = origin if self._origin is None else f"{self._origin},{origin}"
        elif lowered == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
            previous = self._forwarded_for
            self._forwarded_for = forwarded if previous is None else f"{previous},{forwarded}"
        elif lowered == b"access-control-request-method":
            self._cors_method = _joined(self._cors_method, value)
        elif lowered == b"access-control-request-headers":
            self._cors_headers = _joined(self._cors_headers, value)

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_message_complete(self) -> None:
        assert self._transport is not None
        server = self._server
        method = self._parser.get_method()
        answer = server.encoder.answer(
            RequestFacts(
                project_from_path(self._url.decode("latin-1")),
                self._authorization,
                self._request_id,
                method.decode("latin-1"),
                self._origin,
                client_from_forwarded_for(self._forwarded_for, server.trusted_proxy_hops),
                self._cors_method,
                self._cors_headers,
            )
        )
        if method == b"HEAD":
            answer = _without_body(answer)
        self._completed += 1
        self._request_started = None
        self._idle_since = self._loop.time()
        if self._parser.should_keep_alive() and not self._server.stopping:
            self._transport.write(answer)
        else:
            self._transport.write(_closing(answer))
            self._close()

    # -- helpers ------------------------------------------------------------------------
    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Head

    def _refuse(self, response: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(response)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()  # after what was written is sent

    def close(self) -> None:
        """Close once what was written is sent (the server is stopping)."""
        self._close()

    def abort(self) -> None:
        """Close now, whatever is unsent (the server's grace is over)."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    @property
    def idle(self) -> bool:
        return self._request_started is None

    def _schedule_check(self) -> None:
        # One timer per connection that looks at timestamps, instead of a timer moved on
        # every request: a request's deadline is found at most half a timeout late.
        delay = min(self._server.request_timeout, self._server.idle_timeout) / 2
        self._timer = self._loop.call_later(delay, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._timer = None
        if self._closing or self._transport is None:
            return
        now = self._loop.time()
        started = self._request_started
        if started is not None and now - started > self._server.request_timeout:
            # A slow or stalled client (slowloris): it had its time, others need the room.
            self._transport.abort()
            return
        if started is None and now - self._idle_since > self._server.idle_timeout:
            self._close()
            return
        self._schedule_check()


class _Listener:
    """What the connections of one server share."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        encoder: _Encoder,
        request_timeout: float,
        idle_timeout: float,
        trusted_proxy_hops: int = 0,
    ) -> None:
        self.loop = loop
        self.encoder = encoder
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.trusted_proxy_hops = trusted_proxy_hops
        self.connections: set[_Connection] = set()
        self.stopping = False


class HttpGateServer:
    """Envoy's HTTP ext_authz on one address, on an event loop in a thread of its own,
    behind the same blocking API as :class:`~authz_server.transports.grpc.GateServer`.

    ``trusted_proxy_hops``: how many proxies of the operator's own stand in front of Envoy
    (as Envoy's ``xff_num_trusted_hops``); 0, the default, takes the client address from
    the entry Envoy itself appended to ``X-Forwarded-For``."""

    def __init__(
        self,
        gate: Gate,
        listen: str,
        *,
        forward_jwt: bool = False,
        request_timeout: float = REQUEST_TIMEOUT_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
        trusted_proxy_hops: int = 0,
    ) -> None:
        if trusted_proxy_hops < 0:
            raise ValueError("trusted_proxy_hops must be 0 or more")
        self.listen = listen
        endpoint = Endpoint.parse(listen)
        self._loop = new_loop()
        self._shared = _Listener(
            self._loop,
            _Encoder(gate, forward_jwt=forward_jwt),
            request_timeout,
            idle_timeout,
            trusted_proxy_hops,
        )
        self._terminated = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="http-server", daemon=True
        )
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                self._bind(endpoint), self._loop
            ).result()
        except BaseException:
            self._close_loop()
            raise
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _bind(self, endpoint: Endpoint) -> asyncio.Server:
        return await self._loop.create_server(
            lambda: _Connection(self._shared),
            endpoint.host,
            endpoint.port,
            reuse_address=True,
            backlog=1024,
            start_serving=False,
        )

    @property
    def address(self) -> str:
        """The listen address with the port actually bound (useful with port 0)."""
        return str(Endpoint(Endpoint.parse(self.listen).host, self.port))

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.start_serving(), self._loop).result()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking connections, close the idle ones, give requests being received
        ``grace`` seconds, then close whatever is left."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(grace or 0.0), self._loop).result()
        finally:
            self._close_loop()
            self._terminated.set()

    async def _shutdown(self, grace: float) -> None:
        self._shared.stopping = True
        self._server.close()
        deadline = self._loop.time() + grace
        while True:
            for connection in list(self._shared.connections):
                if connection.idle:
                    connection.close()
            if not self._shared.connections or self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for connection in list(self._shared.connections):
            connection.abort()
        # Let the loop finish closing them (each calls connection_lost) before it stops.
        while self._shared.connections:
            await asyncio.sleep(0.005)
        await self._server.wait_closed()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if ``timeout`` came first."""
        return not self._terminated.wait(timeout)
