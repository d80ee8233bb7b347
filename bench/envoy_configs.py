"""The Envoy configs of sections b and c: one listener, three ways to authorize.

All three start from the gate's own rendering (``authz_server.devtools.envoy_config.render``), so
the HTTP connection manager (path normalization, remote address, local-reply mapper) is
the same byte for byte; only the authorization filter differs:

- ``noauth``: no authorization filter;
- ``jwt_authn``: Envoy's native JWT filter, with the customer's public keys inline as a
  JWKS (``local_jwks``), ``forward: false`` (the token is removed before upstream, as
  the gate does) and a requirement attached to the route;
- ``ext_authz``: the gate exactly as rendered (gRPC ext_authz to authz-server), with one
  endpoint per worker process when the workers have a port each.

The route answers itself with ``direct_response`` (a fixed JSON-RPC result) unless an
upstream is given: the demo JSON-RPC node is a Python ThreadingHTTPServer, slower than any
of the filters, and would hide the differences being measured.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any, Final

from authz_server.devtools.envoy_config import PROJECT_METADATA_FILTER, Endpoint, render

__all__ = ["DIRECT_RESULT", "MODES", "gate_config"]

MODES: Final = ("noauth", "jwt_authn", "ext_authz")
DIRECT_RESULT: Final = json.dumps({"jsonrpc": "2.0", "id": 1, "result": "0x1000000"})
JWT_FILTER: Final = "envoy.filters.http.jwt_authn"
_JWT_TYPES: Final = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
_PROVIDER: Final = "customer"
_REQUIREMENT: Final = "customer-jwt"
_UNUSED: Final = Endpoint("127.0.0.1", 9)  # the discard port; never connected to


def jwt_authn_filter(jwks: str) -> dict[str, Any]:
    """Envoy's native JWT check with the same public keys as the gate's keys directory."""
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": _JWT_TYPES + "JwtAuthentication",
            "providers": {
                _PROVIDER: {
                    "local_jwks": {"inline_string": jwks},
                    "forward": False,
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                }
            },
            "requirement_map": {_REQUIREMENT: {"provider_name": _PROVIDER}},
        },
    }


def _buffer_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 65536,
        },
    }


def _jwt_per_route() -> dict[str, Any]:
    return {
        "@type": _JWT_TYPES + "PerRouteConfig",
        "requirement_name": _REQUIREMENT,
    }


def _render(
    authz: Sequence[Endpoint], upstream: Endpoint | None, transport: str = "grpc"
) -> dict[str, Any]:
    """The gate's own rendering, with one authz endpoint per worker port.

    ``render`` takes several endpoints since ``--workers`` gave each worker a port; with
    an older ``render`` the single-endpoint config gets the others added here.
    """
    common: dict[str, Any] = {
        "listen": Endpoint("127.0.0.1", 0),
        "upstream": upstream or _UNUSED,
        "admin": Endpoint("127.0.0.1", 0),
    }
    if transport != "grpc":  # ``transport="http"``: the service's --http-listen ports
        return copy.deepcopy(render(authz=tuple(authz), transport=transport, **common))
    if len(authz) > 1:
        try:
            return copy.deepcopy(render(authz=tuple(authz), **common))
        except (TypeError, AttributeError):
            pass
    config = copy.deepcopy(render(authz=authz[0] if authz else _UNUSED, **common))
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "authz" and len(authz) > 1:
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {"address": point.host, "port_value": point.port}
                        }
                    }
                }
                for point in authz
            ]
    return config


def gate_config(
    mode: str,
    *,
    authz: Sequence[Endpoint] = (),
    upstream: Endpoint | None = None,
    jwks: str = "",
    transport: str = "grpc",
) -> dict[str, Any]:
    """An Envoy bootstrap for ``mode`` on 127.0.0.1 port 0, with an admin on port 0;
    ``transport`` of ext_authz: ``grpc`` or ``http`` (the service's --http-listen)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    if mode == "ext_authz" and not authz:
        raise ValueError("ext_authz needs the authz endpoint(s)")
    if mode == "jwt_authn" and not jwks:
        raise ValueError("jwt_authn needs a JWKS")
    config = _render(authz, upstream, transport)
    resources = config["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    if upstream is None:
        for route in routes:
            if "route" not in route:
                continue  # answers by itself already (the invalid project id route)
            del route["route"]
            route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_RESULT}}
            route["response_headers_to_add"] = [
                {"header": {"key": "content-type", "value": "application/json"}}
            ]
        # Read the whole request before answering: a direct response sent while the body
        # is still unread makes Envoy close the HTTP/1.1 connection, and every request
        # would then pay for a new connection.
        router_index = next(i for i, f in enumerate(filters) if f["name"].endswith("router"))
        filters.insert(router_index, _buffer_filter())
    keep_clusters = {"authz"} if mode == "ext_authz" else set()
    if upstream is not None:
        keep_clusters.add("upstream")
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] in keep_clusters]
    if mode != "ext_authz":
        # It only names the project in ext_authz's fail-closed reply: no cost for the others.
        filters[:] = [f for f in filters if f["name"] != PROJECT_METADATA_FILTER]
    auth_index = next(i for i, f in enumerate(filters) if f["name"].endswith("ext_authz"))
    if mode == "noauth":
        del filters[auth_index]
    elif mode == "jwt_authn":
        filters[auth_index] = jwt_authn_filter(jwks)
        for route in routes:
            route.setdefault("typed_per_filter_config", {})[JWT_FILTER] = _jwt_per_route()
    return config
