"""Project settings (``settings.toml``): what a file may say, how a request is matched
against it, and the reasons a file is refused, as data."""

from __future__ import annotations

import ipaddress

import pytest

from authz_server.settings import (
    NO_SETTINGS,
    ProjectSettings,
    SettingsRejected,
    client_ip,
    parse_duration,
    parse_settings,
    render_settings,
)
from authz_server.verifier import Reason

FULL = b"""
require_jwt = true
allowed_origins = ["https://App.Example.com", "https://*.example.com", "http://localhost:3000"]
allow_missing_origin = true
allowed_ips = ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]
max_token_lifetime = "1h"
audience_suffix = "rpc.example.com"
leeway = 30
report_only = true

[claims_to_headers]
sub = "X-JWT-Sub"
"""


def test_a_full_file_parses_into_frozen_settings() -> None:
    settings = parse_settings(FULL)
    assert settings.require_jwt
    assert settings.allowed_origins == (
        "https://app.example.com",
        "https://*.example.com",
        "http://localhost:3000",
    )
    assert settings.allow_missing_origin
    assert settings.allowed_ips == (
        ipaddress.ip_network("203.0.113.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("198.51.100.7/32"),
    )
    assert settings.max_token_lifetime == 3600
    assert settings.audience_suffix == "rpc.example.com"
    assert settings.leeway == 30
    assert settings.claims_to_headers == (("sub", "x-jwt-sub"),)
    assert settings.report_only
    with pytest.raises(AttributeError):
        settings.require_jwt = False  # type: ignore[misc]


def test_an_empty_file_changes_nothing() -> None:
    assert parse_settings(b"") == NO_SETTINGS
    assert NO_SETTINGS.request_denial(None, None) is None


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        (b"require_jwt = yes", "not_toml", "not valid TOML"),
        (b"\xff\xfe", "not_toml", "not UTF-8"),
        (b"requre_jwt = true", "unknown_key", "unknown setting 'requre_jwt'"),
        (b'require_jwt = "true"', "wrong_type", "require_jwt: true or false, not a string"),
        (b"report_only = 1", "wrong_type", "report_only: true or false, not a number"),
        (b'allowed_ips = "203.0.113.0/24"', "wrong_type", "allowed_ips: a list of strings"),
        (b'allowed_ips = ["203.0.113.1/24"]', "bad_value", "has host bits set"),
        (b'allowed_ips = ["not-an-ip"]', "bad_value", "allowed_ips: 'not-an-ip'"),
        (b'allowed_ips = ["::ffff:203.0.113.0/120"]', "bad_value", "IPv4-mapped"),
        (b'allowed_origins = ["https://app.example.com/"]', "bad_value", "is not an origin"),
        (b'allowed_origins = ["app.example.com"]', "bad_value", "is not an origin"),
        (b'allowed_origins = ["https://*"]', "bad_value", "is not an origin"),
        (b'allowed_origins = ["ftp://x.example"]', "bad_value", "is not an origin"),
        (b'allowed_origins = ["https://a.example:99999"]', "bad_value", "no valid port"),
        (b'max_token_lifetime = "1 hour"', "bad_value", "is not a duration"),
        (b"max_token_lifetime = true", "wrong_type", "not a boolean"),
        (b"max_token_lifetime = 0", "bad_value", "more than 0"),
        (b"leeway = -1", "bad_value", ">= 0"),
        (b"audience_suffix = 3", "wrong_type", "audience_suffix: a string"),
        (b'claims_to_headers = "sub"', "wrong_type", "claims_to_headers: a table"),
        (b'[claims_to_headers]\nsub = "x-user"', "bad_value", "x-jwt-<name>"),
        (b'[claims_to_headers]\nsub = "x-jwt-kid"', "bad_value", "the gate's own"),
        (b'[claims_to_headers]\nsub = "x-jwt-a b"', "bad_value", "x-jwt-<name>"),
        (b'[claims_to_headers]\nsub = "x-jwt-u"\nemail = "X-JWT-U"', "bad_value", "used twice"),
        (b"[claims_to_headers]\nsub = 1", "wrong_type", "a header name"),
        (b"x" * (64 * 1024 + 1), "too_large", "larger than"),
    ],
)
def test_a_bad_file_is_refused_with_a_code_and_a_reason(text: bytes, code: str, words: str) -> None:
    with pytest.raises(SettingsRejected) as refused:
        parse_settings(text)
    assert refused.value.code == code
    assert words in refused.value.reason
    assert "\n" not in refused.value.reason


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), (45, 45), (1.5, 1.5)],
)
def test_durations_are_seconds_or_a_number_with_a_unit(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == seconds


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped: judged as IPv4
        ("::FFFF:203.0.113.7", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("not an address", None),
        ("203.0.113.7:443", None),
        ("", None),
        (None, None),
    ],
)
def test_client_addresses_are_normalised(text: str | None, address: str | None) -> None:
    parsed = client_ip(text)
    assert (None if parsed is None else str(parsed)) == address


IPS = parse_settings(b'allowed_ips = ["203.0.113.0/24", "2001:db8::/32"]')


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("203.0.113.7", True),
        ("::ffff:203.0.113.7", True),
        ("2001:db8::5", True),
        ("203.0.114.7", False),
        ("::ffff:203.0.114.7", False),
        ("2001:db9::5", False),
        ("::203.0.113.7", False),  # IPv4-compatible (deprecated) is not IPv4-mapped
        ("127.0.0.1", False),
        (None, False),  # unknown address: denied
        ("garbage", False),
    ],
)
def test_ip_allowlist(address: str | None, allowed: bool) -> None:
    expected = None if allowed else Reason.IP_NOT_ALLOWED
    assert IPS.request_denial(address, None) is expected


def test_an_empty_ip_list_allows_no_address() -> None:
    settings = parse_settings(b"allowed_ips = []")
    assert settings.request_denial("203.0.113.7", None) is Reason.IP_NOT_ALLOWED


ORIGINS = parse_settings(
    b'allowed_origins = ["https://app.example.com", "https://*.dapp.example", '
    b'"http://localhost:3000"]'
)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://a.dapp.example", True),
        ("https://a.b.dapp.example", True),
        ("http://localhost:3000", True),
        ("https://dapp.example", False),  # the wildcard needs a label before the domain
        ("http://a.dapp.example", False),  # another scheme
        ("https://a.dapp.example:8443", False),  # another port
        ("https://*.dapp.example", False),  # the wildcard entry itself is no origin
        ("https://evil.dapp.example.attacker.net", False),
        ("https://a.dapp.example/", False),  # no browser sends a path
        ("https://a.dapp.example.", False),
        ("https://APP.example.com", False),  # no browser sends uppercase
        ("HTTPS://app.example.com", False),
        ("https://app.example.com:443", False),  # no browser sends the default port
        ("https://user@app.example.com", False),
        ("https://app.example.com, https://evil.net", False),  # a repeated header
        ("https://evilapp.example.com", False),
        ("http://localhost:3001", False),
        ("null", False),  # not listed
        ("", False),
    ],
)
def test_origin_allowlist(origin: str, allowed: bool) -> None:
    expected = None if allowed else Reason.ORIGIN_NOT_ALLOWED
    assert ORIGINS.request_denial(None, origin) is expected


def test_a_missing_origin_is_denied_unless_allowed_by_its_own_flag() -> None:
    assert ORIGINS.request_denial(None, None) is Reason.ORIGIN_NOT_ALLOWED
    lenient = parse_settings(
        b'allowed_origins = ["https://a.example"]\nallow_missing_origin = true'
    )
    assert lenient.request_denial(None, None) is None
    assert lenient.request_denial(None, "https://b.example") is Reason.ORIGIN_NOT_ALLOWED


def test_origin_null_matches_only_when_listed_literally() -> None:
    listed = parse_settings(b'allowed_origins = ["null"]')
    assert listed.request_denial(None, "null") is None
    assert listed.request_denial(None, "NULL") is Reason.ORIGIN_NOT_ALLOWED


def test_allowed_origins_are_stored_as_browsers_send_them() -> None:
    settings = parse_settings(b'allowed_origins = ["HTTPS://App.Example.COM:443"]')
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.request_denial(None, "https://app.example.com") is None


def test_the_ip_check_comes_before_the_origin_check() -> None:
    both = parse_settings(b'allowed_ips = ["10.0.0.0/8"]\nallowed_origins = ["https://a.example"]')
    assert both.request_denial("192.0.2.1", "https://b.example") is Reason.IP_NOT_ALLOWED
    assert both.request_denial("10.1.2.3", "https://b.example") is Reason.ORIGIN_NOT_ALLOWED
    assert both.request_denial("10.1.2.3", "https://a.example") is None


def test_rendered_settings_parse_back_to_the_same() -> None:
    values: dict[str, object] = {
        "require_jwt": True,
        "allowed_origins": ["https://a.example", "https://*.b.example"],
        "allowed_ips": ["203.0.113.0/24"],
        "max_token_lifetime": "15m",
        "leeway": 5,
        "audience_suffix": 'quote"d',
        "claims_to_headers": {"sub": "x-jwt-sub", "weird claim": "x-jwt-weird"},
        "report_only": False,
    }
    text = render_settings(values)
    parsed = parse_settings(text.encode())
    assert parsed.allowed_origins == ("https://a.example", "https://*.b.example")
    assert parsed.max_token_lifetime == 900
    assert parsed.audience_suffix == 'quote"d'
    assert parsed.claims_to_headers == (("sub", "x-jwt-sub"), ("weird claim", "x-jwt-weird"))
    assert parsed == ProjectSettings(
        require_jwt=True,
        allowed_origins=parsed.allowed_origins,
        allowed_ips=(ipaddress.ip_network("203.0.113.0/24"),),
        max_token_lifetime=900,
        leeway=5,
        audience_suffix='quote"d',
        claims_to_headers=parsed.claims_to_headers,
    )


def test_rendering_refuses_what_would_not_load() -> None:
    with pytest.raises(SettingsRejected, match="is not an origin"):
        render_settings({"allowed_origins": ["nope"]})
    with pytest.raises(SettingsRejected, match="unknown setting"):
        render_settings({"allow_ips": ["203.0.113.0/24"]})


def test_verdicts_are_remembered_only_for_what_the_settings_judge_and_of_sane_length() -> None:
    """The memory of (address, origin) verdicts is for clients that repeat: a project with
    no allowlists keeps none, a part the settings do not judge is not part of the key, and
    no text longer than an address or an origin can be is kept, whatever clients send."""
    plain = parse_settings(b"require_jwt = true\n")
    for index in range(100):
        assert plain.request_denial(f"203.0.113.{index}", f"https://{index}.example") is None
    assert len(plain._verdicts) == 0

    ips = parse_settings(b'allowed_ips = ["203.0.113.0/24"]\n')
    for index in range(100):
        assert ips.request_denial("203.0.113.7", f"https://{index}.example") is None
    assert len(ips._verdicts) == 1  # the origin is not judged, so not remembered

    origins = parse_settings(b'allowed_origins = ["https://app.example.com"]\n')
    for index in range(100):
        long_origin = f"https://{'a' * 8000}{index}.example"
        assert origins.request_denial("203.0.113.7", long_origin) is Reason.ORIGIN_NOT_ALLOWED
    assert len(origins._verdicts) == 0


@pytest.mark.parametrize(
    "header", ["x-jwt-a-b-c-d", f"x-jwt-{'a' * 33}", "x-jwt-a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q"]
)
def test_a_claim_header_of_more_than_three_words_or_long_words_is_refused(header: str) -> None:
    with pytest.raises(SettingsRejected, match="up to three words"):
        parse_settings(f'[claims_to_headers]\nsub = "{header}"\n'.encode())


def test_a_claim_header_of_three_words_is_accepted() -> None:
    settings = parse_settings(b'[claims_to_headers]\nsub = "x-jwt-user-id-hash"\n')
    assert settings.claims_to_headers == (("sub", "x-jwt-user-id-hash"),)
