"""The gRPC face of the gate: ``envoy.service.auth.v3.Authorization/Check`` and health.

A thin adapter: it finds the project and the token in Envoy's ``CheckRequest``, asks
:func:`~authz_server.verifier.decide`, and turns the decision into a ``CheckResponse``.
It never raises: anything unexpected becomes a denial (the gate fails closed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent import futures
from time import perf_counter
from typing import Final

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ._proto.envoy.config.core.v3 import base_pb2
from ._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from ._proto.envoy.type.v3 import http_status_pb2
from .cache import DEFAULT_MAX_ENTRIES, CachingVerifier
from .keystore import Snapshot
from .logtext import printable
from .metrics import CheckMetrics
from .verifier import Allowed, Decision, Denied, Policy, Reason, bearer_token

__all__ = [
    "JWT_KID_HEADER",
    "SERVICE_NAME",
    "AuthorizationService",
    "GateServer",
    "deny_body",
    "project_of",
]

SERVICE_NAME: Final = "envoy.service.auth.v3.Authorization"
JWT_KID_HEADER: Final = "x-jwt-kid"
JSON_RPC_UNAUTHORIZED: Final = -32013

log = logging.getLogger("authz_server.service")

_OK_STATUS: Final = status_pb2.Status(code=code_pb2.OK)
_FORBIDDEN: Final = http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden)
_JSON_CONTENT_TYPE: Final = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
)
# A project without keys passes untouched, except that a client may not forge the
# header upstream services trust to say which key signed the request.
_OPEN_PROJECT_RESPONSE: Final = external_auth_pb2.CheckResponse(
    status=_OK_STATUS,
    ok_response=external_auth_pb2.OkHttpResponse(headers_to_remove=[JWT_KID_HEADER]),
).SerializeToString()
# Before the first complete scan of the keys directory, every request is denied.
_NOT_READY: Final = Denied(Reason.NOT_READY)
# Cap on each table of pre-encoded responses (a safety net; real sizes are far lower).
_MAX_ENCODED: Final = 100_000


def project_of(attributes: attribute_context_pb2.AttributeContext) -> str:
    """The route's ``project`` context extension, else the path's last segment."""
    project = attributes.context_extensions.get("project")
    if project:
        return project
    path = attributes.request.http.path.partition("?")[0]
    return path.rstrip("/").rpartition("/")[2]


def deny_body(reason: Reason, project: str) -> str:
    """The JSON-RPC style error body of a denial."""
    return json.dumps(
        {"code": JSON_RPC_UNAUTHORIZED, "message": reason.message, "project": project}
    )


class AuthorizationService:
    """Answers Envoy's ``Check`` calls from the current key snapshot.

    Responses go out pre-serialized: the few that repeat (allow for a kid, allow for a
    project without keys, a denial for a project with keys) are encoded once and reused.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        policy: Policy,
        *,
        forward_jwt: bool = False,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        metrics: CheckMetrics | None = None,
    ) -> None:
        self._snapshot = snapshot
        self.metrics = metrics if metrics is not None else CheckMetrics()
        self._allowed_valid = self.metrics.allowed_valid
        self._allowed_no_jwt = self.metrics.allowed_no_jwt
        self._denied_counters = self.metrics.denied
        self._observe = self.metrics.duration.observe
        self._clock = clock
        self.verifier = CachingVerifier(policy, max_entries=cache_size)
        self._remove_on_allow = () if forward_jwt else ("authorization",)
        self._allow_bytes: dict[str, bytes] = {}
        self._deny_bytes: dict[tuple[Reason, str], bytes] = {}

    def check(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        """The decoded response (for callers in this process and tests)."""
        return external_auth_pb2.CheckResponse.FromString(self.check_serialized(request))

    def check_serialized(
        self, request: external_auth_pb2.CheckRequest, context: object = None
    ) -> bytes:
        """The gRPC handler: never raises, always answers with an encoded CheckResponse."""
        start = perf_counter()
        project = ""
        protected = False
        try:
            attributes = request.attributes
            project = project_of(attributes)
            token = bearer_token(attributes.request.http.headers.get("authorization"))
            snapshot = self._snapshot()
            keys = snapshot.keys_for(project)
            protected = keys is not None
            decision: Decision = (
                self.verifier.decide(project, token, keys, self._clock())
                if snapshot.complete
                else _NOT_READY
            )
            if isinstance(decision, Allowed):
                kid = decision.kid
                if kid is None:
                    response = _OPEN_PROJECT_RESPONSE
                    self._allowed_no_jwt.inc()
                else:
                    response = self._allowed(kid)
                    self._allowed_valid.inc()
                self._observe(perf_counter() - start)
                return response
        except Exception as exc:  # noqa: BLE001 - fail closed on anything; message not logged
            log.error(
                "internal error on project %s (%s); denied\n%s",
                printable(project),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            decision = Denied(Reason.INTERNAL_ERROR)
        assert isinstance(decision, Denied)
        reason = decision.reason
        self._denied_counters[reason].inc()
        shown_project = printable(project)
        kid = None if decision.kid is None else printable(decision.kid)
        request_id = printable(request.attributes.request.http.id) or None
        log.info(
            "denied project=%s reason=%s kid=%s request_id=%s",
            shown_project,
            reason.code,
            kid or "-",
            request_id or "-",
            extra={
                "event": "denied",
                "project": shown_project,
                "reason": reason.code,
                "kid": kid,
                "request_id": request_id,
            },
        )
        response = self._denied(reason, project, cacheable=protected)
        self._observe(perf_counter() - start)
        return response

    def _allowed(self, kid: str | None) -> bytes:
        if kid is None:
            return _OPEN_PROJECT_RESPONSE
        encoded = self._allow_bytes.get(kid)
        if encoded is None:
            kid_header = base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=JWT_KID_HEADER, value=kid),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
            encoded = external_auth_pb2.CheckResponse(
                status=_OK_STATUS,
                ok_response=external_auth_pb2.OkHttpResponse(
                    headers=[kid_header], headers_to_remove=self._remove_on_allow
                ),
            ).SerializeToString()
            # Bounded by the registered kids: only a verified token reaches here.
            if len(self._allow_bytes) < _MAX_ENCODED:
                self._allow_bytes[kid] = encoded
        return encoded

    def _denied(self, reason: Reason, project: str, *, cacheable: bool) -> bytes:
        encoded = self._deny_bytes.get((reason, project))
        if encoded is None:
            encoded = external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=reason.message),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=_FORBIDDEN,
                    headers=[_JSON_CONTENT_TYPE],
                    body=deny_body(reason, project),
                ),
            ).SerializeToString()
            # Only projects with keys: their number is bounded, a client's paths are not.
            if cacheable and len(self._deny_bytes) < _MAX_ENCODED:
                self._deny_bytes[(reason, project)] = encoded
        return encoded

    def handler(self) -> grpc.GenericRpcHandler[external_auth_pb2.CheckRequest, bytes]:
        """``envoy.service.auth.v3.Authorization/Check`` for a ``grpc.server``."""
        check = grpc.unary_unary_rpc_method_handler(
            self.check_serialized,
            request_deserializer=external_auth_pb2.CheckRequest.FromString,
            response_serializer=_already_encoded,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Check": check})


def _already_encoded(response: bytes) -> bytes:
    return response


class GateServer:
    """A gRPC server with the Check, health and reflection services on one address."""

    def __init__(
        self,
        service: AuthorizationService,
        listen: str,
        *,
        threads: int = 16,
    ) -> None:
        # No SO_REUSEPORT (gRPC's default on Linux): a second server started by mistake
        # on the same port must fail, not silently take half of the connections.
        options = [("grpc.so_reuseport", 0)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
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
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        self.listen = listen
        self._health_lock = threading.Lock()
        self._draining = False

    @property
    def address(self) -> str:
        """The listen address with the port actually bound (useful with port 0)."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self, *, serving: bool = True) -> None:
        """Start answering; health says SERVING only when ``serving`` (else NOT_SERVING
        until :meth:`set_serving`)."""
        self.set_serving(serving)
        self._server.start()

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
            for name in ("", SERVICE_NAME):
                self.health.set(name, status)
        return True

    def begin_drain(self) -> None:
        """Health NOT_SERVING for good, while Check keeps answering: health-checking
        clients (Envoy, Kubernetes) move their calls elsewhere before :meth:`stop`."""
        with self._health_lock:
            self._draining = True
        self.set_serving(False)

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, let the ones in flight finish within ``grace``."""
        self.begin_drain()
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))
