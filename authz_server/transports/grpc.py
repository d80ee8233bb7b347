"""The gRPC face of the gate: ``envoy.service.auth.v3.Authorization/Check`` and health.

A thin encoder: it finds the request's facts in Envoy's ``CheckRequest`` (the project, the
headers the gate reads, the method, and the client address from
``attributes.source.address.socket_address.address``, the peer of Envoy's downstream
connection, or with ``trusted_proxy_hops`` from X-Forwarded-For as the HTTP transport does),
asks the :class:`~authz_server.gate.Gate`, and turns the decision into a ``CheckResponse``.
It never raises: anything unexpected becomes a denial (the gate fails closed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import grpc
from google.rpc import code_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._proto.envoy.config.core.v3 import base_pb2
from .._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from .._proto.envoy.type.v3 import http_status_pb2
from ..budget import DEFAULT_RATE
from ..cache import DEFAULT_MAX_ENTRIES
from ..config import Endpoint
from ..cors import Preflight, preflight_headers
from ..facts import client_from_forwarded_for
from ..gate import (
    AUTHZ_PROJECT_HEADER,
    JWT_KID_HEADER,
    EncodedAnswers,
    Gate,
    RequestFacts,
    cors_denial_headers,
    denial_body,
    headers_to_remove,
    project_from_path,
)
from ..keystore import Snapshot
from ..metrics import CheckMetrics
from ..verifier import Allowed, Policy, Reason
from . import new_loop

__all__ = [
    "AUTHZ_PROJECT_HEADER",
    "JWT_KID_HEADER",
    "SERVICE_NAME",
    "AuthorizationService",
    "GateServer",
    "project_of",
]

SERVICE_NAME: Final = "envoy.service.auth.v3.Authorization"

_OK_STATUS: Final = status_pb2.Status(code=code_pb2.OK)
_FORBIDDEN: Final = http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden)
_NO_CONTENT: Final = http_status_pb2.HttpStatus(code=http_status_pb2.NoContent)


def _set_header(name: str, value: str) -> base_pb2.HeaderValueOption:
    """``name: value`` replacing every copy the client sent."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


_JSON_CONTENT_TYPE: Final = _set_header("content-type", "application/json")


def project_of(attributes: attribute_context_pb2.AttributeContext) -> str:
    """The route's ``project`` context extension, else the path's last segment."""
    project = attributes.context_extensions.get("project")
    if project:
        return project
    return project_from_path(attributes.request.http.path)


class AuthorizationService:
    """Answers Envoy's ``Check`` calls with the decisions of a :class:`Gate`.

    Responses go out pre-serialized: the few that repeat (allow for a kid, allow for a
    project without keys, a denial for a project with keys) are encoded once and reused.
    The constructor builds a gate of its own; :meth:`for_gate` shares one with another
    transport.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        policy: Policy,
        *,
        forward_jwt: bool = False,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        failed_check_budget: float = DEFAULT_RATE,
        metrics: CheckMetrics | None = None,
    ) -> None:
        gate = Gate(
            snapshot,
            policy,
            clock=clock,
            cache_size=cache_size,
            failed_check_budget=failed_check_budget,
            metrics=metrics,
        )
        self._serve(gate, forward_jwt)

    @classmethod
    def for_gate(
        cls, gate: Gate, *, forward_jwt: bool = False, trusted_proxy_hops: int = 0
    ) -> AuthorizationService:
        """A servicer answering with ``gate``'s decisions (shared with other transports).
        ``trusted_proxy_hops``: proxies of the operator's own in front of Envoy; with any,
        the client address is taken from X-Forwarded-For as over HTTP, since the
        CheckRequest's source is then the nearest of those proxies."""
        if trusted_proxy_hops < 0:
            raise ValueError("trusted_proxy_hops must be 0 or more")
        service = cls.__new__(cls)
        service._serve(gate, forward_jwt, trusted_proxy_hops)
        return service

    def _serve(self, gate: Gate, forward_jwt: bool, trusted_proxy_hops: int = 0) -> None:
        self.gate = gate
        self._trusted_proxy_hops = trusted_proxy_hops
        self.metrics = gate.metrics
        self.verifier = gate.verifier
        self._decide = gate.decide
        self._remove_on_open = headers_to_remove(None, forward_jwt=forward_jwt)
        self._remove_on_allow = headers_to_remove("", forward_jwt=forward_jwt)
        self._answers = EncodedAnswers(self._encode_allowed, self._encode_denied)
        self._allowed = self._answers.allowed
        self._denied = self._answers.denied

    def check(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        """The decoded response (for callers in this process and tests)."""
        return external_auth_pb2.CheckResponse.FromString(self.check_serialized(request))

    def check_serialized(
        self, request: external_auth_pb2.CheckRequest, context: object = None
    ) -> bytes:
        """The gRPC handler: never raises, always answers with an encoded CheckResponse."""
        project = ""
        try:
            attributes = request.attributes
            http = attributes.request.http
            headers = http.headers
            project = project_of(attributes)
            origin = headers.get("origin")
            method = http.method
            # The Access-Control-Request-* headers only matter to a preflight (OPTIONS):
            # not looked up for the other requests, the hot path.
            preflight = method == "OPTIONS"
            decision = self._decide(
                RequestFacts(
                    project,
                    headers.get("authorization"),
                    http.id,
                    method,
                    origin,
                    (
                        client_from_forwarded_for(
                            headers.get("x-forwarded-for"), self._trusted_proxy_hops
                        )
                        if self._trusted_proxy_hops
                        else attributes.source.address.socket_address.address or None
                    ),
                    headers.get("access-control-request-method") if preflight else None,
                    headers.get("access-control-request-headers") if preflight else None,
                )
            )
            if isinstance(decision, Allowed):
                if decision.headers or decision.removed:  # a project's claim headers
                    return self._encode_allowed(
                        project, decision.kid, decision.headers, decision.removed
                    )
                return self._allowed(project, decision.kid)
            if isinstance(decision, Preflight):
                return _encode_preflight(decision.origin)
            if self.gate.cors_denials and (cors := cors_denial_headers(origin)):
                # Per origin, so never kept: origins are the client's to choose.
                return self._encode_denied(decision.reason, project, cors)
            return self._denied(decision.reason, project)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything; message not logged
            return self._denied(self.gate.fail(project, exc).reason, project)

    def _encode_allowed(
        self,
        project: str,
        kid: str | None,
        extra: tuple[tuple[str, str], ...] = (),
        removed: tuple[str, ...] = (),
    ) -> bytes:
        """The upstream learns the project the gate decided on, and the key that signed;
        ``kid`` is None for a project without keys. ``extra`` headers (a project's claim
        headers) replace client copies; ``removed`` are removed too."""
        headers = [_set_header(AUTHZ_PROJECT_HEADER, project)]
        if kid is not None:
            headers.append(_set_header(JWT_KID_HEADER, kid))
        headers += [_set_header(name, value) for name, value in extra]
        to_remove = self._remove_on_open if kid is None else self._remove_on_allow
        return external_auth_pb2.CheckResponse(
            status=_OK_STATUS,
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=headers,
                headers_to_remove=(*to_remove, *removed),
            ),
        ).SerializeToString()

    def _encode_denied(
        self, reason: Reason, project: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=reason.message),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=_FORBIDDEN,
                headers=[_JSON_CONTENT_TYPE, *(_set_header(n, v) for n, v in extra)],
                body=denial_body(reason, project),
            ),
        ).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler[external_auth_pb2.CheckRequest, bytes]:
        """``envoy.service.auth.v3.Authorization/Check`` for a ``grpc.server``."""
        check = grpc.unary_unary_rpc_method_handler(
            self.check_serialized,
            request_deserializer=external_auth_pb2.CheckRequest.FromString,
            response_serializer=_already_encoded,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Check": check})


def _encode_preflight(origin: str) -> bytes:
    """The gate's own answer to a CORS preflight: Envoy's denied path is the one that
    answers the client without going upstream, with any status (204) and headers. Not
    kept: origins are the client's to choose, and browsers cache the answer."""
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message="CORS preflight"),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=_NO_CONTENT,
            headers=[_set_header(name, value) for name, value in preflight_headers(origin)],
        ),
    ).SerializeToString()


def _already_encoded(response: bytes) -> bytes:
    return response


_T = TypeVar("_T")

# gRPC channel arguments of the server. gRPC has no per-call deadline for receiving a
# request: a stalled call lives as long as its connection, so the connection's life is
# what these bound.
_SERVER_OPTIONS: Final = (
    # No SO_REUSEPORT (gRPC's default on Linux): a second server started by mistake on the
    # same port must fail, not silently take half of the connections.
    ("grpc.so_reuseport", 0),
    # Calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
    # a stalled call holds about 26 KiB, so one connection holds at most ~6.5 MiB. Envoy
    # opens another connection when it needs more (measured with a limit of 4).
    ("grpc.max_concurrent_streams", 256),
    # A quiet connection is pinged every minute and closed, with its calls, when the ping
    # goes unanswered for 20 s: a vanished client leaves nothing behind.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # A connection without calls for 5 minutes is closed (GOAWAY; clients reconnect).
    ("grpc.max_connection_idle_ms", 300_000),
    # Every connection is renewed after about 5 minutes (GOAWAY, after which its calls have
    # 30 s to finish): the longest a call that never completes can hold anything.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
    # A connection must complete the HTTP/2 preface and SETTINGS within 10 s.
    ("grpc.server_handshake_timeout_ms", 10_000),
)


def _check_handler(
    service: AuthorizationService,
) -> grpc.GenericRpcHandler[external_auth_pb2.CheckRequest, bytes]:
    """``Check`` as a coroutine for the asyncio server."""

    async def check(request: external_auth_pb2.CheckRequest, context: object) -> bytes:
        # Pure, fast and never raises: it runs right on the loop, with no thread hop. (A
        # plain function would go to grpc.aio's thread pool: measured 0.57 to 0.84 of the
        # calls per second at 1.6 times the CPU per call.)
        return service.check_serialized(request)

    method = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=external_auth_pb2.CheckRequest.FromString,
        response_serializer=_already_encoded,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Check": method})


class GateServer:
    """The Check, health and reflection services on one address, behind a blocking API.

    The server is gRPC's asyncio server, run on an event loop in a thread of its own. A
    call waiting for its request costs a coroutine, not a thread: clients that open calls
    and never finish them (HTTP/2 streams with no DATA, or half a message) cannot take
    what other calls need, as they took every worker thread of the thread-pool server
    this replaced. ``threads`` is accepted for compatibility and ignored (deprecated).
    """

    def __init__(
        self,
        service: AuthorizationService,
        listen: str,
        *,
        threads: int | None = None,
    ) -> None:
        del threads  # deprecated: no call takes a thread any more
        self.listen = listen
        # The asyncio health servicer (``health.aio`` is public; mypy sees no re-export).
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_lock = threading.Lock()
        self._draining = False
        self._stopped = False
        self._terminated = threading.Event()
        self._loop = new_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-server", daemon=True
        )
        self._loop_thread.start()
        try:
            self._server, self.port = self._run(self._bind(service, listen))
        except BaseException:
            self._close_loop()
            raise

    async def _bind(self, service: AuthorizationService, listen: str) -> tuple[aio.Server, int]:
        server = aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((_check_handler(service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            await server.stop(None)
            raise OSError(f"cannot listen on {listen}") from exc
        return server, port

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the server's loop; its result, once it has one."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    @property
    def address(self) -> str:
        """The listen address with the port actually bound (useful with port 0)."""
        return str(Endpoint(Endpoint.parse(self.listen).host, self.port))

    def start(self, *, serving: bool = True) -> None:
        """Start answering; health says SERVING only when ``serving`` (else NOT_SERVING
        until :meth:`set_serving`)."""
        self.set_serving(serving)
        self._run(self._server.start())

    def set_serving(self, serving: bool) -> bool:
        """Health SERVING or NOT_SERVING; once draining, only NOT_SERVING (False when
        SERVING was refused for that reason)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with self._health_lock:
            if serving and self._draining:
                return False  # e.g. the first key load completing after a stop signal
            if not self._stopped:  # a stopped server answers nothing, health included
                self._run(self._set_health(status))
        return True

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    @property
    def draining(self) -> bool:
        """True once :meth:`begin_drain` (or :meth:`stop`) was called."""
        return self._draining

    def begin_drain(self) -> None:
        """Health NOT_SERVING for good, while Check keeps answering: health-checking
        clients (Envoy, Kubernetes) move their calls elsewhere before :meth:`stop`."""
        with self._health_lock:
            self._draining = True
        self.set_serving(False)

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, let the ones in flight finish within ``grace``."""
        self.begin_drain()
        with self._health_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._run(self._server.stop(grace))
        finally:
            self._close_loop()
            self._terminated.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if ``timeout`` came first (as gRPC's
        ``wait_for_termination``)."""
        return not self._terminated.wait(timeout)
