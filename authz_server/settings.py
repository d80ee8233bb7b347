"""A project's security settings: ``KEYS_DIR/<project>/settings.toml``, beside its keys.

:func:`parse_settings` turns the file's bytes into a frozen :class:`ProjectSettings`, or
raises :class:`SettingsRejected` with a short code and a one-line reason (the same data
``project show``, the logs and the key store report). Nothing here does I/O but
:func:`read_settings_file`; matching a request against the settings
(:meth:`ProjectSettings.request_denial`) is pure.

The file (every key optional; a key not listed here is an error, never ignored)::

    require_jwt = true                  # deny without a valid JWT, even with no keys
    allowed_origins = ["https://app.example.com", "https://*.example.com"]
    allow_missing_origin = false        # with allowed_origins: requests without Origin
    allowed_ips = ["203.0.113.0/24", "2001:db8::/32"]
    max_token_lifetime = "1h"           # exp - (iat, else now) at most this; exp required
    audience_suffix = "rpc.example.com" # overrides --audience-suffix ("" turns it off)
    leeway = "30s"                      # overrides --leeway
    report_only = false                 # log and count would-be denials, deny nothing

    [claims_to_headers]                 # string claims sent upstream, names x-jwt-*
    sub = "x-jwt-sub"
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

from .smallfile import FileRefused, read_small_file
from .verifier import Policy, Reason

__all__ = [
    "INVALID_SETTINGS",
    "MAX_SETTINGS_BYTES",
    "NO_SETTINGS",
    "RESERVED_HEADERS",
    "SETTINGS_FILE",
    "ProjectSettings",
    "SettingsRejected",
    "client_ip",
    "parse_duration",
    "parse_settings",
    "read_settings_file",
    "render_settings",
]

SETTINGS_FILE: Final = "settings.toml"
MAX_SETTINGS_BYTES: Final = 64 * 1024
# Bounds that keep a hand-edited file from turning the request path into a long scan.
MAX_LIST_ENTRIES: Final = 1000
MAX_CLAIM_HEADERS: Final = 20
MAX_REMEMBERED_VERDICTS: Final = 16_384
# Headers of the gate's own, or that Envoy or an upstream read as the request's framing:
# no claim may be sent upstream under these names.
RESERVED_HEADERS: Final = frozenset({"x-jwt-kid", "x-authz-project"})

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"(\d{1,9})([smhd])")
# An origin as browsers serialize it (RFC 6454 section 6.1): lowercase scheme and host,
# no path, and the port only when it is not the scheme's default.
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST: Final = rf"{_LABEL}(?:\.{_LABEL})*"
_ORIGIN: Final = re.compile(rf"(https?)://({_HOST}|\[[0-9a-f:.]+\])(?::(\d{{1,5}}))?")
_WILDCARD: Final = re.compile(rf"(https?)://\*\.({_HOST})(?::(\d{{1,5}}))?")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# At most three words after x-jwt- (each header is removed in every '-'/'_' spelling a
# client could send: 2^(words+1) of them), of at most 32 characters each.
_CLAIM_HEADER: Final = re.compile(r"x-jwt-[a-z0-9]{1,32}(?:-[a-z0-9]{1,32}){0,2}")
# The longest address or origin whose verdict is remembered (an IPv6 address with a zone,
# an origin with a 253-character host and a port, fit).
_MAX_REMEMBERED_TEXT: Final = 300
_KEYS: Final = (
    "require_jwt",
    "allowed_origins",
    "allow_missing_origin",
    "allowed_ips",
    "max_token_lifetime",
    "audience_suffix",
    "leeway",
    "claims_to_headers",
    "report_only",
)


class SettingsRejected(ValueError):
    """A settings file that cannot be used: ``code`` is short and stable (for logs and
    metrics), ``reason`` one line for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """One project's settings. The defaults change nothing: a project without a settings
    file behaves as the contract says. ``None`` means "not set" (the server-wide value,
    or no check); an empty tuple of origins or addresses allows none.

    ``invalid`` marks the stand-in for a project whose file never parsed: every request
    of the project is denied with ``invalid project settings``.
    """

    require_jwt: bool = False
    allowed_origins: tuple[str, ...] | None = None
    allow_missing_origin: bool = False
    allowed_ips: tuple[IPNetwork, ...] | None = None
    max_token_lifetime: float | None = None
    audience_suffix: str | None = None
    leeway: float | None = None
    claims_to_headers: tuple[tuple[str, str], ...] = ()
    report_only: bool = False
    invalid: bool = field(default=False, repr=False)
    # allowed_origins split for matching: a client's "Origin: https://*.example.com" must
    # never equal the wildcard entry.
    _exact_origins: frozenset[str] = field(init=False, repr=False, compare=False)
    _wildcards: tuple[tuple[str, str, str | None], ...] = field(
        init=False, repr=False, compare=False
    )
    # (client address, origin) -> denial, remembered: parsing an address and testing it
    # against the networks costs ~4 µs, a look-up 0.1 µs, and clients repeat. Bounded; a
    # reload makes new settings with an empty memory.
    _verdicts: dict[tuple[str | None, str | None], Reason | None] = field(
        init=False, repr=False, compare=False
    )
    # The server's policy and this project's over it, the last pair asked for.
    _policy: tuple[Policy, Policy] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: set[str] = set()
        wildcards: list[tuple[str, str, str | None]] = []
        for entry in self.allowed_origins or ():
            wildcard = _WILDCARD.fullmatch(entry)
            if wildcard is None:
                exact.add(entry)
            else:
                scheme, domain, port = wildcard.groups()
                wildcards.append((scheme, "." + domain, port))
        object.__setattr__(self, "_verdicts", {})
        object.__setattr__(self, "_policy", None)
        object.__setattr__(self, "_exact_origins", frozenset(exact))
        object.__setattr__(self, "_wildcards", tuple(wildcards))

    def request_denial(self, client_address: str | None, origin: str | None) -> Reason | None:
        """The IP allowlist, then the origin allowlist; the first that fails, or None."""
        if self.allowed_ips is None:
            if self.allowed_origins is None:
                return None
            client_address = None  # not judged: not part of the remembered verdict
        elif self.allowed_origins is None:
            origin = None
        key = (client_address, origin)
        verdicts = self._verdicts
        try:
            return verdicts[key]
        except KeyError:
            pass
        verdict = self._request_denial(client_address, origin)
        # Only verdicts on values of a real address's or origin's length are kept: the
        # memory is for clients that repeat, not for whatever text a client sends.
        if max(len(client_address or ""), len(origin or "")) <= _MAX_REMEMBERED_TEXT:
            if len(verdicts) >= MAX_REMEMBERED_VERDICTS:
                verdicts.clear()
            verdicts[key] = verdict
        return verdict

    def _request_denial(self, client_address: str | None, origin: str | None) -> Reason | None:
        if self.allowed_ips is not None and not self.ip_allowed(client_address):
            return Reason.IP_NOT_ALLOWED
        allowed_origins = self.allowed_origins
        if allowed_origins is not None:
            if origin is None:
                if not self.allow_missing_origin:
                    return Reason.ORIGIN_NOT_ALLOWED
            elif not self.origin_allowed(origin):
                return Reason.ORIGIN_NOT_ALLOWED
        return None

    def ip_allowed(self, client_address: str | None) -> bool:
        """Whether the client's address is in ``allowed_ips`` (an unknown address never
        is). Only meaningful when ``allowed_ips`` is set."""
        address = client_ip(client_address)
        return address is not None and any(address in network for network in self.allowed_ips or ())

    def policy_over(self, server: Policy) -> Policy:
        """The server's policy with this project's overrides; the same object for the same
        server policy (the verified-token cache keys its entries on it, so an entry verified
        under other settings, which are another object, is never used)."""
        kept = self._policy
        if kept is not None and kept[0] is server:
            return kept[1]
        policy = Policy(
            leeway=server.leeway if self.leeway is None else self.leeway,
            audience_suffix=(
                server.audience_suffix if self.audience_suffix is None else self.audience_suffix
            ),
            max_token_lifetime=self.max_token_lifetime,
            claims_to_headers=self.claims_to_headers,
        )
        object.__setattr__(self, "_policy", (server, policy))
        return policy

    def origin_allowed(self, origin: str) -> bool:
        """Whether ``origin`` (the header as sent) is listed, exactly or under a wildcard.

        Compared as browsers serialize origins: a spelling no browser sends (uppercase, a
        default port, a trailing slash, a path) matches nothing. ``null`` (sandboxed
        frames, ``file:`` pages, some redirects) matches only when ``"null"`` is listed.
        """
        if origin in self._exact_origins:
            return True
        if not self._wildcards:
            return False
        match = _ORIGIN.fullmatch(origin)
        if match is None:
            return False
        scheme, host, port = match.groups()
        if port is not None and int(port) == _DEFAULT_PORTS[scheme]:
            return False
        return any(
            w_scheme == scheme and w_port == port and host.endswith(w_domain)
            for w_scheme, w_domain, w_port in self._wildcards
        )

    @property
    def header_names(self) -> tuple[str, ...]:
        """The upstream headers the claims go in (removed when a claim is absent)."""
        return tuple(header for _claim, header in self.claims_to_headers)


NO_SETTINGS: Final = ProjectSettings()
INVALID_SETTINGS: Final = ProjectSettings(invalid=True)


def client_ip(text: str | None) -> IPAddress | None:
    """The address in ``text``, an IPv4-mapped IPv6 address as the IPv4 one it maps
    (``::ffff:203.0.113.7`` is ``203.0.113.7``, so an IPv4 allowlist judges it); None
    for anything that is no address."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_duration(value: object, name: str) -> float:
    """Seconds from a TOML value: a whole number of seconds, or ``"30s"``, ``"10m"``,
    ``"1h"``, ``"2d"``."""
    if isinstance(value, bool):
        raise SettingsRejected("wrong_type", f'{name}: a duration like "1h", not a boolean')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise SettingsRejected(
                "bad_value", f"{name}: {value!r} is not a duration (30s, 10m, 1h, 2d)"
            )
        seconds = float(int(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise SettingsRejected("wrong_type", f'{name}: a duration like "1h" or seconds')
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SettingsRejected("bad_value", f"{name}: must be a finite number of seconds >= 0")
    return seconds


def _bool(table: Mapping[str, Any], name: str) -> bool:
    value = table.get(name, False)
    if not isinstance(value, bool):
        raise SettingsRejected("wrong_type", f"{name}: true or false, not {_kind(value)}")
    return value


def _string_list(table: Mapping[str, Any], name: str) -> list[str] | None:
    if name not in table:
        return None
    value = table[name]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SettingsRejected("wrong_type", f"{name}: a list of strings, not {_kind(value)}")
    if len(value) > MAX_LIST_ENTRIES:
        raise SettingsRejected("bad_value", f"{name}: more than {MAX_LIST_ENTRIES} entries")
    return value


def _origin_entry(entry: str) -> str:
    """An allowed origin as browsers would send it (lowercase; no default port)."""
    if entry == "null":
        return entry
    lowered = entry.strip().lower()
    match = _WILDCARD.fullmatch(lowered) or _ORIGIN.fullmatch(lowered)
    if match is None:
        raise SettingsRejected(
            "bad_value",
            f"allowed_origins: {entry!r} is not an origin (scheme://host[:port], no path; "
            "a wildcard as https://*.example.com)",
        )
    scheme, _host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise SettingsRejected("bad_value", f"allowed_origins: {entry!r} has no valid port")
    if port is not None and int(port) == _DEFAULT_PORTS[scheme]:
        lowered = lowered[: -len(port) - 1]
    return lowered


def _network(entry: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise SettingsRejected("bad_value", f"allowed_ips: {entry!r}: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(
        ipaddress.IPv6Network("::ffff:0:0/96")
    ):
        raise SettingsRejected(
            "bad_value",
            f"allowed_ips: {entry!r} is IPv4-mapped; write the IPv4 form "
            "(mapped client addresses are judged as IPv4)",
        )
    return network


def _claims_to_headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise SettingsRejected(
            "wrong_type", f'claims_to_headers: a table of claim = "x-jwt-...", not {_kind(value)}'
        )
    if len(value) > MAX_CLAIM_HEADERS:
        raise SettingsRejected("bad_value", f"claims_to_headers: more than {MAX_CLAIM_HEADERS}")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for claim, header in value.items():
        if not isinstance(header, str):
            raise SettingsRejected(
                "wrong_type", f"claims_to_headers.{claim}: a header name, not {_kind(header)}"
            )
        name = header.lower()
        if _CLAIM_HEADER.fullmatch(name) is None or name in RESERVED_HEADERS:
            raise SettingsRejected(
                "bad_value",
                f"claims_to_headers.{claim}: {header!r} is not a header name of the form "
                "x-jwt-<name> (up to three words of 1 to 32 letters and digits joined by "
                "'-'; x-jwt-kid is the gate's own)",
            )
        if name in seen:
            raise SettingsRejected("bad_value", f"claims_to_headers: {header!r} used twice")
        seen.add(name)
        pairs.append((claim, name))
    return tuple(pairs)


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    kinds |= {list: "a list", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)


def parse_settings(data: bytes) -> ProjectSettings:
    """The settings in a file's bytes; :class:`SettingsRejected` says why they cannot be."""
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsRejected("too_large", f"larger than {MAX_SETTINGS_BYTES} bytes")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsRejected("not_toml", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsRejected("not_toml", f"not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise SettingsRejected(
            "unknown_key",
            f"unknown setting {unknown[0]!r} (known: {', '.join(_KEYS)})",
        )
    origins = _string_list(table, "allowed_origins")
    ips = _string_list(table, "allowed_ips")
    audience = table.get("audience_suffix")
    if audience is not None and not isinstance(audience, str):
        raise SettingsRejected("wrong_type", f"audience_suffix: a string, not {_kind(audience)}")
    lifetime = table.get("max_token_lifetime")
    max_lifetime = None if lifetime is None else parse_duration(lifetime, "max_token_lifetime")
    if max_lifetime == 0:
        raise SettingsRejected("bad_value", "max_token_lifetime: must be more than 0 s")
    leeway = table.get("leeway")
    return ProjectSettings(
        require_jwt=_bool(table, "require_jwt"),
        allowed_origins=None if origins is None else tuple(_origin_entry(o) for o in origins),
        allow_missing_origin=_bool(table, "allow_missing_origin"),
        allowed_ips=None if ips is None else tuple(_network(entry) for entry in ips),
        max_token_lifetime=max_lifetime,
        audience_suffix=audience,
        leeway=None if leeway is None else parse_duration(leeway, "leeway"),
        claims_to_headers=_claims_to_headers(table.get("claims_to_headers", {})),
        report_only=_bool(table, "report_only"),
    )


def read_settings_file(path: Path) -> ProjectSettings:
    """The settings in ``path`` (links followed); :class:`SettingsRejected` for a file
    that cannot be read or used. :class:`FileNotFoundError` when there is none."""
    try:
        data = read_small_file(path, MAX_SETTINGS_BYTES)
    except FileRefused as exc:
        raise SettingsRejected(exc.code, exc.reason) from None
    return parse_settings(data)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, str):
        # JSON's string escapes are TOML's basic-string escapes (\uXXXX included).
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise SettingsRejected("wrong_type", f"no setting takes {_kind(value)}")


def render_settings(values: Mapping[str, object]) -> str:
    """A settings file holding ``values`` (the keys of the file; tables last), parsed back
    by :func:`parse_settings` before it is returned, so what is written always loads."""
    lines: list[str] = []
    tables: list[str] = []
    for key in _KEYS:
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, Mapping):
            tables.append(f"\n[{key}]")
            tables += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise SettingsRejected("unknown_key", f"unknown setting {unknown[0]!r}")
    text = "\n".join(lines + tables).strip() + "\n"
    parse_settings(text.encode())
    return text


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
