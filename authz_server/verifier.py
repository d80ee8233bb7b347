"""The gate's decision, exactly as the table in docs/contract.md ("Decision").

:func:`decide` is pure: it takes the token, the project's keys, the policy and the
current time, and returns a :class:`Decision`. It does no I/O, reads no clock and
logs nothing; the gRPC service and the ``check`` tooling are thin adapters around it.
The checks run in the contract's order and the first failing one decides.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from .keys import VerifyKey, is_valid_id

__all__ = [
    "JSON_RPC_UNAUTHORIZED",
    "MAX_TOKEN_LENGTH",
    "Allowed",
    "Decision",
    "Denied",
    "Policy",
    "Reason",
    "bearer_token",
    "check_claims",
    "check_times",
    "decide",
    "deny_body",
    "project_id_denial",
]

MAX_TOKEN_LENGTH: Final = 8 * 1024
# The JSON-RPC error code of every denial's body.
JSON_RPC_UNAUTHORIZED: Final = -32013
SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256")


class Reason(enum.Enum):
    """Why a request is denied; each value is the exact message clients receive."""

    INVALID_PROJECT_ID = "invalid project id"
    MISSING_TOKEN = "missing JWT token"  # noqa: S105 - a message, not a secret
    MALFORMED = "invalid JWT token (malformatted token)"
    UNSUPPORTED_ALGORITHM = "invalid JWT token (unsupported algorithm)"
    EMPTY_KEY_ID = "invalid JWT token (empty key id)"
    UNKNOWN_KEY_ID = "invalid JWT token (empty configuration)"
    BAD_SIGNATURE = "invalid JWT token (signature verification failed)"
    EXPIRED = "invalid JWT token (expired token)"
    NOT_YET_VALID = "invalid JWT token (not reached nbf)"
    BAD_AUDIENCE = "invalid JWT token (invalid audience)"
    # Not rows of the table: the service failed closed on an unexpected error, or was asked
    # before its first complete scan of the keys directory (the words of Envoy's own reply
    # when it cannot reach the service).
    INTERNAL_ERROR = "authorization failed (internal error)"
    NOT_READY = "authorization service unavailable"
    # Not a row either: the project's budget for failed signature checks is spent (see
    # budget.py); its token was not judged, and may be retried.
    THROTTLED = "authorization throttled (too many invalid signatures for this project)"
    # A project's own settings (settings.py), in the gate's order: the settings file never
    # loaded, then the client's address, its origin, and after the table the token's
    # lifetime.
    INVALID_SETTINGS = "invalid project settings"
    IP_NOT_ALLOWED = "ip address not allowed"
    ORIGIN_NOT_ALLOWED = "origin not allowed"
    LIFETIME_TOO_LONG = "invalid JWT token (token lifetime too long)"

    @property
    def message(self) -> str:
        return self.value

    @property
    def code(self) -> str:
        """A short stable name for logs and metric labels, e.g. ``expired``."""
        return self.name.lower()


# The rows of the contract's decision table, in order (the other reasons are the service's).
TABLE_REASONS: Final[tuple[Reason, ...]] = (
    Reason.INVALID_PROJECT_ID,
    Reason.MISSING_TOKEN,
    Reason.MALFORMED,
    Reason.UNSUPPORTED_ALGORITHM,
    Reason.EMPTY_KEY_ID,
    Reason.UNKNOWN_KEY_ID,
    Reason.BAD_SIGNATURE,
    Reason.EXPIRED,
    Reason.NOT_YET_VALID,
    Reason.BAD_AUDIENCE,
)


@dataclass(frozen=True, slots=True)
class Policy:
    """Operator settings that shape the claim checks: the server's, or a project's
    (its settings over the server's).

    ``max_token_lifetime``: tokens must carry ``exp`` and ``exp - iat`` (``iat`` missing
    or later than now: ``exp - now``) must not exceed it. ``claims_to_headers``: (claim,
    header) pairs; an allowed token's string claims come back in
    :attr:`Allowed.headers`.
    """

    leeway: float = 0.0
    audience_suffix: str = ""  # empty: ``aud`` is not checked
    max_token_lifetime: float | None = None
    claims_to_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.leeway) and self.leeway >= 0):
            raise ValueError("leeway must be a finite number of seconds >= 0")


@dataclass(frozen=True, slots=True)
class Allowed:
    """Let the request through. ``kid`` is None when the project does not use JWT.

    ``exp`` and ``nbf`` are the token's, kept so that a cache of verified tokens can
    re-check them on every later request.
    """

    kid: str | None
    exp: float | None = field(default=None, compare=False)
    nbf: float | None = field(default=None, compare=False)
    # (header, value) for the policy's claims_to_headers whose claim is a string here,
    # and the headers (claim headers not set, their other spellings) whose client copies
    # must not reach the upstream; both set by the gate for a project's settings.
    headers: tuple[tuple[str, str], ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Denied:
    """Refuse with ``reason``. ``kid`` is the header's key id once it is known."""

    reason: Reason
    kid: str | None = None


Decision: TypeAlias = Allowed | Denied


def deny_body(reason: Reason, project: str) -> str:
    """The JSON-RPC style error body of a denial."""
    return json.dumps(
        {"code": JSON_RPC_UNAUTHORIZED, "message": reason.message, "project": project}
    )


_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +")
_COMPACT_JWS: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
# base64url without padding: the last character of a 2- or 3-character tail may
# only carry data bits, or two encodings would decode to the same bytes.
_CANONICAL_LAST: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <jwt>`` header, or None for no token."""
    if not authorization:
        return None
    match = _BEARER.match(authorization)
    if match is None:
        return None
    return authorization[match.end() :] or None


def project_id_denial(project: str) -> Reason | None:
    """Row 0, before any other: the project the request names must be a valid id.

    A segment like ``P1;x`` or ``P1%20`` is no project of the gate's, yet an upstream that
    strips, decodes or trims paths may read it as ``P1``: it is denied, never treated as
    an unknown (open) project.
    """
    return None if is_valid_id(project) else Reason.INVALID_PROJECT_ID


def decide(
    token: str | None,
    keys: Mapping[str, VerifyKey] | None,
    policy: Policy,
    now: float,
    *,
    may_verify: bool = True,
) -> Decision:
    """Rows 1 to 9 for a request whose project passed :func:`project_id_denial`. ``keys`` is
    None when the project has no key directory. With ``may_verify`` false, a token that
    reaches row 6 is denied as :attr:`Reason.THROTTLED` instead of checked."""
    if keys is None:
        return Allowed(kid=None)
    if token is None:
        return Denied(Reason.MISSING_TOKEN)
    parsed = _parse(token)
    if parsed is None:
        return Denied(Reason.MALFORMED)
    header, claims, signing_input, signature = parsed

    alg = header.get("alg")
    if alg not in SUPPORTED_ALGORITHMS:
        return Denied(Reason.UNSUPPORTED_ALGORITHM)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        return Denied(Reason.EMPTY_KEY_ID)
    key = keys.get(kid)
    if key is None:
        return Denied(Reason.UNKNOWN_KEY_ID, kid)
    if not may_verify:
        return Denied(Reason.THROTTLED, kid)
    if key.alg != alg or not key.verify(signature, signing_input):
        return Denied(Reason.BAD_SIGNATURE, kid)

    reason = check_claims(claims, policy, now)
    if reason is not None:
        return Denied(reason, kid)
    if policy.max_token_lifetime is not None and not _lifetime_ok(claims, policy, now):
        return Denied(Reason.LIFETIME_TOO_LONG, kid)
    if policy.claims_to_headers:
        return Allowed(kid, claims.get("exp"), claims.get("nbf"), _claim_headers(claims, policy))
    return Allowed(kid, claims.get("exp"), claims.get("nbf"))


def _lifetime_ok(claims: Mapping[str, Any], policy: Policy, now: float) -> bool:
    """``exp`` present and ``exp - min(iat, now)`` within the limit. An ``iat`` that is no
    number counts as missing; one in the future as now, or a token minted "later" could
    live longer than the limit from now."""
    exp = claims.get("exp")
    if exp is None or policy.max_token_lifetime is None:
        return exp is not None
    iat = claims.get("iat")
    # Numbers only (bool is an int subclass); JSON floats are finite (the decoder's hook).
    start = now
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        start = min(iat, now)
    return bool(exp - start <= policy.max_token_lifetime)


# A claim goes upstream only as a short single-line header value.
_HEADER_VALUE: Final = re.compile(r"[\x20-\x7e]{1,1024}")


def _claim_headers(claims: Mapping[str, Any], policy: Policy) -> tuple[tuple[str, str], ...]:
    """(header, value) for each configured claim that is a printable ASCII string."""
    headers = []
    for claim, header in policy.claims_to_headers:
        value = claims.get(claim)
        if isinstance(value, str) and _HEADER_VALUE.fullmatch(value):
            headers.append((header, value))
    return tuple(headers)


def check_times(exp: float | None, nbf: float | None, policy: Policy, now: float) -> Reason | None:
    """Rows 7 and 8 alone, for a token whose signature and audience already passed."""
    # Compared as now - leeway >= exp rather than now >= exp + leeway: exp may be an
    # integer too large for a float, and Python compares int with float exactly.
    if exp is not None and now - policy.leeway >= exp:
        return Reason.EXPIRED
    if nbf is not None and now + policy.leeway < nbf:
        return Reason.NOT_YET_VALID
    return None


def check_claims(claims: Mapping[str, Any], policy: Policy, now: float) -> Reason | None:
    """Rows 7 to 9 on claims whose types :func:`decide` has already checked."""
    reason = check_times(claims.get("exp"), claims.get("nbf"), policy, now)
    if reason is not None:
        return reason
    aud = claims.get("aud")
    if aud is not None and policy.audience_suffix:
        audiences = [aud] if isinstance(aud, str) else aud
        suffix = policy.audience_suffix.casefold()
        if not any(a.casefold().endswith(suffix) for a in audiences):
            return Reason.BAD_AUDIENCE
    return None


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes] | None:
    """Row 2: split, decode and type-check a compact JWS, or None if malformed."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        return None
    header_b64, payload_b64, signature_b64 = match.groups()
    header = _json_object(_b64decode(header_b64))
    if header is None or "crit" in header:
        return None
    claims = _json_object(_b64decode(payload_b64))
    if claims is None or not _claim_types_ok(claims):
        return None
    signature = _b64decode(signature_b64)
    if signature is None:
        return None
    signing_input = token[: match.end(2)].encode("ascii")
    return header, claims, signing_input, signature


def _claim_types_ok(claims: Mapping[str, Any]) -> bool:
    for name in ("exp", "nbf"):
        # JSON null is not a number either, and bool is an int subclass in Python.
        if name in claims and type(claims[name]) not in (int, float):
            return False
    aud = claims.get("aud", "")
    if isinstance(aud, list):
        return all(isinstance(a, str) for a in aud)
    return isinstance(aud, str)


def _b64decode(segment: str) -> bytes | None:
    """Strict base64url (RFC 7515 section 2): no padding, no stray bits, alphabet only."""
    tail = len(segment) % 4
    if tail == 1 or (tail and segment[-1] not in _CANONICAL_LAST[tail]):
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-tail % 4))
    except binascii.Error:  # pragma: no cover - the regex admits only the alphabet
        return None


# Nesting is bounded before parsing, the same on every Python (whose own limit on the JSON
# parser's recursion differs between versions): a segment with more than this many '[' and
# '{' in all (strings included) is malformed. Real headers and claims hold a handful.
MAX_JSON_BRACKETS: Final = 512


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None or raw.count(b"[") + raw.count(b"{") > MAX_JSON_BRACKETS:
        return None
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON, duplicate names, NaN/Infinity,
        # 1e400 and integers past Python's digit limit. RecursionError: kept as a second
        # line of defence behind the bracket count.
        return None
    return value if isinstance(value, dict) else None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# Built once: json.loads() with hooks would construct a new decoder on every call.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)
