"""Envoy's question, built by hand: one ``CheckRequest`` builder for the tests, bench and fuzz.

Envoy fills far more of ``AttributeContext`` than the service reads; this sets what it
reads (the path, the headers, the method, the route's context extensions, the request id,
the client's address) and the host a real request carries.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._proto.envoy.config.core.v3 import address_pb2
from .._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

__all__ = ["check_request"]


def check_request(
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    context: Mapping[str, str] | None = None,
    request_id: str = "",
    method: str = "POST",
    host: str = "",
    client_address: str = "",
) -> external_auth_pb2.CheckRequest:
    """A ``CheckRequest`` for ``method path`` with ``headers``; a ``token`` is added as
    ``authorization: Bearer <token>`` (over any ``authorization`` in ``headers``),
    ``context`` becomes the route's ``context_extensions``, and ``client_address`` the
    source address Envoy reports (empty: none)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id=request_id, method=method, path=path, host=host, headers=all_headers
    )
    source = attribute_context_pb2.AttributeContext.Peer(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=client_address, port_value=50000)
        )
        if client_address
        else None
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=source if client_address else None,
            request=attribute_context_pb2.AttributeContext.Request(http=http),
            context_extensions=dict(context or {}),
        )
    )
