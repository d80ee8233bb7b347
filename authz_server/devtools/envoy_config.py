"""Envoy bootstrap configs for this service, built from typed Envoy API objects.

``render`` assembles a ``Bootstrap`` message out of the envoy-data-plane dataclasses and
turns it into the plain, JSON-compatible dict Envoy reads (snake_case field names, ``@type``
on every ``Any``). Building typed messages rather than writing YAML by hand means a field
name Envoy does not know fails here, in Python, not at Envoy start-up.

The shape: one listener whose HTTP connection manager runs Envoy's CORS filter (unless CORS
is off), ``ext_authz`` (gRPC, API v3, failing closed) and then the router; one route per
``ProjectRoute`` that names the project through ext_authz ``context_extensions``; a
catch-all route; an ``authz`` cluster over HTTP/2 and an ``upstream`` cluster over HTTP/1.1.

``python -m authz_server.devtools.envoy_config`` (``make envoy-config``) rewrites the checked-in
files of ``rendered_files()``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import betterproto2
import yaml

from ..config import Endpoint
from ..cors import ALLOW_HEADERS, ALLOW_METHODS, ANY_ORIGIN, MAX_AGE_S
from ..cors import cors_origins as _origins
from ..keys import is_valid_id

with warnings.catch_warnings():
    # envoy-data-plane 2.2 generates oneof checks as classmethod `model_validator(mode="after")`,
    # which pydantic >= 2.12 deprecates with a warning per class (about 120) at import time.
    # Harmless until pydantic 3; silenced here, for this import only, so that warnings stay
    # errors everywhere else.
    warnings.filterwarnings(
        "ignore",
        message="Using `@model_validator` with mode='after' on a classmethod",
        category=DeprecationWarning,
    )
    from envoy_data_plane.envoy.config.accesslog.v3 import AccessLogFilter, ExtensionFilter
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import (
        CircuitBreakers,
        CircuitBreakersThresholds,
        CircuitBreakersThresholdsRetryBudget,
        Cluster,
        ClusterDiscoveryType,
        ClusterDnsLookupFamily,
        ClusterLbPolicy,
        OutlierDetection,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        ApiVersion,
        DataSource,
        GrpcService,
        GrpcServiceEnvoyGrpc,
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
        HealthCheck,
        HealthCheckGrpcHealthCheck,
        HealthCheckHttpHealthCheck,
        Http1ProtocolOptions,
        Http2ProtocolOptions,
        HttpProtocolOptionsHeadersWithUnderscoresAction,
        HttpUri,
        RetryPolicy,
        RetryPolicyRetryHostPredicate,
        SocketAddress,
        SubstitutionFormatString,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        HttpProtocolOptions as DownstreamHttpProtocolOptions,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        EndpointHealthCheckConfig,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import Endpoint as EnvoyEndpoint
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
    from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
    from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
        AuthorizationResponse,
        CheckSettings,
        ExtAuthz,
        ExtAuthzPerRoute,
        HttpService,
    )
    from envoy_data_plane.envoy.extensions.filters.http.header_to_metadata.v3 import (
        Config as HeaderToMetadata,
    )
    from envoy_data_plane.envoy.extensions.filters.http.header_to_metadata.v3 import (
        ConfigKeyValuePair,
        ConfigRule,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpConnectionManagerPathWithEscapedSlashesAction,
        HttpFilter,
        LocalReplyConfig,
        ResponseMapper,
    )
    from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import (
        PreviousHostsPredicate,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import (
        ListStringMatcher,
        RegexMatchAndSubstitute,
        RegexMatcher,
        StringMatcher,
    )
    from envoy_data_plane.envoy.type.v3 import Percent
    from envoy_data_plane.google.protobuf import Any as AnyMessage

__all__ = [
    "COMPOSE_CONFIG",
    "COMPOSE_HTTP_CONFIG",
    "LOCAL_CONFIG",
    "LOCAL_PORTS",
    "TRANSPORTS",
    "Endpoint",
    "ProjectRoute",
    "as_yaml",
    "local_settings",
    "main",
    "render",
    "rendered_files",
]

AUTHZ_CLUSTER: Final = "authz"
# The service's own name in grpc.health.v1 (authz_server.transports.grpc.SERVICE_NAME; a test keeps
# them equal without importing gRPC here).
AUTHZ_HEALTH_SERVICE: Final = "envoy.service.auth.v3.Authorization"
# Active health checks of the authz cluster: a stopping server answers NOT_SERVING at once
# and keeps answering for its --drain-delay (5 s); Envoy needs UNHEALTHY_THRESHOLD checks
# INTERVAL apart to stop sending to it, so about 2 s: well inside the drain.
HEALTH_INTERVAL_S: Final = 1.0
HEALTH_TIMEOUT_S: Final = 1.0
HEALTH_UNHEALTHY_THRESHOLD: Final = 2
# The HTTP transport's readiness: on the metrics listener (--metrics-listen), never on the
# --http-listen port. Envoy's http_service sends the client's own path, so a /readyz answered
# there would be a path any client could ask for, and its 200 would read as "allowed".
HTTP_READY_PATH: Final = "/readyz"
# Before the cluster has seen any call (a fresh start, no traffic yet).
HEALTH_NO_TRAFFIC_INTERVAL_S: Final = 5.0
UPSTREAM_CLUSTER: Final = "upstream"
EXT_AUTHZ_FILTER: Final = "envoy.filters.http.ext_authz"
PROJECT_METADATA_FILTER: Final = "envoy.filters.http.header_to_metadata"
ROUTER_FILTER: Final = "envoy.filters.http.router"
CORS_FILTER: Final = "envoy.filters.http.cors"
PROJECT_CONTEXT_KEY: Final = "project"
# How Envoy asks the service: gRPC Check (the default), or HTTP ext_authz (``--http-listen``).
TRANSPORTS: Final = ("grpc", "http")
# HTTP ext_authz: the request headers Envoy passes to the service, and the answer's headers
# it sets on the upstream request (replacing client copies) or on a denial's response.
# The CORS ones let the service recognise and answer a preflight when no CORS filter does
# (``cors_origins=()``), as it does over gRPC.
HTTP_ALLOWED_HEADERS: Final = (
    "authorization",
    "x-request-id",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
    # The client address for project IP allowlists: the last entry is the one Envoy
    # appends (use_remote_address), never the client's own.
    "x-forwarded-for",
)
HTTP_UPSTREAM_HEADERS: Final = ("x-jwt-kid", "x-authz-project")
# Projects' claims_to_headers (settings.toml) are all named x-jwt-<name>.
HTTP_UPSTREAM_PREFIX: Final = "x-jwt-"
HTTP_CLIENT_HEADERS: Final = (
    "content-type",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "vary",
)
# Envoy closes its idle HTTP/1.1 connections to the service well before the service would
# (authz_server.transports.http.IDLE_TIMEOUT_S, 300 s): no request is ever sent on a
# connection the service is closing at that instant.
HTTP_IDLE_TIMEOUT_S: Final = 60.0

# ext_authz sends its local reply with this response code detail only when the authorization
# service could not be asked (unreachable, timeout, gRPC error); a denial carries
# "ext_authz_denied". Both set the UAEX response flag, so the flag cannot tell them apart.
_AUTHZ_ERROR_DETAIL: Final = "ext_authz_error"
# Envoy's own reply names the project as the service would: the route's project, else the
# path's last segment, which PROJECT_METADATA_FILTER copies into this dynamic metadata before
# ext_authz runs. Empty when the segment is not a valid project id (only A-Za-z0-9_- ever gets
# there, so the text needs no JSON escaping); cut at 128 characters like the service's bodies.
PROJECT_METADATA_NAMESPACE: Final = "authz_server"
PROJECT_METADATA_KEY: Final = "project"
UNAVAILABLE_BODY: Final = json.dumps(
    {
        "code": -32013,
        "message": "authorization service unavailable",
        "project": f"%DYNAMIC_METADATA({PROJECT_METADATA_NAMESPACE}:{PROJECT_METADATA_KEY}):128%",
    }
)
# The last non-empty path segment when it is a possible project id; every other path matches
# the second branch, whose empty group sets nothing (the filter would copy an unmatched path
# as it is, quotes and all). Normalized paths only: Envoy merges slashes before filters run.
PROJECT_SEGMENT_REWRITE: Final = r"(?s)^(?:[^?]*/)?([A-Za-z0-9_-]+)/*(?:\?.*)?$|^.*$"
# Paths whose last segment could be a project id (docs/contract.md: 1 to 128 of A-Za-z0-9_-;
# the service checks the length, which would make the RE2 program too large for Envoy's
# default limit). Matched against the normalized path without its query string.
PROJECT_PATH_REGEX: Final = r".*/[A-Za-z0-9_-]+/?"
# What Envoy itself answers for any other path, should the service ever let one through:
# the upstream never sees a path that it could read as a different project than the gate.
INVALID_PROJECT_BODY: Final = json.dumps(
    {"code": -32013, "message": "invalid project id", "project": ""}
)

_PROTOCOL_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CEL_FILTER: Final = "envoy.access_loggers.extension_filters.cel"
_HEADER = "# Generated by `authz-server envoy-config` (make envoy-config). Do not edit by hand.\n"


@dataclass(frozen=True, slots=True)
class ProjectRoute:
    """Requests whose path starts with ``prefix`` belong to ``project``."""

    prefix: str
    project: str

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ValueError(f"route prefix {self.prefix!r} must start with '/'")
        if not self.project:
            raise ValueError(f"route prefix {self.prefix!r} needs a project")
        if not is_valid_id(self.project):
            # The service would deny every request of such a route (`invalid project id`).
            raise ValueError(
                f"route prefix {self.prefix!r}: {self.project!r} is not a project id "
                "(1 to 128 of A-Z a-z 0-9 _ -)"
            )


def render(
    *,
    listen: Endpoint,
    authz: Endpoint | Sequence[Endpoint],
    upstream: Endpoint,
    admin: Endpoint | None = None,
    project_routes: Sequence[ProjectRoute] = (),
    authz_timeout_s: float = 0.25,
    transport: str = "grpc",
    health_ports: Sequence[int] = (),
    cors_origins: Sequence[str] = (ANY_ORIGIN,),
) -> dict[str, Any]:
    """The Envoy bootstrap config as a JSON-compatible dict.

    ``authz`` may list several endpoints: one per ``--workers`` process (each listens on
    its own port), so that Envoy balances calls, not just connections, over them.

    ``transport="http"`` asks the service's ``--http-listen`` address over Envoy's HTTP
    ext_authz instead of gRPC. It has no per-route ``context_extensions``: the project is
    the path's last segment, so ``project_routes`` are refused with it. ``health_ports``
    are then each ``authz`` endpoint's ``--metrics-listen`` port, in the same order: Envoy
    health-checks ``/readyz`` there (the same host, a port of its own per endpoint). Without
    them the HTTP cluster has no active health check, only outlier detection and retries.

    ``cors_origins`` are the origins whose pages may call (``authz_server.cors.cors_origins``
    reads the ``--cors-origin`` words): ``("*",)`` any, ``()`` CORS off (no CORS filter).
    """
    if not authz_timeout_s > 0:
        raise ValueError(f"authz_timeout_s must be positive, got {authz_timeout_s}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "http" and project_routes:
        raise ValueError(
            "the HTTP transport takes the project from the path: per-route projects "
            "(context_extensions) need the gRPC transport"
        )
    http = transport == "http"
    cors = _origins(cors_origins) if cors_origins else ()
    if health_ports and not http:
        raise ValueError("health_ports are for the HTTP transport (gRPC checks its own port)")
    authz_cluster = _guarded(
        _cluster(
            AUTHZ_CLUSTER,
            authz,
            http2=not http,
            connect_timeout_s=1.0,
            idle_timeout_s=HTTP_IDLE_TIMEOUT_S if http else None,
            health_ports=health_ports,
        ),
        health_check=(
            _grpc_health_check() if not http else _http_health_check() if health_ports else None
        ),
    )
    bootstrap = Bootstrap(
        static_resources=BootstrapStaticResources(
            listeners=[_listener(listen, project_routes, authz_timeout_s, http=http, cors=cors)],
            clusters=[
                authz_cluster,
                _cluster(UPSTREAM_CLUSTER, upstream, http2=False, connect_timeout_s=5.0),
            ],
        ),
    )
    if admin is not None:
        bootstrap.admin = Admin(address=_address(admin))
    config: dict[str, Any] = _proto_field_names(bootstrap.to_dict(casing=betterproto2.Casing.SNAKE))
    return config


# betterproto2's snake casing splits a digit from the letters after it, so the proto field
# ``consecutive_5xx`` comes out as ``consecutive_5_xx``, which Envoy refuses.
_SPLIT_DIGITS = re.compile(r"_(\d+)_xx\b")


def _proto_field_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            _SPLIT_DIGITS.sub(r"_\1xx", key): _proto_field_names(child)
            for key, child in value.items()
        }
    if isinstance(value, list):
        return [_proto_field_names(child) for child in value]
    return value


def as_yaml(config: dict[str, Any]) -> str:
    """A rendered config as YAML: fields in protobuf declaration order, so the text is
    stable, under a generated-by header."""
    return _HEADER + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000)


# ``make run``: everything on loopback, at these ports unless DEMO_*_PORT says otherwise.
LOCAL_CONFIG: Final = "envoy/local.yaml"
# compose.yaml's Envoy for each transport, chosen by its ENVOY_CONFIG.
COMPOSE_CONFIG: Final = "envoy/envoy.yaml"
COMPOSE_HTTP_CONFIG: Final = "envoy/envoy-http.yaml"
LOCAL_PORTS: Final = {"gate": 10000, "authz": 9001, "node": 8545, "admin": 9901}


def local_settings(
    gate: int = LOCAL_PORTS["gate"],
    authz: int = LOCAL_PORTS["authz"],
    node: int = LOCAL_PORTS["node"],
    admin: int = LOCAL_PORTS["admin"],
) -> dict[str, Any]:
    """The ``render`` arguments of ``make run``'s Envoy: all on 127.0.0.1."""
    return {
        "listen": Endpoint("127.0.0.1", gate),
        "authz": Endpoint("127.0.0.1", authz),
        "upstream": Endpoint("127.0.0.1", node),
        "admin": Endpoint("127.0.0.1", admin),
    }


def rendered_files() -> dict[str, str]:
    """The checked-in renderings, by path relative to the repository root."""
    return {
        # What `make run` starts Envoy with (at the default ports).
        LOCAL_CONFIG: as_yaml(render(**local_settings())),
        COMPOSE_CONFIG: as_yaml(
            render(
                listen=Endpoint("0.0.0.0", 10000),  # noqa: S104 - Envoy is the container's front door
                authz=Endpoint("authz", 9001),
                upstream=Endpoint("node", 8545),
                admin=Endpoint("0.0.0.0", 9901),  # noqa: S104 - reached through compose port mapping
            )
        ),
        # compose.yaml with ENVOY_CONFIG=envoy/envoy-http.yaml: the same service asked over
        # HTTP ext_authz (its AUTHZ_HTTP_LISTEN), health-checked on /readyz (its metrics port).
        COMPOSE_HTTP_CONFIG: as_yaml(
            render(
                listen=Endpoint("0.0.0.0", 10000),  # noqa: S104 - Envoy is the container's front door
                authz=Endpoint("authz", 9002),
                upstream=Endpoint("node", 8545),
                admin=Endpoint("0.0.0.0", 9901),  # noqa: S104 - reached through compose port mapping
                transport="http",
                health_ports=[9090],
            )
        ),
        # The documented example for an existing Envoy: a service started with --workers 2,
        # and providers whose URLs do not end in the project id name it per route.
        "envoy/example-routes.yaml": as_yaml(
            render(
                listen=Endpoint("0.0.0.0", 10000),  # noqa: S104 - Envoy is the front door
                authz=[Endpoint("authz.internal", 9001), Endpoint("authz.internal", 9002)],
                upstream=Endpoint("node.internal", 8545),
                admin=Endpoint("127.0.0.1", 9901),
                project_routes=[
                    ProjectRoute("/v1/mainnet", "2a8428f5a79b09aadff75a745397cf6d2f59d51e"),
                    ProjectRoute("/v1/sepolia", "5b18e8c28750eec300ee361e9412f76f5463716d"),
                ],
            )
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the checked-in renderings (``make envoy-config``), or ``--check`` them."""
    parser = argparse.ArgumentParser(
        prog="python -m authz_server.devtools.envoy_config",
        description="Re-render the checked-in Envoy configs from typed Envoy API objects.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[2],
        help="repository root (default: the checkout this module lives in)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a checked-in file differs from its rendering",
    )
    args = parser.parse_args(argv)
    stale = []
    for relative, text in rendered_files().items():
        path = args.root / relative
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        sys.stderr.write(f"out of date (run `make envoy-config`): {', '.join(stale)}\n")
        return 1
    return 0


def _listener(
    listen: Endpoint,
    project_routes: Sequence[ProjectRoute],
    authz_timeout_s: float,
    *,
    http: bool,
    cors: Sequence[str],
) -> Listener:
    # CORS first: a preflight never carries the token, so it must be answered before
    # ext_authz asks for one; and ext_authz's denials (local replies) then pass back through
    # it, so that pages can read their -32013 body.
    cors_filters = [HttpFilter(name=CORS_FILTER, typed_config=_pack(Cors()))] if cors else []
    manager = HttpConnectionManager(
        stat_prefix="ingress_http",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=_route_config(project_routes, cors),
        http_filters=[
            *cors_filters,
            HttpFilter(name=PROJECT_METADATA_FILTER, typed_config=_pack(_project_metadata(None))),
            HttpFilter(
                name=EXT_AUTHZ_FILTER,
                typed_config=_pack(
                    _http_ext_authz(authz_timeout_s) if http else _ext_authz(authz_timeout_s)
                ),
            ),
            HttpFilter(name=ROUTER_FILTER, typed_config=_pack(Router())),
        ],
        local_reply_config=_authz_unavailable_reply(),
        # Envoy is the edge: route matching, the authorizer and the node must all see the same
        # canonical path, or a crafted path could be routed as one project and checked as another.
        # No project id contains a slash, so an encoded one is refused (400), not reinterpreted.
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action=(
            HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST
        ),
        # The client's own address, not one it claims in X-Forwarded-For; and clients never
        # count as internal, so x-envoy-* request headers they send are not obeyed.
        use_remote_address=True,
        # CGI and WSGI upstreams read `x_jwt_kid` as `x-jwt-kid` (both HTTP_X_JWT_KID): a
        # header with an underscore could forge what the gate sets. Dropped rather than
        # rejected: no JSON-RPC client needs one, and a client that sends one by habit still
        # gets its answer instead of a 400.
        common_http_protocol_options=DownstreamHttpProtocolOptions(
            headers_with_underscores_action=(
                HttpProtocolOptionsHeadersWithUnderscoresAction.DROP_HEADER
            )
        ),
    )
    return Listener(
        name="jsonrpc",
        address=_address(listen),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_pack(manager),
                    )
                ]
            )
        ],
    )


def _retry_policy(retry_on: str) -> RetryPolicy:
    """A check changes nothing, so a call that never got an answer (the endpoint refused
    the connection, reset it, or was shutting down) is asked once more, of another
    endpoint, within the same timeout."""
    return RetryPolicy(
        num_retries=1,
        retry_on=retry_on,
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_pack(PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def _ext_authz(timeout_s: float) -> ExtAuthz:
    return ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
            timeout=datetime.timedelta(seconds=timeout_s),
            retry_policy=_retry_policy("connect-failure,refused-stream,reset,unavailable"),
        ),
        transport_api_version=ApiVersion.V3,
        # Fail closed: an unreachable authorizer denies with Envoy's default status (403).
        failure_mode_allow=False,
    )


def _exactly(names: Sequence[str]) -> ListStringMatcher:
    return ListStringMatcher(patterns=[StringMatcher(exact=name) for name in names])


def _http_ext_authz(timeout_s: float) -> ExtAuthz:
    """Envoy's HTTP ext_authz: the original method and path (empty prefix), the token."""
    return ExtAuthz(
        http_service=HttpService(
            server_uri=HttpUri(
                uri=f"http://{AUTHZ_CLUSTER}",
                cluster=AUTHZ_CLUSTER,
                timeout=datetime.timedelta(seconds=timeout_s),
            ),
            path_prefix="",
            authorization_response=AuthorizationResponse(
                allowed_upstream_headers=ListStringMatcher(
                    patterns=[
                        *_exactly(HTTP_UPSTREAM_HEADERS).patterns,
                        StringMatcher(prefix=HTTP_UPSTREAM_PREFIX),
                    ]
                ),
                allowed_client_headers=_exactly(HTTP_CLIENT_HEADERS),
            ),
            retry_policy=_retry_policy("connect-failure,reset"),
        ),
        # The filter-wide list (http_service's own authorization_request one is deprecated).
        allowed_headers=_exactly(HTTP_ALLOWED_HEADERS),
        transport_api_version=ApiVersion.V3,
        # Fail closed: an unreachable authorizer denies with Envoy's default status (403).
        failure_mode_allow=False,
    )


def _cors_policy(origins: Sequence[str]) -> CorsPolicy:
    """The virtual host's policy for the CORS filter (the route's own ``cors`` field is
    deprecated in favour of this ``typed_per_filter_config``)."""
    return CorsPolicy(
        allow_origin_string_match=[
            StringMatcher(safe_regex=RegexMatcher(regex=".*"))
            if origin == ANY_ORIGIN
            else StringMatcher(exact=origin, ignore_case=True)
            for origin in origins
        ],
        allow_methods=ALLOW_METHODS,
        allow_headers=ALLOW_HEADERS,
        max_age=str(MAX_AGE_S),
        # A token travels in a header the page sets, never in a cookie.
        allow_credentials=False,
        # Envoy answers a preflight from an origin not listed itself (no CORS headers, so
        # the browser refuses), rather than pass it to the gate, which would answer it.
        forward_not_matching_preflights=False,
    )


def _route_config(
    project_routes: Sequence[ProjectRoute], cors: Sequence[str]
) -> RouteConfiguration:
    routes = [
        Route(
            name=f"project-{route.project}",
            match=RouteMatch(prefix=route.prefix),
            route=RouteAction(cluster=UPSTREAM_CLUSTER),
            typed_per_filter_config={
                PROJECT_METADATA_FILTER: _pack(_project_metadata(route.project)),
                EXT_AUTHZ_FILTER: _pack(
                    ExtAuthzPerRoute(
                        check_settings=CheckSettings(
                            context_extensions={PROJECT_CONTEXT_KEY: route.project}
                        )
                    )
                ),
            },
        )
        for route in project_routes
    ]
    routes.append(
        Route(
            name="default",
            match=RouteMatch(safe_regex=RegexMatcher(regex=PROJECT_PATH_REGEX)),
            route=RouteAction(cluster=UPSTREAM_CLUSTER),
        )
    )
    # The service denies such paths first (`invalid project id`); this route is the second
    # lock, so that no path an upstream could parse differently ever reaches it.
    routes.append(
        Route(
            name="invalid-project-id",
            match=RouteMatch(prefix="/"),
            direct_response=DirectResponseAction(
                status=403, body=DataSource(inline_string=INVALID_PROJECT_BODY)
            ),
            response_headers_to_add=[
                HeaderValueOption(
                    header=HeaderValue(key="content-type", value="application/json"),
                    append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
        )
    )
    return RouteConfiguration(
        name="jsonrpc",
        virtual_hosts=[
            VirtualHost(
                name="jsonrpc",
                domains=["*"],
                routes=routes,
                typed_per_filter_config={CORS_FILTER: _pack(_cors_policy(cors))} if cors else {},
            )
        ],
    )


def _project_metadata(project: str | None) -> HeaderToMetadata:
    """The project Envoy's own fail-closed reply names: ``project`` for a project route,
    else the path's last segment, the service's own rule (gate.project_from_path)."""
    if project is not None:
        found = ConfigKeyValuePair(
            metadata_namespace=PROJECT_METADATA_NAMESPACE, key=PROJECT_METADATA_KEY, value=project
        )
    else:
        found = ConfigKeyValuePair(
            metadata_namespace=PROJECT_METADATA_NAMESPACE,
            key=PROJECT_METADATA_KEY,
            regex_value_rewrite=RegexMatchAndSubstitute(
                pattern=RegexMatcher(regex=PROJECT_SEGMENT_REWRITE), substitution=r"\1"
            ),
        )
    return HeaderToMetadata(request_rules=[ConfigRule(header=":path", on_header_present=found)])


def _authz_unavailable_reply() -> LocalReplyConfig:
    """A JSON-RPC style body for the fail-closed reply, and for nothing else.

    Matched by response code details through a CEL access-log filter: the status (403) and the
    UAEX flag are shared with real denials, whose bodies come from the service and must pass
    through untouched.
    """
    return LocalReplyConfig(
        mappers=[
            ResponseMapper(
                filter=AccessLogFilter(
                    extension_filter=ExtensionFilter(
                        name=_CEL_FILTER,
                        typed_config=_pack(
                            ExpressionFilter(
                                expression=f"response.code_details == '{_AUTHZ_ERROR_DETAIL}'"
                            )
                        ),
                    )
                ),
                body_format_override=SubstitutionFormatString(
                    text_format_source=DataSource(inline_string=UNAVAILABLE_BODY),
                    content_type="application/json",
                    # No metadata (a path without a project id): "" rather than Envoy's "-".
                    omit_empty_values=True,
                ),
            )
        ]
    )


def _guarded(cluster: Cluster, *, health_check: HealthCheck | None) -> Cluster:
    """The authz cluster's defences, so that losing one authz endpoint costs no request.

    - Active health checks over grpc.health.v1, or ``/readyz`` for the HTTP transport: a
      draining server (NOT_SERVING, 503) is left within about 2 s, while it still answers.
    - Outlier detection: an endpoint whose calls fail 3 times in a row (refused, reset:
      a crashed process) is ejected at once, without waiting for the health checks.
    - A retry budget for the Check retries of ``_ext_authz`` (a fifth of the calls in
      flight, at least 32 at a time), so that a failing endpoint's calls can all move.
    """
    if health_check is not None:
        cluster.health_checks = [health_check]
    cluster.outlier_detection = OutlierDetection(
        consecutive_5xx=3,
        interval=datetime.timedelta(seconds=1),
        base_ejection_time=datetime.timedelta(seconds=5),
        max_ejection_percent=50,
    )
    cluster.circuit_breakers = CircuitBreakers(
        thresholds=[
            CircuitBreakersThresholds(
                retry_budget=CircuitBreakersThresholdsRetryBudget(
                    budget_percent=Percent(value=20.0), min_retry_concurrency=32
                )
            )
        ]
    )
    return cluster


def _health_check() -> HealthCheck:
    return HealthCheck(
        timeout=datetime.timedelta(seconds=HEALTH_TIMEOUT_S),
        interval=datetime.timedelta(seconds=HEALTH_INTERVAL_S),
        no_traffic_interval=datetime.timedelta(seconds=HEALTH_NO_TRAFFIC_INTERVAL_S),
        unhealthy_threshold=HEALTH_UNHEALTHY_THRESHOLD,
        healthy_threshold=1,
    )


def _grpc_health_check() -> HealthCheck:
    check = _health_check()
    check.grpc_health_check = HealthCheckGrpcHealthCheck(service_name=AUTHZ_HEALTH_SERVICE)
    return check


def _http_health_check() -> HealthCheck:
    """``GET /readyz`` on each endpoint's health-check port: 200 ready, 503 draining."""
    check = _health_check()
    check.http_health_check = HealthCheckHttpHealthCheck(path=HTTP_READY_PATH)
    return check


def _cluster(
    name: str,
    endpoints: Endpoint | Sequence[Endpoint],
    *,
    http2: bool,
    connect_timeout_s: float,
    idle_timeout_s: float | None = None,
    health_ports: Sequence[int] = (),
) -> Cluster:
    endpoints = [endpoints] if isinstance(endpoints, Endpoint) else list(endpoints)
    if not endpoints:
        raise ValueError(f"cluster {name} needs at least one endpoint")
    if health_ports and len(health_ports) != len(endpoints):
        raise ValueError(
            f"cluster {name}: {len(health_ports)} health port(s) for {len(endpoints)} endpoint(s)"
        )
    health_configs = [
        EndpointHealthCheckConfig(port_value=port) if port else None
        for port in (health_ports or [0] * len(endpoints))
    ]
    explicit = (
        HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
        if http2
        else HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
    )
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC,
        connect_timeout=datetime.timedelta(seconds=connect_timeout_s),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=EnvoyEndpoint(
                                address=_address(endpoint), health_check_config=health
                            )
                        )
                        for endpoint, health in zip(endpoints, health_configs, strict=True)
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            _PROTOCOL_OPTIONS: _pack(
                HttpProtocolOptions(
                    explicit_http_config=explicit,
                    common_http_protocol_options=(
                        None
                        if idle_timeout_s is None
                        else DownstreamHttpProtocolOptions(
                            idle_timeout=datetime.timedelta(seconds=idle_timeout_s)
                        )
                    ),
                )
            )
        },
    )
    if len(endpoints) > 1:
        # Calls differ in cost (a cache hit or an RSA verification): send each to the
        # endpoint with the fewest in flight rather than strictly in turn.
        cluster.lb_policy = ClusterLbPolicy.LEAST_REQUEST
    if not all(_is_ip(endpoint.host) for endpoint in endpoints):
        # Every address a name resolves to is an endpoint (scaled compose services, headless
        # Kubernetes services). Those networks are often IPv4-only even when AAAA lookups answer.
        cluster.type = ClusterDiscoveryType.STRICT_DNS
        cluster.dns_lookup_family = ClusterDnsLookupFamily.V4_PREFERRED
    return cluster


def _address(endpoint: Endpoint) -> Address:
    return Address(socket_address=SocketAddress(address=endpoint.host, port_value=endpoint.port))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pack(message: betterproto2.Message) -> AnyMessage:
    return AnyMessage.pack(message)


if __name__ == "__main__":
    raise SystemExit(main())
