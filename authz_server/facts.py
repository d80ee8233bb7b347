"""What the gate knows about one request: the facts a transport finds in its wire format.

Each transport (gRPC ``CheckRequest``, HTTP ext_authz) builds one :class:`RequestFacts`
per request and hands it to :meth:`authz_server.gate.Gate.decide`; everything past that
point is the same whatever the transport. The values are as the client sent them (Envoy
merges a repeated header into one value joined with commas): judging them (an origin
list, an address range) is the project settings' job, not the transport's.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["RequestFacts", "client_from_forwarded_for"]

_PREFLIGHT_METHOD: Final = "OPTIONS"


class RequestFacts(NamedTuple):
    """One request, as the gate sees it (immutable).

    A named tuple rather than a frozen dataclass: it is built on every request, and
    builds in a third of the time (measured 0.28 against 0.85 µs; a frozen dataclass
    sets each field through ``object.__setattr__``).

    ``client_address`` is the downstream client's IP address as text, as Envoy saw it:
    never read from a header a client controls (see :func:`client_from_forwarded_for`);
    None when the transport could not tell. ``cors_request_method`` and
    ``cors_request_headers`` are the ``Access-Control-Request-*`` headers of a CORS
    preflight.
    """

    project: str
    authorization: str | None = None
    request_id: str | None = None
    method: str = ""
    origin: str | None = None
    client_address: str | None = None
    cors_request_method: str | None = None
    cors_request_headers: str | None = None

    @property
    def is_cors_preflight(self) -> bool:
        """A browser's CORS preflight (Fetch standard): ``OPTIONS`` with an ``Origin`` and
        an ``Access-Control-Request-Method``. A plain ``OPTIONS`` is not one."""
        return (
            self.method == _PREFLIGHT_METHOD
            and self.origin is not None
            and self.cors_request_method is not None
        )


def client_from_forwarded_for(forwarded_for: str | None, trusted_hops: int = 0) -> str | None:
    """The client address in an ``X-Forwarded-For`` value that Envoy has appended to.

    With ``use_remote_address: true`` Envoy appends the address of the peer that connected
    to it as the last entry; every entry before it is whatever the client (or a proxy in
    front of Envoy) sent. With ``trusted_hops`` proxies of the operator's own in front of
    Envoy (Envoy's ``xff_num_trusted_hops``), the client is that many entries further
    left. None when there are fewer entries than that, or the entry is empty: an unknown
    address, which an IP allowlist denies.
    """
    if not forwarded_for or trusted_hops < 0:
        return None
    if trusted_hops == 0:  # the usual case, on every request: no list built
        return forwarded_for[forwarded_for.rfind(",") + 1 :].strip() or None
    entries = forwarded_for.rsplit(",", trusted_hops + 1)
    if len(entries) < trusted_hops + 1:
        return None
    return entries[-(trusted_hops + 1)].strip() or None
