"""Project Wycheproof vectors against the verifier and the key policy (docs/contract.md).

- RS256 and ES256 signature vectors go through ``VerifyKey.verify``; their group keys
  through ``parse_public_key``.
- Whole JWS tokens go through ``decide``, and their RS256/ES256 signatures through
  ``VerifyKey.verify`` on the token's own pieces.
- JWK key-loading vectors go through ``parse_public_key`` as PEM files.

Wycheproof's ``acceptable`` results, and the few vectors this contract reads differently
from Wycheproof's JWK-centred model, are pinned below as data with their reasons, so a
change of behaviour fails a test instead of passing unnoticed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz_server.keys import Algorithm, KeyRejected, VerifyKey, parse_public_key
from authz_server.tokens import b64url
from authz_server.verifier import Decision, Denied, Policy, Reason, decide
from tests.wycheproof import (
    VECTORS_DIR,
    JwkCase,
    JwsCase,
    KeyGroup,
    SignatureCase,
    VectorsMissingError,
    jwk_case_list,
    jwk_pem,
    jwk_public_key,
    jws_case_list,
    key_groups,
    missing_message,
    public_pem,
    signature_cases,
    split_compact,
)

T = TypeVar("T")

RSA_FILES = {
    "rsa2048": "rsa_signature_2048_sha256_test.json",
    "rsa3072": "rsa_signature_3072_sha256_test.json",
    "rsa4096": "rsa_signature_4096_sha256_test.json",
}
P256_FILES = {"p256": "ecdsa_secp256r1_sha256_p1363_test.json"}
JWS_FILE = "json_web_signature_test.json"
JWK_FILE = "json_web_key_test.json"
ALL_FILES = (*RSA_FILES.values(), *P256_FILES.values(), JWS_FILE, JWK_FILE)

# No vector token carries claims, so the clock never decides; any instant will do.
NOW = 1_700_000_000


def _params(build: Callable[[], Iterable[T]], id_of: Callable[[T], str]) -> list[Any]:
    """pytest params for the cases ``build`` reads, or one failing placeholder without them."""
    try:
        return [pytest.param(case, id=id_of(case)) for case in build()]
    except VectorsMissingError as missing:
        return [pytest.param(missing, id="vectors-missing")]


@pytest.fixture(autouse=True)
def _fail_without_vectors(request: pytest.FixtureRequest) -> None:
    """Missing vectors fail every test that needed them; they never make it skip."""
    callspec = getattr(request.node, "callspec", None)
    for value in callspec.params.values() if callspec else ():
        if isinstance(value, VectorsMissingError):
            pytest.fail(str(value), pytrace=False)


def test_the_vector_files_are_present() -> None:
    missing = [name for name in ALL_FILES if not (VECTORS_DIR / name).is_file()]
    assert not missing, f"{missing_message()}: missing {missing}"


def test_the_vendored_files_are_upstreams_unchanged_and_only_those_used() -> None:
    # SOURCE.md records each file's SHA-256 as copied from upstream; an edited file, or a
    # file vendored but unused (or used but not vendored), fails here.
    source = (VECTORS_DIR / "SOURCE.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([\w.]+\.json)` \| `([0-9a-f]{64})` \|", source, re.M))
    assert set(recorded) == set(ALL_FILES)
    assert {path.name for path in VECTORS_DIR.glob("*.json")} == set(ALL_FILES)
    for name, digest in recorded.items():
        assert hashlib.sha256((VECTORS_DIR / name).read_bytes()).hexdigest() == digest, name
    licence = (VECTORS_DIR / "LICENSE").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("Apache License\n                           Version 2.0")


def _reason(decision: Decision) -> Reason:
    assert isinstance(decision, Denied), f"expected a denial, got {decision}"
    return decision.reason


# -- RS256 and ES256 signatures ------------------------------------------------------------

# Wycheproof's "acceptable": either answer is safe; these are the answers we give.
ACCEPTABLE: Mapping[tuple[str, int], bool] = {
    # "Missing NULL in the ASN encoding": a DigestInfo whose AlgorithmIdentifier omits the
    # NULL parameters. RFC 8017 lets a verifier accept it; cryptography (OpenSSL) refuses.
    ("rsa2048", 8): False,
    ("rsa3072", 8): False,
    ("rsa4096", 8): False,
}


def _rsa_groups() -> list[KeyGroup]:
    return [group for tag, name in RSA_FILES.items() for group in key_groups(name, tag)]


def _p256_groups() -> list[KeyGroup]:
    return [group for tag, name in P256_FILES.items() for group in key_groups(name, tag)]


def _rsa_cases() -> list[SignatureCase]:
    return [case for tag, name in RSA_FILES.items() for case in signature_cases(name, tag)]


def _p256_cases() -> list[SignatureCase]:
    return [case for tag, name in P256_FILES.items() for case in signature_cases(name, tag)]


def _group_id(group: KeyGroup) -> str:
    return f"{group.tag}-group{group.index}"


@functools.cache
def _vector_key(der: bytes, alg: Algorithm) -> VerifyKey:
    # Built straight from the file's DER, so that these tests do not depend on
    # parse_public_key; the *_group_key tests check that one separately.
    key = serialization.load_der_public_key(der)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return VerifyKey(kid="wycheproof", alg=alg, public_key=key)


def _expected(case: SignatureCase) -> bool:
    if case.result == "acceptable":
        pinned = ACCEPTABLE.get((case.tag, case.tc_id))
        assert pinned is not None, f"unpinned acceptable case {case.id}: pin it in ACCEPTABLE"
        return pinned
    return case.result == "valid"


@pytest.mark.parametrize("group", _params(_rsa_groups, _group_id))
def test_every_rsa_vector_key_is_accepted_as_an_rs256_key(group: KeyGroup) -> None:
    alg, key = parse_public_key(group.pem)
    assert alg == "RS256"
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == group.key_size
    der_key = serialization.load_der_public_key(group.der)
    assert isinstance(der_key, rsa.RSAPublicKey)
    assert key.public_numbers() == der_key.public_numbers()
    assert group.jwk is not None
    jwk_key = jwk_public_key(group.jwk)
    assert isinstance(jwk_key, rsa.RSAPublicKey)
    assert key.public_numbers() == jwk_key.public_numbers()


@pytest.mark.parametrize("case", _params(_rsa_cases, lambda case: case.id))
def test_rs256_signature_vector(case: SignatureCase) -> None:
    verifies = _vector_key(case.key_der, "RS256").verify(case.sig, case.msg)
    assert verifies is _expected(case), f"{case.comment} {case.flags}"


@pytest.mark.parametrize("group", _params(_p256_groups, _group_id))
def test_every_p256_vector_key_is_accepted_as_an_es256_key(group: KeyGroup) -> None:
    alg, key = parse_public_key(group.pem)
    assert alg == "ES256"
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.key_size == group.key_size
    der_key = serialization.load_der_public_key(group.der)
    assert isinstance(der_key, ec.EllipticCurvePublicKey)
    assert key.public_numbers() == der_key.public_numbers()
    if group.jwk is not None:  # 9 of the 112 groups give none
        jwk_key = jwk_public_key(group.jwk)
        assert isinstance(jwk_key, ec.EllipticCurvePublicKey)
        assert key.public_numbers() == jwk_key.public_numbers()


@pytest.mark.parametrize("case", _params(_p256_cases, lambda case: case.id))
def test_es256_signature_vector(case: SignatureCase) -> None:
    # The P1363 form is the 64-byte r||s that JWS uses for ES256 (RFC 7518 section 3.4).
    verifies = _vector_key(case.key_der, "ES256").verify(case.sig, case.msg)
    assert verifies is _expected(case), f"{case.comment} {case.flags}"


def test_the_acceptable_pins_are_exactly_the_acceptable_cases() -> None:
    acceptable = {
        (case.tag, case.tc_id)
        for case in (*_rsa_cases(), *_p256_cases())
        if case.result == "acceptable"
    }
    assert acceptable == set(ACCEPTABLE)


# -- whole JWS tokens ------------------------------------------------------------------------
#
# Every payload in this file is opaque bytes ("foo", "Test", "123400", a line of prose),
# never a JSON object. This contract is about JWTs, whose payload is a claim set, so each
# vector token, valid or not, is denied at row 2 before its algorithm or signature is
# looked at. Three further checks read more out of the vectors:
#
# - the signature step: for tokens whose header says RS256 or ES256, the group's public
#   key (registered from a PEM, as an operator would) checks the signature over the
#   token's own signing input, exactly as row 6 does;
# - the header verdict: with the payload swapped for the claim set ``{}``, ``decide`` meets
#   the vector's own header and signature segments, so rows 2 (strict base64url), 3
#   (algorithm), 5 (key id) and 6 get their turn; RS256/ES256 signatures then fail row 6,
#   since the payload they signed is gone;
# - the algorithms the file uses that are not RS256/ES256 are all refused at row 3.

# Pinned header verdicts, by tcId. Tokens not in three dot-separated parts are row 2 as
# sent and have no header verdict.
HEADER_VERDICTS: Mapping[Reason, frozenset[int]] = {
    # An empty header segment (9, 11, 26, 28, 41, 43), spaces or "?" or "#" in the header
    # or signature segment (360-366, 372): not three base64url parts.
    Reason.MALFORMED: frozenset({9, 11, 26, 28, 41, 43, *range(360, 367), 372}),
    # HS256 and "none" (1-16, 31), RS384 and RS512 (264-271), PS256/384/512 (272-331,
    # 333-340), none/NONE (341-344), the RFC 7520 PS384/ES512/HS256 examples, and the
    # base64 group, all HS256 (357-377 but for its broken header/signature segments).
    Reason.UNSUPPORTED_ALGORITHM: frozenset(
        {
            *(1, 2, 3, 5, 6, 8, 16, 31),
            *range(264, 332),
            *range(333, 345),
            *(346, 347, 348, 350, 351, 352),
            *(357, 358, 359, 367, 368, 369, 370, 371, 373, 374, 375, 376, 377),
        }
    ),
    # "rejectsModifiedHeader": the kid became "Xid-ec-sign" / "Xid-rsa-sign".
    Reason.UNKNOWN_KEY_ID: frozenset({25, 40}),
    # RS256/ES256 under a registered kid: the es256, rs256 and SpecialCaseEs256 groups,
    # the RFC 7520 RS256 example, the encryption-key groups and ps512's "UsingRS256".
    Reason.BAD_SIGNATURE: frozenset(
        {
            *(18, 19, 20, 22, 23, 32, 33, 34, 35, 37, 38),
            *range(46, 264),
            *(332, 345, 349, 353, 354, 355, 356),
            *range(378, 402),
        }
    ),
}

# The signature step's answers where they differ from Wycheproof's "result". A PEM key
# file carries no JWK "alg", "use" or "key_ops": by the contract an RSA key is an RS256
# key and a P-256 key an ES256 key, whatever a JWK said. These signatures are genuine.
SIGNATURE_STEP_PINS: Mapping[int, bool] = {
    332: True,  # ps512 "UsingRS256": RS256 by the key whose JWK says alg PS512
    353: True,  # rsa_encryption "rejectWrongUse": the same key, JWK use "enc"
    354: True,  # ec_key_for_encryption "rejectWrongUse"
    355: True,  # rsa_encryption "rejectWrongKeyOps": JWK key_ops ["encrypt"]
    356: True,  # ec_key_for_encryption "rejectWrongKeyOps"
}

# How many tokens of each group reach the signature step: a guard against a parsing
# change quietly emptying the check.
SIGNATURE_STEP_COUNTS: Mapping[str, int] = {
    "rs256": 224,
    "SpecialCaseEs256": 24,
    "es256": 7,
    "rsa_encryption": 2,
    "ec_key_for_encryption": 2,
    "ps512": 1,
    "rfc7520": 1,
    "rfc7520WithKeyOps": 1,
}

OTHER_ALGORITHMS_IN_THE_FILE = frozenset(
    {"HS256", "none", "NONE", "RS384", "RS512", "PS256", "PS384", "PS512", "ES512"}
)

_SUPPORTED = ("RS256", "ES256")
_EMPTY_CLAIMS = b64url(b"{}")


def _header(case: JwsCase) -> dict[str, Any] | None:
    pieces = split_compact(case.jws)
    return pieces.header if pieces and isinstance(pieces.header, dict) else None


def _signature_step_cases() -> list[JwsCase]:
    return [
        case
        for case in jws_case_list()
        if case.public_jwk is not None and (_header(case) or {}).get("alg") in _SUPPORTED
    ]


def _three_part_cases() -> list[JwsCase]:
    return [case for case in jws_case_list() if case.jws.count(".") == 2]


def _registered(jwk: Mapping[str, Any]) -> VerifyKey:
    """The key as the keys directory would hold it: the JWK's key written as a PEM file."""
    alg, key = parse_public_key(public_pem(jwk_public_key(jwk)))
    return VerifyKey(kid=jwk["kid"], alg=alg, public_key=key)


@pytest.fixture(scope="module")
def jws_project() -> dict[str, VerifyKey]:
    """One project holding every public key of the file that the contract accepts.

    The only refused ones are the RFC 7520 P-521 keys. Keys sharing a kid are the same key.
    """
    project: dict[str, VerifyKey] = {}
    for case in jws_case_list():
        jwk = case.public_jwk
        if jwk is None or jwk.get("crv") == "P-521":
            continue
        key = _registered(jwk)
        if key.kid in project:
            assert key.public_key.public_numbers() == project[key.kid].public_key.public_numbers()
        else:
            project[key.kid] = key
    return project


@pytest.mark.parametrize("case", _params(jws_case_list, lambda case: case.id))
def test_jws_vector_token_is_denied_as_malformed(
    case: JwsCase, jws_project: dict[str, VerifyKey]
) -> None:
    pieces = split_compact(case.jws)
    if pieces is not None:
        try:
            claims = json.loads(pieces.payload)
        except ValueError:
            claims = None
        assert not isinstance(claims, dict), "a vector with a claim set: pin its own verdict"
    assert _reason(decide(case.jws, jws_project, Policy(), NOW)) is Reason.MALFORMED


@pytest.mark.parametrize("case", _params(_three_part_cases, lambda case: case.id))
def test_jws_header_verdict(case: JwsCase, jws_project: dict[str, VerifyKey]) -> None:
    header, _, signature = case.jws.split(".")
    token = f"{header}.{_EMPTY_CLAIMS}.{signature}"
    [expected] = [reason for reason, tc_ids in HEADER_VERDICTS.items() if case.tc_id in tc_ids]
    assert _reason(decide(token, jws_project, Policy(), NOW)) is expected
    alg = (_header(case) or {}).get("alg")
    if alg is not None and alg not in _SUPPORTED:
        assert expected is Reason.UNSUPPORTED_ALGORITHM, "row 3 refuses every other alg"


def test_the_header_verdicts_cover_every_three_part_token_once() -> None:
    pinned = Counter(tc_id for tc_ids in HEADER_VERDICTS.values() for tc_id in tc_ids)
    assert all(count == 1 for count in pinned.values())
    assert set(pinned) == {case.tc_id for case in _three_part_cases()}


def test_every_other_algorithm_in_the_file_is_refused_at_row_3() -> None:
    refused = {
        (_header(case) or {}).get("alg")
        for case in jws_case_list()
        if case.tc_id in HEADER_VERDICTS[Reason.UNSUPPORTED_ALGORITHM]
    }
    assert refused - {None} == OTHER_ALGORITHMS_IN_THE_FILE


@pytest.mark.parametrize("case", _params(_signature_step_cases, lambda case: case.id))
def test_jws_signature_step(case: JwsCase) -> None:
    assert case.public_jwk is not None
    pieces = split_compact(case.jws)
    assert pieces is not None
    key = _registered(case.public_jwk)
    assert key.alg == pieces.header["alg"]
    expected = SIGNATURE_STEP_PINS.get(case.tc_id, case.result == "valid")
    assert key.verify(pieces.signature, pieces.signing_input) is expected


def test_the_signature_step_reaches_the_groups_it_should() -> None:
    counts = Counter(case.group_comment for case in _signature_step_cases())
    assert counts == SIGNATURE_STEP_COUNTS


# -- key loading (json_web_key_test.json) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    alg: Algorithm


@dataclass(frozen=True, slots=True)
class Refused:
    message: str
    builds: bool  # whether the JWK builds a key at all (a broken one does not)


@dataclass(frozen=True, slots=True)
class NotAKey:
    """The JWK describes no key: it cannot reach a PEM file, let alone be registered."""


# By tcId. The contract accepts RSA of 2048 to 8192 bits and EC P-256, and nothing else;
# a PEM file carries the key alone, without a JWK's alg, use or key_ops.
KEY_LOADING: Mapping[int, Accepted | Refused | NotAKey] = {
    5: Accepted("RS256"),  # rs256 "acceptsValid"
    6: Accepted("RS256"),  # Wycheproof refuses the JWK's alg RSA1_5 and use "enc"
    7: Refused(  # Wycheproof "rejectsKeyWithRocaVulnerability": a 2049-bit ROCA modulus
        "RSA key with the ROCA weakness (CVE-2017-15361): its private key can be recovered; "
        "make a new key pair with up-to-date software",
        builds=True,
    ),
    8: Refused("RSA key of 1024 bits (accepted: 2048 to 8192)", builds=True),
    9: Refused("unreadable PEM public key", builds=False),  # e = 1
    19: Accepted("ES256"),  # P-256 key whose JWK says alg ES521
    20: Accepted("ES256"),  # P-256 key whose JWK says alg ES224
    21: Accepted("ES256"),  # P-256 key whose JWK says use "enc"
    22: Refused("unreadable PEM public key", builds=False),  # a point not on P-256
    23: Refused("unreadable PEM public key", builds=False),  # P-256 coordinates called P-384
    24: NotAKey(),  # kty "RSA" with EC fields: no n, no e
}

# Groups about symmetric keys and JWK key sets, which have no PEM public-key form. (The
# keys directory names each key by its file, so a duplicate kid cannot arise either.)
NOT_ABOUT_PEM_KEYS = frozenset(
    {
        "jws_mixedSymmetryKeyset",
        "jws_keyset",
        "jws_duplicate_kid",
        "HS256",
        "HS384",
        "HS512",
        "invalid_aes_gcm_key",
        "invalid_aes_kw_key",
    }
)


def _key_loading_cases() -> list[JwkCase]:
    return [case for case in jwk_case_list() if case.group_comment not in NOT_ABOUT_PEM_KEYS]


def test_every_key_set_vector_is_either_about_pem_keys_or_set_aside() -> None:
    assert {case.tc_id for case in _key_loading_cases()} == set(KEY_LOADING)
    assert {case.group_comment for case in jwk_case_list()} >= NOT_ABOUT_PEM_KEYS


@pytest.mark.parametrize("case", _params(_key_loading_cases, lambda case: case.id))
def test_jwk_key_loading(case: JwkCase) -> None:
    [jwk] = case.public_keys
    expected = KEY_LOADING[case.tc_id]
    if isinstance(expected, NotAKey):
        with pytest.raises(ValueError, match="JWK without"):
            jwk_public_key(jwk)
        with pytest.raises(ValueError, match="JWK without"):
            jwk_pem(jwk)
        return
    if isinstance(expected, Accepted) or expected.builds:
        jwk_public_key(jwk)
    else:
        with pytest.raises(ValueError, match=r"must be|not on the curve"):
            jwk_public_key(jwk)
    # Through the same door as a key file, with the JWK's numbers as they are.
    pem = jwk_pem(jwk)
    if isinstance(expected, Accepted):
        alg, key = parse_public_key(pem)
        assert alg == expected.alg
        assert key.public_numbers() == jwk_public_key(jwk).public_numbers()
    else:
        with pytest.raises(KeyRejected, match=re.escape(expected.message)):
            parse_public_key(pem)


def _valid_jwks() -> list[Mapping[str, Any]]:
    jwks = [case.public_jwk for case in jws_case_list() if case.public_jwk is not None]
    jwks += [jwk for case in jwk_case_list() for jwk in case.public_keys]
    return [jwk for jwk in jwks if _builds(jwk)]


def _builds(jwk: Mapping[str, Any]) -> bool:
    try:
        jwk_public_key(jwk)
    except ValueError:
        return False
    return True


def test_the_hand_written_pem_is_the_standard_encoding_of_a_valid_key() -> None:
    # jwk_pem writes DER by hand so that broken keys can reach parse_public_key at all;
    # on every valid key it must agree byte for byte with cryptography's own encoding,
    # or the refusals above could be refusals of our DER rather than of the key.
    jwks = _valid_jwks()
    assert len(jwks) > 20
    for jwk in jwks:
        assert jwk_pem(jwk) == public_pem(jwk_public_key(jwk)), jwk.get("kid")
