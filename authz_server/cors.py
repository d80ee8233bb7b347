"""Browser dapps' CORS: the one policy Envoy's CORS filter and the gate both answer with.

A page on another origin that calls a project with ``Authorization: Bearer`` (or a JSON
``content-type``) first sends a preflight: ``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``, never with the token. The rendered Envoy configs answer
it with Envoy's CORS filter, placed before ext_authz; configs without that filter send it
to the gate, which answers it itself (:class:`Preflight`, 204 with :func:`preflight_headers`)
so that it never reaches the node and never needs a token. Both say the same thing: these
methods, these request headers, this max-age, and the caller's own origin back.

Origins are what browsers send: ``scheme://host[:port]``, lower case, no path. An operator's
list of them (``envoy-config --cors-origin``) is checked here, so that a typo is a one-line
error rather than a policy that silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "ANY_ORIGIN",
    "MAX_AGE_S",
    "NO_CORS",
    "Preflight",
    "cors_origins",
    "is_origin",
    "preflight_headers",
]

# What a JSON-RPC call from a page needs: POST (and GET for the few GET endpoints nodes
# have), the token and a JSON body.
ALLOW_METHODS: Final = "POST, GET, OPTIONS"
ALLOW_HEADERS: Final = "authorization, content-type"
# How long a browser may reuse a preflight's answer: 2 hours, Chromium's own cap (Firefox
# allows 24). A refused preflight is never cached, so a longer time loosens nothing.
MAX_AGE_S: Final = 7200
# ``--cors-origin`` words: every origin (the default, as public node providers do), or CORS off.
ANY_ORIGIN: Final = "*"
NO_CORS: Final = "none"
# The longest Origin the gate echoes back; real ones are far shorter.
_MAX_ORIGIN: Final = 512
# scheme "://" host [":" port], as browsers serialize an origin (RFC 6454): no user info, no
# path, no trailing slash. The host is a DNS name, an IPv4 literal or a bracketed IPv6 one.
_ORIGIN: Final = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def _valid_origin(origin: str) -> bool:
    match = _ORIGIN.fullmatch(origin)
    return match is not None and int(match.group("port") or 0) <= 65535


def cors_origins(values: Sequence[str]) -> tuple[str, ...]:
    """An operator's ``--cors-origin`` values as the origins to allow: ``("*",)`` for any,
    ``()`` for CORS off (``none``), else the origins themselves, lower-cased and deduplicated.
    No values means the default: any origin. Raises ``ValueError`` naming a bad value."""
    if not values:
        return (ANY_ORIGIN,)
    words = [value.strip() for value in values]
    if NO_CORS in words or ANY_ORIGIN in words:
        if len(set(words)) > 1:
            raise ValueError(
                f"--cors-origin {NO_CORS!r} and {ANY_ORIGIN!r} stand alone, got {', '.join(words)}"
            )
        return () if words[0] == NO_CORS else (ANY_ORIGIN,)
    origins: list[str] = []
    for word in words:
        origin = word.lower()
        if not _valid_origin(origin):
            raise ValueError(
                f"--cors-origin {word!r} is not an origin: scheme://host[:port], no path "
                "(e.g. https://app.example.com)"
            )
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def is_origin(value: str | None) -> bool:
    """``value`` is an ``Origin`` header a browser could send: an origin, or ``null`` (a
    sandboxed page, a file). The gate echoes only such a value back to a preflight."""
    if value is None:
        return False
    return value == "null" or (len(value) <= _MAX_ORIGIN and _valid_origin(value.lower()))


@dataclass(frozen=True, slots=True)
class Preflight:
    """The gate's own answer to a genuine CORS preflight from ``origin``: 204 with
    :func:`preflight_headers`, sent back by Envoy; the request goes no further."""

    origin: str


def preflight_headers(origin: str) -> tuple[tuple[str, str], ...]:
    """The answer's headers to a preflight from ``origin`` (an origin :func:`is_origin`
    accepted): the policy above, for that origin only."""
    return (
        ("access-control-allow-origin", origin),
        ("access-control-allow-methods", ALLOW_METHODS),
        ("access-control-allow-headers", ALLOW_HEADERS),
        ("access-control-max-age", str(MAX_AGE_S)),
        # The answer depends on Origin: a shared cache must not serve it to another page.
        ("vary", "origin"),
    )
