"""authz_server.jwk: JWKs in and out, and thumbprints, through joserfc under the key rules.

The same behaviours as the ``keys add`` and ``keys export`` tests of test_admin.py, called
on the module directly, plus the edges of its own: which members are refused and why,
and that whatever a JWK holds, a refusal is a KeyRejected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import KeySet

import authz_server.jwk
from authz_server.jwk import is_jwk, jwk_to_pem, public_jwk, thumbprint
from authz_server.keys import KeyRejected, VerifyKey, parse_public_key
from authz_server.tokens import PrivateKey
from tests.support import b64, verify_key

# RFC 7638 section 3.1: an RSA key and its SHA-256 JWK thumbprint.
RFC7638_JWK: Final = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
    "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
    "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
    "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT: Final = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
RFC7638_PUBLIC: Final = {name: RFC7638_JWK[name] for name in ("kty", "n", "e")}


def ec_jwk(key: PrivateKey, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    assert isinstance(numbers, ec.EllipticCurvePublicNumbers)
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
        **extra,
    }


def rsa_jwk(public: rsa.RSAPublicKey, **extra: Any) -> dict[str, Any]:
    n, e = public.public_numbers().n, public.public_numbers().e
    return {
        "kty": "RSA",
        "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")),
        "e": b64(e.to_bytes((e.bit_length() + 7) // 8, "big")),
        **extra,
    }


def curve_jwk(curve: ec.EllipticCurve, crv: str) -> dict[str, Any]:
    numbers = ec.generate_private_key(curve).public_key().public_numbers()
    size = (curve.key_size + 7) // 8
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64(numbers.x.to_bytes(size, "big")),
        "y": b64(numbers.y.to_bytes(size, "big")),
    }


def rfc7638(jwk: dict[str, Any]) -> str:
    """The thumbprint computed here by hand, independently of the code under test."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = "{" + ",".join(f'"{name}":"{jwk[name]}"' for name in members) + "}"
    return b64(hashlib.sha256(canonical.encode()).digest())


def encoded(document: object) -> bytes:
    return json.dumps(document).encode()


def converted(document: object) -> tuple[bytes, str | None]:
    return jwk_to_pem(encoded(document))


def test_the_public_names_are_those_of_admin_jwk() -> None:
    assert authz_server.jwk.__all__ == ["is_jwk", "jwk_to_pem", "public_jwk", "thumbprint"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"kty": "EC"}', True),
        (b'  \n{"keys": []}', True),
        (b"-----BEGIN PUBLIC KEY-----\n", False),
        (b"[{}]", False),
        (b"", False),
    ],
)
def test_json_objects_are_jwks_and_anything_else_is_left_to_the_pem_reader(
    data: bytes, expected: bool
) -> None:
    assert is_jwk(data) is expected


# -- import ---------------------------------------------------------------------------


def test_an_rsa_jwk_becomes_the_pem_of_its_key_with_its_kid() -> None:
    pem, kid = converted(RFC7638_JWK)
    alg, key = parse_public_key(pem)
    assert (alg, kid) == ("RS256", "2011-04-29")
    assert isinstance(key, rsa.RSAPublicKey)
    assert rsa_jwk(key) == RFC7638_PUBLIC


def test_an_ec_jwk_becomes_the_pem_of_its_key(ec_key: PrivateKey) -> None:
    jwk = ec_jwk(ec_key, use="sig", alg="ES256", key_ops=["verify"], kid="laptop")
    pem, kid = converted(jwk)
    assert pem == ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert parse_public_key(pem)[0] == "ES256"
    assert kid == "laptop"


def test_a_jwks_of_one_key_is_that_key(ec_key: PrivateKey, rsa_key: PrivateKey) -> None:
    assert converted({"keys": [ec_jwk(ec_key)]}) == converted(ec_jwk(ec_key))
    public = rsa_key.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert converted({"keys": [rsa_jwk(public)]}) == converted(rsa_jwk(public))


@pytest.mark.parametrize("kid", [None, "", 7, ["a"]], ids=["absent", "empty", "number", "list"])
def test_a_kid_that_is_not_a_non_empty_string_is_no_kid(ec_key: PrivateKey, kid: object) -> None:
    jwk = ec_jwk(ec_key) if kid is None else ec_jwk(ec_key, kid=kid)
    assert converted(jwk)[1] is None


def test_members_outside_the_key_material_are_ignored(ec_key: PrivateKey) -> None:
    """joserfc would refuse some of these; they are not the key, and never were a reason."""
    odd = {"x5c": "not a list", "ext": True, "x5t": 5, "iat": "2020", "custom": {"a": [1]}}
    assert converted(ec_jwk(ec_key, **odd)) == converted(ec_jwk(ec_key))


def test_padded_base64url_members_are_read_as_before(ec_key: PrivateKey) -> None:
    jwk = ec_jwk(ec_key)
    padded = {**jwk, "x": jwk["x"] + "=", "y": jwk["y"] + "="}  # 32 bytes: one '=' of padding
    assert converted(padded) == converted(jwk)


def test_a_key_under_2048_bits_is_refused_by_the_key_rules_without_a_warning() -> None:
    """joserfc warns on such keys; pytest's filterwarnings=error would turn that into a
    failure here, and on the command line it would be a second line for one refusal."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(KeyRejected, match=r"^RSA key of 1024 bits \(accepted: 2048 to 8192\)$"):
        converted(rsa_jwk(small))


# -- refusals ---------------------------------------------------------------------------


def _with(make: Callable[[PrivateKey], dict[str, Any]], **members: Any) -> Callable[..., Any]:
    return lambda k: {**make(k), **members}


def _okp_ed25519(_: PrivateKey) -> dict[str, Any]:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}


def _non_canonical(text: str) -> str:
    """The same bytes with a stray bit set in the unused tail (43 characters: 2 spare bits)."""
    assert len(text) % 4 == 3
    canonical = "AEIMQUYcgkosw048"
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    stray = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    assert stray not in canonical
    return text[:-1] + stray


REFUSALS: Final = [
    pytest.param(
        _with(ec_jwk, d=b64(b"\x01" * 32)),
        "a private key: register only the public key",
        id="private-ec",
    ),
    *(
        pytest.param(
            lambda k, member=member: {**RFC7638_PUBLIC, member: "AQAB"},
            "a private key: register only the public key",
            id=f"private-rsa-{member}",
        )
        for member in ("d", "p", "q", "dp", "dq", "qi", "oth")
    ),
    pytest.param(
        lambda k: rsa_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
        ),
        "RSA key of 1024 bits (accepted: 2048 to 8192)",
        id="rsa-1024",
    ),
    pytest.param(
        lambda k: {**RFC7638_PUBLIC, "e": b64((2**40 + 1).to_bytes(6, "big"))},
        "RSA key with a 41-bit public exponent (accepted: odd, 3 to 2^32 - 1)",
        id="rsa-huge-exponent",
    ),
    pytest.param(
        lambda k: {**RFC7638_PUBLIC, "e": "AQ"},
        "invalid RSA JWK (e must be >= 3 and < n.)",
        id="rsa-exponent-1",
    ),
    pytest.param(
        lambda k: curve_jwk(ec.SECP384R1(), "P-384"),
        "EC key on curve secp384r1 (accepted: P-256 for ES256)",
        id="p-384",
    ),
    pytest.param(
        lambda k: curve_jwk(ec.SECP521R1(), "P-521"),
        "EC key on curve secp521r1 (accepted: P-256 for ES256)",
        id="p-521",
    ),
    pytest.param(
        lambda k: curve_jwk(ec.SECP256K1(), "secp256k1"),
        "EC key on curve secp256k1 (accepted: P-256 for ES256)",
        id="secp256k1",
    ),
    pytest.param(_with(ec_jwk, crv="P-257"), 'EC JWK on unknown curve "P-257"', id="unknown-curve"),
    pytest.param(_with(ec_jwk, crv=256), "EC JWK on unknown curve 256", id="curve-not-a-string"),
    pytest.param(
        lambda k: {**ec_jwk(k), "x": b64(b"\x01" * 33)},
        "EC JWK whose x or y is not 32 bytes long for P-256",
        id="x-33-bytes",
    ),
    pytest.param(
        lambda k: {**ec_jwk(k), "y": ec_jwk(k)["x"]},
        "EC JWK whose x, y is not a point on P-256",
        id="not-on-curve",
    ),
    pytest.param(
        _okp_ed25519, "Ed25519 key (accepted: RSA for RS256, EC P-256 for ES256)", id="ed25519"
    ),
    pytest.param(
        lambda k: {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" * 31)},
        "OKP JWK whose x is not a Ed25519 key",
        id="ed25519-short",
    ),
    pytest.param(
        lambda k: {"kty": "OKP", "crv": "Curve1174", "x": "AA"},
        'OKP JWK on unknown curve "Curve1174"',
        id="okp-unknown-curve",
    ),
    pytest.param(
        lambda k: {"kty": "oct", "k": b64(b"secret")},
        "a shared secret (kty oct): register a public key",
        id="symmetric",
    ),
    pytest.param(
        lambda k: {"kty": "DSA"},
        'JWK of kty "DSA" (accepted: RSA for RS256, EC P-256 for ES256)',
        id="unknown-kty",
    ),
    pytest.param(
        lambda k: {"n": "AQAB"},
        "JWK of kty null (accepted: RSA for RS256, EC P-256 for ES256)",
        id="no-kty",
    ),
    pytest.param(
        _with(ec_jwk, alg="RS256"),
        'JWK alg "RS256", but this key can verify ES256 only',
        id="alg-mismatch",
    ),
    pytest.param(
        _with(ec_jwk, use="enc"), 'JWK use "enc" (a key for tokens has use sig)', id="use-enc"
    ),
    pytest.param(_with(ec_jwk, key_ops=["sign"]), "JWK key_ops without verify", id="key-ops-sign"),
    pytest.param(
        _with(ec_jwk, key_ops="verify"), "JWK key_ops without verify", id="key-ops-not-a-list"
    ),
    pytest.param(
        lambda k: {"keys": [ec_jwk(k), ec_jwk(k)]},
        "a JWKS with 2 keys: add one key at a time",
        id="jwks-of-two",
    ),
    pytest.param(
        lambda k: {"keys": []}, "a JWKS with 0 keys: add one key at a time", id="jwks-of-none"
    ),
    pytest.param(
        lambda k: {"keys": ec_jwk(k)},
        "a JWKS with no list of keys: add one key at a time",
        id="jwks-keys-not-a-list",
    ),
    pytest.param(
        lambda k: {"keys": ["a"]}, "not a JWK (expected a JSON object)", id="jwks-of-a-string"
    ),
    pytest.param(lambda k: [ec_jwk(k)], "not a JWK (expected a JSON object)", id="array"),
    pytest.param(_with(ec_jwk, x="not base64!"), "JWK member x is not base64url", id="bad-base64"),
    pytest.param(_with(ec_jwk, x="a+b/"), "JWK member x is not base64url", id="standard-base64"),
    pytest.param(_with(ec_jwk, y="AAAAA"), "JWK member y is not base64url", id="length-4n+1"),
    pytest.param(_with(ec_jwk, x="="), "JWK member x is not base64url", id="only-padding"),
    pytest.param(
        lambda k: {**ec_jwk(k), "x": _non_canonical(ec_jwk(k)["x"])},
        "JWK member x is not base64url",
        id="stray-bits",
    ),
    pytest.param(_with(ec_jwk, x=""), "JWK member x missing or not a string", id="x-empty"),
    pytest.param(_with(ec_jwk, y=None), "JWK member y missing or not a string", id="y-null"),
    pytest.param(
        lambda k: {"kty": "RSA", "n": "AQAB", "e": 3},
        "JWK member e missing or not a string",
        id="e-number",
    ),
]


@pytest.mark.parametrize(("make", "reason"), REFUSALS)
def test_a_jwk_that_is_not_an_acceptable_public_key_is_refused_with_its_reason(
    ec_key: PrivateKey, make: Callable[[PrivateKey], object], reason: str
) -> None:
    with pytest.raises(KeyRejected) as refused:
        converted(make(ec_key))
    assert str(refused.value) == reason


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"kty": "EC",}', b"\xff{}", b"[" * 100_000],
    ids=["truncated", "trailing-comma", "not-utf8", "deep"],
)
def test_what_is_not_json_is_refused_as_such(data: bytes) -> None:
    with pytest.raises(KeyRejected, match=r"^not valid JSON \(expected a JWK\)$"):
        jwk_to_pem(data)


MEMBER_VALUES: Final = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=8),
    st.sampled_from(["AQAB", "AA", "", "=", "P-256", "Ed25519", "sig", "verify", "RS256"]),
    st.lists(st.sampled_from(["verify", "sign", 1]), max_size=2),
)
MEMBER_NAMES: Final = st.sampled_from(
    ["kty", "crv", "x", "y", "n", "e", "d", "alg", "use", "key_ops", "kid", "k", "keys"]
)


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from(["ec", "rsa", "okp", "empty"]),
    changes=st.dictionaries(MEMBER_NAMES, MEMBER_VALUES, max_size=3),
    removed=st.sets(MEMBER_NAMES, max_size=2),
    in_a_set=st.booleans(),
)
def test_whatever_a_jwk_holds_the_answer_is_a_key_or_a_key_rejected(
    base: str, changes: dict[str, Any], removed: set[str], in_a_set: bool
) -> None:
    """No joserfc error, cryptography error or warning gets out, and a key that comes out
    is one the key rules accept."""
    ec_base = curve_jwk(ec.SECP256R1(), "P-256")
    start = {
        "ec": ec_base,
        "rsa": RFC7638_JWK,
        "okp": {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" * 32)},
        "empty": {},
    }[base]
    jwk = {k: v for k, v in {**start, **changes}.items() if k not in removed}
    try:
        pem, _kid = converted({"keys": [jwk]} if in_a_set else jwk)
    except KeyRejected:
        return
    assert parse_public_key(pem)[0] in ("RS256", "ES256")


# -- thumbprints and export -------------------------------------------------------------


def test_the_rfc7638_example_key_has_the_rfc7638_thumbprint() -> None:
    _alg, key = parse_public_key(converted(RFC7638_JWK)[0])
    assert thumbprint(key) == RFC7638_THUMBPRINT


def test_a_thumbprint_is_that_of_the_required_members_only(ec_key: PrivateKey) -> None:
    _alg, key = parse_public_key(converted(ec_jwk(ec_key, kid="k", use="sig"))[0])
    assert thumbprint(key) == rfc7638(ec_jwk(ec_key))


def test_export_writes_the_registered_key_with_its_kid_and_algorithm(
    ec_key: PrivateKey, rsa_key: PrivateKey
) -> None:
    es, rs = verify_key("es-kid", ec_key), verify_key("rs-kid", rsa_key)
    exported = public_jwk(es)
    assert list(exported) == ["kty", "use", "alg", "kid", "crv", "x", "y"]
    assert exported == ec_jwk(ec_key, use="sig", alg="ES256", kid="es-kid")
    public = rsa_key.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    exported = public_jwk(rs)
    assert list(exported) == ["kty", "use", "alg", "kid", "n", "e"]
    assert exported == rsa_jwk(public, use="sig", alg="RS256", kid="rs-kid")


def test_an_exported_jwks_comes_back_as_the_same_keys_here_and_in_joserfc(
    ec_key: PrivateKey, rsa_key: PrivateKey
) -> None:
    registered = [verify_key("es-kid", ec_key), verify_key("rs-kid", rsa_key)]
    jwks = json.loads(json.dumps({"keys": [public_jwk(key) for key in registered]}))

    for key, jwk in zip(registered, jwks["keys"], strict=True):
        pem, kid = converted({"keys": [jwk]})
        alg, public = parse_public_key(pem)
        back = VerifyKey(kid=kid or "", alg=alg, public_key=public)
        assert (back.kid, back.alg) == (key.kid, key.alg)
        assert back.public_key.public_numbers() == key.public_key.public_numbers()
        assert thumbprint(back.public_key) == thumbprint(key.public_key) == rfc7638(jwk)

    # Another reader of the same document: joserfc's own key set.
    key_set = KeySet.import_key_set(jwks)
    assert [(k.kid, k.alg, k.thumbprint()) for k in key_set] == [
        (k.kid, k.alg, thumbprint(k.public_key)) for k in registered
    ]
