"""The decision table of docs/contract.md, row by row, with its boundaries."""

from __future__ import annotations

import base64
import json

import pytest

from authz_server.keys import VerifyKey
from authz_server.tokens import PrivateKey, b64url, mint
from authz_server.verifier import (
    MAX_TOKEN_LENGTH,
    TABLE_REASONS,
    Allowed,
    Denied,
    Policy,
    Reason,
    bearer_token,
    decide,
    project_id_denial,
)
from tests.support import b64, segment, verify_key, with_parts

NOW = 1_700_000_000
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def signer(request: pytest.FixtureRequest, rsa_key: PrivateKey, ec_key: PrivateKey) -> PrivateKey:
    return rsa_key if request.param == "RS256" else ec_key


@pytest.fixture(scope="module")
def keys(signer: PrivateKey) -> dict[str, VerifyKey]:
    return {KID: verify_key(KID, signer)}


def reason_of(token: str | None, keys: dict[str, VerifyKey], **policy: object) -> Reason | None:
    decision = decide(token, keys, Policy(**policy), NOW)  # type: ignore[arg-type]
    return decision.reason if isinstance(decision, Denied) else None


def test_every_reason_carries_the_contracts_exact_message() -> None:
    assert {r.name: r.message for r in TABLE_REASONS} == {
        "INVALID_PROJECT_ID": "invalid project id",
        "MISSING_TOKEN": "missing JWT token",
        "MALFORMED": "invalid JWT token (malformatted token)",
        "UNSUPPORTED_ALGORITHM": "invalid JWT token (unsupported algorithm)",
        "EMPTY_KEY_ID": "invalid JWT token (empty key id)",
        "UNKNOWN_KEY_ID": "invalid JWT token (empty configuration)",
        "BAD_SIGNATURE": "invalid JWT token (signature verification failed)",
        "EXPIRED": "invalid JWT token (expired token)",
        "NOT_YET_VALID": "invalid JWT token (not reached nbf)",
        "BAD_AUDIENCE": "invalid JWT token (invalid audience)",
    }


def test_the_service_adds_three_reasons_and_the_project_settings_four_to_the_table() -> None:
    assert set(Reason) - set(TABLE_REASONS) == {
        Reason.INTERNAL_ERROR,
        Reason.NOT_READY,
        Reason.THROTTLED,
        Reason.INVALID_SETTINGS,
        Reason.IP_NOT_ALLOWED,
        Reason.ORIGIN_NOT_ALLOWED,
        Reason.LIFETIME_TOO_LONG,
    }
    # The exact messages (issue 14), spelled out here.
    assert Reason.INVALID_SETTINGS.message == "invalid project settings"
    assert Reason.IP_NOT_ALLOWED.message == "ip address not allowed"
    assert Reason.ORIGIN_NOT_ALLOWED.message == "origin not allowed"
    assert Reason.LIFETIME_TOO_LONG.message == "invalid JWT token (token lifetime too long)"
    assert list(Reason)[: len(TABLE_REASONS)] == list(TABLE_REASONS)  # the table's order


@pytest.mark.parametrize(
    "project",
    ["a", "Z", "0", "_", "-", "2a8428f5a79b09aadff75a745397cf6d2f59d51e", "A-z_9" * 25 + "abc"],
)
def test_row_0_accepts_1_to_128_of_the_id_alphabet(project: str) -> None:
    assert project_id_denial(project) is None


@pytest.mark.parametrize(
    "project",
    ["", "x" * 129, "P1;x", "P1;", "P1%20", "P1 ", " P1", "P1\t", "P1\n", "P1.", ".", "..",
     "P1?x", "P1#", "P1/x", "P1:x", "P1@x", "P1+x", "P1=x", "P1~", "p\u00e9", "\u0661",
     "P1\x00", "\uff21"],
)  # fmt: skip
def test_row_0_refuses_anything_else_as_an_invalid_project_id(project: str) -> None:
    assert project_id_denial(project) is Reason.INVALID_PROJECT_ID


def test_a_project_without_keys_lets_everything_through(signer: PrivateKey) -> None:
    assert decide(None, None, Policy(), NOW) == Allowed(kid=None)
    assert decide("garbage", None, Policy(), NOW) == Allowed(kid=None)


def test_a_valid_token_is_allowed_and_names_its_kid(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {"exp": NOW + 60, "nbf": NOW - 60, "aud": "x"})
    assert decide(token, keys, Policy(), NOW) == Allowed(kid=KID)


def test_a_token_without_any_claims_is_allowed(signer: PrivateKey, keys: dict) -> None:
    assert decide(mint(signer, KID, {}), keys, Policy(), NOW) == Allowed(kid=KID)


# -- row 1 -------------------------------------------------------------------


def test_row1_no_token_for_a_project_with_keys_is_missing(keys: dict) -> None:
    assert reason_of(None, keys) is Reason.MISSING_TOKEN


def test_row1_a_project_whose_key_files_all_failed_still_demands_a_token() -> None:
    assert reason_of(None, {}) is Reason.MISSING_TOKEN


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer      ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearerabc.def.ghi", None),
        ("Token abc", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("bEaReR   abc", "abc"),
        ("Bearer a b", "a b"),
    ],
    ids=repr,
)
def test_the_bearer_scheme_is_case_insensitive_and_takes_any_run_of_spaces(
    header: str | None, token: str | None
) -> None:
    assert bearer_token(header) == token


# -- row 2 -------------------------------------------------------------------


def _malformed_cases(token: str) -> dict[str, str]:
    h, p, s = token.split(".")
    bad_utf8 = b64(b'{"a":"\xff"}')
    duplicate = b64('{"alg":"RS256","alg":"ES256"}')
    nan, inf, big = (b64(f'{{"exp":{v}}}') for v in ("NaN", "Infinity", "1e400"))
    deep = b64('{"a":' + "[" * 5000 + "]" * 5000 + "}")
    return {
        "one part": h,
        "two parts": f"{h}.{p}",
        "four parts": f"{token}.{s}",
        "empty header": f".{p}.{s}",
        "empty payload": f"{h}..{s}",
        "padding": f"{h}=.{p}.{s}",
        "standard alphabet": f"{h}.{p}.{s}+/",
        "space inside": f"{h}.{p} .{s}",
        "non-ascii": f"{h}.{p}.{s}\u00e9",
        "header not json": f"{b64('not json')}.{p}.{s}",
        "header a json array": f"{b64('[1]')}.{p}.{s}",
        "header a json string": f"{b64(json.dumps('x'))}.{p}.{s}",
        "payload a json array": f"{h}.{b64('[]')}.{s}",
        "payload null": f"{h}.{b64('null')}.{s}",
        "payload not utf-8": f"{h}.{bad_utf8}.{s}",
        "duplicate header member": f"{duplicate}.{p}.{s}",
        "NaN claim": f"{h}.{nan}.{s}",
        "Infinity claim": f"{h}.{inf}.{s}",
        "1e400 claim": f"{h}.{big}.{s}",
        "deep nesting": f"{h}.{deep}.{s}",
        "length 1 mod 4 segment": f"{h}.{p}.{s}A" if len(s) % 4 == 0 else f"{h}.{p}.A",
    }


@pytest.mark.parametrize(
    "case",
    [
        "one part",
        "two parts",
        "four parts",
        "empty header",
        "empty payload",
        "padding",
        "standard alphabet",
        "space inside",
        "non-ascii",
        "header not json",
        "header a json array",
        "header a json string",
        "payload a json array",
        "payload null",
        "payload not utf-8",
        "duplicate header member",
        "NaN claim",
        "Infinity claim",
        "1e400 claim",
        "deep nesting",
        "length 1 mod 4 segment",
    ],
)
def test_row2_a_token_that_is_not_a_compact_jws_of_json_objects_is_malformed(
    case: str, signer: PrivateKey, keys: dict
) -> None:
    token = _malformed_cases(mint(signer, KID, {"exp": NOW + 60}))[case]
    assert reason_of(token, keys) is Reason.MALFORMED


def test_row2_non_canonical_base64_trailing_bits_are_malformed(
    signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {"a": 1})  # payload {"a":1} is 7 bytes: a 2-bit tail
    h, p, s = token.split(".")
    assert len(p) % 4 == 2
    assert p[-1] == "Q"  # 'R' differs in the unused low bits only and decodes the same
    assert reason_of(f"{h}.{p[:-1]}R.{s}", keys) is Reason.MALFORMED


def test_row2_a_token_just_at_the_size_cap_is_parsed_and_one_byte_more_is_malformed(
    signer: PrivateKey, keys: dict
) -> None:
    base = mint(signer, KID, {"pad": ""})
    room = MAX_TOKEN_LENGTH - len(base)
    # Each 4 characters of padding claim add 3 base64url characters... find an exact fit.
    for extra in range(room, 0, -1):
        token = mint(signer, KID, {"pad": "x" * extra})
        if len(token) <= MAX_TOKEN_LENGTH:
            break
    assert len(token) > MAX_TOKEN_LENGTH - 8
    assert decide(token, keys, Policy(), NOW) == Allowed(kid=KID)
    too_long = token + "A" * (MAX_TOKEN_LENGTH + 1 - len(token))
    assert len(too_long) == MAX_TOKEN_LENGTH + 1
    assert reason_of(too_long, keys) is Reason.MALFORMED
    assert reason_of("A" * 1024 * 1024, keys) is Reason.MALFORMED


def test_row2_a_crit_header_is_malformed_even_when_signed(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {}, header={"crit": ["exp"]})
    assert reason_of(token, keys) is Reason.MALFORMED


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": True},
        {"exp": False},
        {"nbf": True},
        {"exp": "1700000100"},
        {"nbf": "0"},
        {"exp": None},
        {"nbf": None},
        {"exp": [NOW]},
        {"exp": {"t": NOW}},
        {"aud": 1},
        {"aud": None},
        {"aud": {"a": "b"}},
        {"aud": ["ok", 1]},
        {"aud": [["nested"]]},
        {"aud": True},
    ],
    ids=lambda c: json.dumps(c),
)
def test_row2_claims_of_the_wrong_type_are_malformed(
    claims: dict, signer: PrivateKey, keys: dict
) -> None:
    assert reason_of(mint(signer, KID, claims), keys) is Reason.MALFORMED


def test_row2_comes_before_row3(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {"exp": "soon"}, header={"alg": "none"})
    assert reason_of(token, keys) is Reason.MALFORMED


# -- row 3 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg",
    [
        "none",
        "None",
        "NONE",
        "HS256",
        "PS256",
        "RS384",
        "RS512",
        "ES384",
        "ES512",
        "EdDSA",
        "rs256",
        "es256",
        "RS256 ",
        "",
        None,
        256,
        ["RS256"],
        {"alg": "RS256"},
    ],
    ids=repr,
)
def test_row3_any_alg_but_exactly_rs256_or_es256_is_unsupported(
    alg: object, signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {}, header={"alg": alg})
    assert reason_of(token, keys) is Reason.UNSUPPORTED_ALGORITHM


def test_row3_a_header_without_alg_is_unsupported(keys: dict) -> None:
    token = f"{segment({'kid': KID})}.{segment({})}.{b64url(b'sig')}"
    assert reason_of(token, keys) is Reason.UNSUPPORTED_ALGORITHM


def test_row3_alg_none_with_an_empty_signature_is_unsupported(keys: dict) -> None:
    token = f"{segment({'alg': 'none', 'kid': KID})}.{segment({})}."
    assert reason_of(token, keys) is Reason.UNSUPPORTED_ALGORITHM


# -- row 4 -------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["", None, 7, ["a"], {"k": "v"}, True], ids=repr)
def test_row4_an_empty_or_non_string_kid_is_an_empty_key_id(
    kid: object, signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {}, header={"kid": kid})
    assert reason_of(token, keys) is Reason.EMPTY_KEY_ID


def test_row4_a_header_without_kid_is_an_empty_key_id(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {})
    _h, _p, s = token.split(".")
    header = {"alg": "RS256" if len(s) > 100 else "ES256", "typ": "JWT"}
    assert reason_of(with_parts(token, header=segment(header)), keys) is Reason.EMPTY_KEY_ID


# -- row 5 -------------------------------------------------------------------


def test_row5_a_kid_that_is_not_a_key_of_the_project_is_empty_configuration(
    signer: PrivateKey, keys: dict
) -> None:
    decision = decide(mint(signer, "someone-elses-key", {}), keys, Policy(), NOW)
    assert decision == Denied(Reason.UNKNOWN_KEY_ID, "someone-elses-key")


def test_row5_kid_matching_is_exact(signer: PrivateKey, keys: dict) -> None:
    for kid in (KID.upper(), KID + " ", " " + KID, KID + ".pem"):
        assert reason_of(mint(signer, kid, {}), keys) is Reason.UNKNOWN_KEY_ID


# -- row 6 -------------------------------------------------------------------


def test_row6_a_token_signed_by_another_key_fails_verification(
    other_ec_key: PrivateKey, keys: dict
) -> None:
    assert reason_of(mint(other_ec_key, KID, {}), keys) is Reason.BAD_SIGNATURE


def test_row6_a_changed_payload_fails_verification(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {"exp": NOW + 60})
    forged = with_parts(token, payload=segment({"exp": NOW + 6000}))
    assert reason_of(forged, keys) is Reason.BAD_SIGNATURE


def test_row6_the_key_type_pins_the_algorithm(rsa_key: PrivateKey, ec_key: PrivateKey) -> None:
    rsa_keys = {KID: verify_key(KID, rsa_key)}
    ec_keys = {KID: verify_key(KID, ec_key)}
    es_token = mint(ec_key, KID, {})
    rs_token = mint(rsa_key, KID, {})
    assert reason_of(es_token, rsa_keys) is Reason.BAD_SIGNATURE
    assert reason_of(rs_token, ec_keys) is Reason.BAD_SIGNATURE
    # The header may not re-label a signature for the other key type either.
    relabelled = mint(rsa_key, KID, {}, header={"alg": "ES256"})
    assert reason_of(relabelled, rsa_keys) is Reason.BAD_SIGNATURE


def test_row6_empty_and_truncated_signatures_fail(signer: PrivateKey, keys: dict) -> None:
    h, p, s = mint(signer, KID, {}).split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    for sig in (b"", raw[:-1], raw + b"\0", b"\0" + raw):
        assert reason_of(f"{h}.{p}.{b64url(sig)}", keys) is Reason.BAD_SIGNATURE


def test_row6_an_es256_signature_in_der_form_fails(ec_key: PrivateKey) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = {KID: verify_key(KID, ec_key)}
    h, p, _ = mint(ec_key, KID, {}).split(".")
    der = ec_key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    assert reason_of(f"{h}.{p}.{b64url(der)}", keys) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "rs",
    [
        (0, 0),
        (0, 1),
        (1, 0),
        # r or s equal to the group order n, and n + 1 (out of range, CVE-2022-21449 family).
        (0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, 1),
        (1, 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632552),
        (2**256 - 1, 2**256 - 1),
    ],
    ids=["zero-zero", "zero-r", "zero-s", "r-is-n", "s-is-n-plus-1", "all-ones"],
)
def test_row6_es256_zero_or_out_of_range_r_s_fail(rs: tuple[int, int], ec_key: PrivateKey) -> None:
    keys = {KID: verify_key(KID, ec_key)}
    h, p, _ = mint(ec_key, KID, {}).split(".")
    sig = rs[0].to_bytes(32, "big") + rs[1].to_bytes(32, "big")
    assert reason_of(f"{h}.{p}.{b64url(sig)}", keys) is Reason.BAD_SIGNATURE


def test_row6_comes_before_the_claims(other_ec_key: PrivateKey, keys: dict) -> None:
    expired_and_forged = mint(other_ec_key, KID, {"exp": NOW - 10})
    assert reason_of(expired_and_forged, keys) is Reason.BAD_SIGNATURE


# -- rows 7 and 8: exp and nbf, with leeway ------------------------------------


@pytest.mark.parametrize(
    ("exp", "leeway", "expired"),
    [
        (NOW + 1, 0, False),
        (NOW, 0, True),  # now >= exp: a token is dead at its exp second
        (NOW - 1, 0, True),
        (NOW + 0.5, 0, False),
        (NOW - 0.5, 0, True),
        (NOW - 29, 30, False),
        (NOW - 30, 30, True),  # now >= exp + leeway exactly
        (NOW - 31, 30, True),
        (-1, 0, True),
        (0, 0, True),
        (10**400, 0, False),  # a huge integer never overflows the comparison
    ],
)
def test_row7_exp_is_enforced_at_now_greater_or_equal_exp_plus_leeway(
    exp: float, leeway: int, expired: bool, signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {"exp": exp})
    assert reason_of(token, keys, leeway=leeway) is (Reason.EXPIRED if expired else None)


@pytest.mark.parametrize(
    ("nbf", "leeway", "early"),
    [
        (NOW, 0, False),  # valid from its nbf second on
        (NOW + 1, 0, True),
        (NOW - 1, 0, False),
        (NOW + 0.5, 0, True),
        (NOW + 30, 30, False),  # now < nbf - leeway is false at equality
        (NOW + 31, 30, True),
        (0, 0, False),
        (-5, 0, False),
    ],
)
def test_row8_nbf_is_enforced_at_now_less_than_nbf_minus_leeway(
    nbf: float, leeway: int, early: bool, signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {"nbf": nbf})
    assert reason_of(token, keys, leeway=leeway) is (Reason.NOT_YET_VALID if early else None)


def test_row7_comes_before_row8_and_row9(signer: PrivateKey, keys: dict) -> None:
    token = mint(signer, KID, {"exp": NOW - 1, "nbf": NOW + 100, "aud": "nope"})
    assert reason_of(token, keys, audience_suffix="example.com") is Reason.EXPIRED
    token = mint(signer, KID, {"nbf": NOW + 100, "aud": "nope"})
    assert reason_of(token, keys, audience_suffix="example.com") is Reason.NOT_YET_VALID


# -- row 9: audience -------------------------------------------------------------


@pytest.mark.parametrize(
    ("aud", "suffix", "ok"),
    [
        ("rpc.example.com", "example.com", True),
        ("RPC.EXAMPLE.COM", "example.com", True),
        ("rpc.example.com", "EXAMPLE.com", True),
        ("example.com", "example.com", True),
        ("example.org", "example.com", False),
        ("example.com.evil", "example.com", False),
        ("", "example.com", False),
        (["a.org", "b.example.com"], "example.com", True),
        (["a.org", "b.org"], "example.com", False),
        ([], "example.com", False),
        ("anything", "", True),  # no suffix configured: aud is not checked
        (["x"], "", True),
    ],
    ids=repr,
)
def test_row9_aud_must_end_with_the_configured_suffix_ignoring_case(
    aud: object, suffix: str, ok: bool, signer: PrivateKey, keys: dict
) -> None:
    token = mint(signer, KID, {"aud": aud})
    result = reason_of(token, keys, audience_suffix=suffix)
    assert result is (None if ok else Reason.BAD_AUDIENCE)


def test_row9_a_token_without_aud_passes_a_configured_suffix(
    signer: PrivateKey, keys: dict
) -> None:
    assert reason_of(mint(signer, KID, {}), keys, audience_suffix="example.com") is None


def test_policy_refuses_a_negative_or_infinite_leeway() -> None:
    with pytest.raises(ValueError, match="leeway"):
        Policy(leeway=-1)
    with pytest.raises(ValueError, match="leeway"):
        Policy(leeway=float("inf"))
