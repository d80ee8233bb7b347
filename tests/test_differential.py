"""The gate's verifier beside joserfc, an independent JOSE implementation.

Two directions. Tokens joserfc signs, with claims of the types the contract accepts, are
allowed here. And every token the gate allows, joserfc verifies too: the gate may refuse
more than joserfc does (duplicate members, ``crit``, NaN, a BOM), never less. The second
direction runs over hand-written JSON near the edge of what is valid (whitespace, escapes,
raw non-ASCII, numbers in every spelling, any member order, extra header members), and
over the same tokens broken in the ways attacks and sloppy signers break them.

The end of the file pins ``mint``: joserfc signs, and the bytes are those it always made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from authz_server.keys import VerifyKey
from authz_server.tokens import PrivateKey, mint, public_pem, sign
from authz_server.verifier import MAX_TOKEN_LENGTH, Allowed, Policy, decide
from tests.support import b64, verify_key

NOW: Final = 1_700_000_000
RS_KID: Final = "rs-key"
ES_KID: Final = "es-key"
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
DIFFERENTIAL: Final = settings(max_examples=200, deadline=None)

ALGS: Final = st.sampled_from(["RS256", "ES256"])
KIDS: Final = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
# The header members RFC 7515 and RFC 7797 register; joserfc type-checks each of them.
REGISTERED_HEADER: Final = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "b64"}
)


@dataclass(frozen=True)
class Signer:
    """One registered key, as the gate holds it and as joserfc holds it."""

    alg: str
    private: PrivateKey
    joserfc_private: RSAKey | ECKey
    joserfc_public: RSAKey | ECKey


@dataclass(frozen=True)
class World:
    signers: dict[str, Signer]  # by algorithm
    keys: dict[str, VerifyKey]  # the project's keys, by kid

    def with_kid(self, kid: str, alg: str) -> dict[str, VerifyKey]:
        """The project's keys with the ``alg`` key registered as ``kid`` too."""
        return {**self.keys, kid: verify_key(kid, self.signers[alg].private)}


def _signer(alg: str, private: PrivateKey) -> Signer:
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_class = RSAKey if alg == "RS256" else ECKey
    return Signer(
        alg, private, key_class.import_key(pem), key_class.import_key(public_pem(private))
    )


@pytest.fixture(scope="module")
def world(rsa_key: PrivateKey, ec_key: PrivateKey) -> World:
    return World(
        signers={"RS256": _signer("RS256", rsa_key), "ES256": _signer("ES256", ec_key)},
        keys={RS_KID: verify_key(RS_KID, rsa_key), ES_KID: verify_key(ES_KID, ec_key)},
    )


def joserfc_verifies(token: str, signer: Signer) -> bool:
    """joserfc's verdict on ``token`` with ``signer``'s public key, its algorithm only.

    Two of joserfc's defaults are set aside, each a policy of its own rather than a
    judgement on the token: it refuses header members it does not know (the gate, like
    RFC 7515 without ``crit``, ignores them) and headers over 512 bytes (the gate's only
    size limit is the contract's 8 KiB token).
    """
    registry = jws.JWSRegistry(algorithms=[signer.alg], strict_check_header=False)
    registry.max_header_length = MAX_TOKEN_LENGTH
    try:
        jws.deserialize_compact(token, signer.joserfc_public, registry=registry)
    except JoseError:
        return False
    return True


# -- (a) what joserfc signs, the gate allows ----------------------------------------------

TEXT: Final = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
JSON_VALUES: Final = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
LATER: Final = st.integers(1, 10**40) | st.floats(1, 1e15)  # seconds after now
EARLIER: Final = st.integers(0, 10**40) | st.floats(0, 1e15)  # seconds before now (or now)
AUDIENCES: Final = TEXT | st.lists(TEXT, max_size=3)


@st.composite
def claims_valid_at(draw: st.DrawFn, now: float) -> dict[str, Any]:
    """Claims of the contract's types, with ``now`` inside their validity window."""
    claims: dict[str, Any] = draw(
        st.dictionaries(TEXT.filter(lambda n: n not in ("exp", "nbf", "aud")), JSON_VALUES)
    )
    if draw(st.booleans()):
        claims["exp"] = now + draw(LATER)
    if draw(st.booleans()):
        claims["nbf"] = now - draw(EARLIER)
    if draw(st.booleans()):
        claims["aud"] = draw(AUDIENCES)
    return claims


@DIFFERENTIAL
@given(data=st.data(), alg=ALGS, kid=KIDS)
def test_a_token_joserfc_signs_with_a_registered_key_is_allowed(
    world: World, data: st.DataObject, alg: str, kid: str
) -> None:
    now = data.draw(st.integers(0, 4 * 10**9) | st.floats(0, 4e9), label="now")
    claims = data.draw(claims_valid_at(now), label="claims")
    signer = world.signers[alg]
    token = jwt.encode(
        {"alg": alg, "kid": kid}, dict(claims), signer.joserfc_private, algorithms=[alg]
    )
    assume(len(token) <= MAX_TOKEN_LENGTH)

    decision = decide(token, world.with_kid(kid, alg), Policy(), now)

    assert decision == Allowed(kid)
    assert isinstance(decision, Allowed)
    assert (decision.exp, decision.nbf) == (claims.get("exp"), claims.get("nbf"))


# -- (b) what the gate allows, joserfc verifies --------------------------------------------

WHITESPACE: Final = st.text(" \t\n\r", max_size=2)
# JSON's two-character escapes: each character and the letter that follows the backslash.
SHORT_ESCAPES: Final = dict(zip('"\\/\b\f\n\r\t', '"\\/bfnrt', strict=True))


def _escaped(char: str) -> str:
    """``char`` as JSON \\u escapes (a surrogate pair beyond the BMP)."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04x}"


def _string(draw: st.DrawFn, text: str) -> str:
    out = []
    for char in text:
        must_escape = char in '"\\' or ord(char) < 0x20 or 0xD800 <= ord(char) < 0xE000
        spellings = [_escaped(char)]
        if char in SHORT_ESCAPES:
            spellings.append("\\" + SHORT_ESCAPES[char])
        if not must_escape:
            spellings.append(char)
        out.append(draw(st.sampled_from(spellings)))
    return '"' + "".join(out) + '"'


def _number(draw: st.DrawFn, value: int | float) -> str:
    if isinstance(value, float):
        return repr(value)  # the shortest spelling that reads back as the same float
    # Spellings of the same number; some read back as a float, which is a number too.
    spellings = [str(value), f"{value}e0", f"{value}E+0"]
    if abs(value) < 2**53:  # exactly a float: no rounding can move a time across now
        spellings.append(f"{value}.0")
        if value:  # JSON allows no leading zero: 0 has no `00e-1` spelling
            spellings += [f"{value}0e-1", f"{value}00E-2"]
    return draw(st.sampled_from(spellings))


def write_json(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text, spelled one of the many ways that mean the same."""
    if isinstance(value, dict):
        members = draw(st.permutations(list(value.items())))
        inner = ",".join(
            f"{draw(WHITESPACE)}{_string(draw, k)}{draw(WHITESPACE)}:"
            f"{draw(WHITESPACE)}{write_json(draw, v)}{draw(WHITESPACE)}"
            for k, v in members
        )
        return "{" + (inner or draw(WHITESPACE)) + "}"
    if isinstance(value, list):
        inner = ",".join(
            f"{draw(WHITESPACE)}{write_json(draw, v)}{draw(WHITESPACE)}" for v in value
        )
        return "[" + (inner or draw(WHITESPACE)) + "]"
    if isinstance(value, str):
        return _string(draw, value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _number(draw, value)


ANY_TEXT: Final = st.text(max_size=12)  # lone surrogates too: written as \u escapes
ANY_JSON: Final = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**60), 10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)
# Registered members, with values of the types RFC 7515 gives them (a wrong type is one
# of the known differences, below).
REGISTERED_EXTRAS: Final = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["JWT", "jwt", "at+jwt", "application/jwt", ""]),
        "cty": ANY_TEXT,
        "x5t": ANY_TEXT,
        "x5t#S256": ANY_TEXT,
        "x5c": st.lists(ANY_TEXT, max_size=2),
        "b64": st.just(True),  # false is one of the known differences
    },
)
UNREGISTERED_EXTRAS: Final = st.dictionaries(
    ANY_TEXT.filter(lambda name: name not in REGISTERED_HEADER), ANY_JSON, max_size=3
)


@dataclass(frozen=True)
class Shape:
    """A token's JSON, written by hand, and what it means."""

    alg: str
    kid: str
    header_json: str
    payload_json: str


@st.composite
def shapes(draw: st.DrawFn, algs: st.SearchStrategy[str] = ALGS) -> Shape:
    """A header and claims the gate allows at NOW, in an unusual spelling."""
    alg, kid = draw(algs), draw(KIDS)
    header = {**draw(UNREGISTERED_EXTRAS), **draw(REGISTERED_EXTRAS), "alg": alg, "kid": kid}
    claims: dict[str, Any] = draw(
        st.dictionaries(ANY_TEXT.filter(lambda n: n not in ("exp", "nbf", "aud")), ANY_JSON)
    )
    if draw(st.booleans()):
        claims["exp"] = NOW + draw(LATER)
    if draw(st.booleans()):
        claims["nbf"] = NOW - draw(EARLIER)
    if draw(st.booleans()):
        claims["aud"] = draw(ANY_TEXT | st.lists(ANY_TEXT, max_size=3))
    return Shape(alg, kid, write_json(draw, header), write_json(draw, claims))


def signed(
    header_json: str | bytes, payload_json: str | bytes, key: PrivateKey, *, pad: str = ""
) -> str:
    def segment(part: str | bytes) -> str:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        return b64(raw) + pad

    signing_input = f"{segment(header_json)}.{segment(payload_json)}"
    return f"{signing_input}.{b64(sign(key, signing_input.encode('ascii')))}"


@DIFFERENTIAL
@given(shape=shapes())
def test_an_unusual_spelling_of_a_valid_token_is_allowed_here_and_verified_by_joserfc(
    world: World, shape: Shape
) -> None:
    signer = world.signers[shape.alg]
    token = signed(shape.header_json, shape.payload_json, signer.private)
    assume(len(token) <= MAX_TOKEN_LENGTH)

    assert decide(token, world.with_kid(shape.kid, shape.alg), Policy(), NOW) == Allowed(shape.kid)
    assert joserfc_verifies(token, signer)


def _member(json_text: str, member: str) -> str:
    """``member`` (``"name":value``) added first in a JSON object."""
    rest = json_text.lstrip()[1:]
    return "{" + member + ("," if rest.strip(" \t\n\r") != "}" else "") + rest


def _other_alg(alg: str) -> str:
    return "ES256" if alg == "RS256" else "RS256"


def _stray_bits(token: str) -> str:
    head, signature = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(signature) % 4 in (2, 3):  # an unused bit to set
        signature = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    return f"{head}.{signature}"


def _es256_variant(token: str, rewrite: Callable[[int, int], bytes]) -> str:
    head, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    assert len(raw) == 64
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    return f"{head}.{b64(rewrite(r, s))}"


@dataclass(frozen=True)
class Breaker:
    """A way to spoil a token: ``make(shape, key, other_key)`` returns the spoilt token."""

    make: Callable[[Shape, PrivateKey, PrivateKey], str]
    gate_allows: bool
    algs: tuple[str, ...] = ("RS256", "ES256")


def _token(shape: Shape, key: PrivateKey) -> str:
    return signed(shape.header_json, shape.payload_json, key)


def _s_negated(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")


def _s_plus_n(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + (s + P256_ORDER).to_bytes(33, "big")


BREAKERS: Final[dict[str, Breaker]] = {
    "unbroken": Breaker(lambda sh, key, _: _token(sh, key), gate_allows=True),
    "ES256 s negated (the other valid signature)": Breaker(
        lambda sh, key, _: _es256_variant(_token(sh, key), _s_negated), True, ("ES256",)
    ),
    "duplicate kid": Breaker(
        lambda sh, key, _: signed(
            _member(sh.header_json, '"kid":"someone-else"'), sh.payload_json, key
        ),
        gate_allows=False,
    ),
    "duplicate alg": Breaker(
        lambda sh, key, _: signed(
            _member(sh.header_json, f'"alg":"{_other_alg(sh.alg)}"'), sh.payload_json, key
        ),
        gate_allows=False,
    ),
    "crit": Breaker(
        lambda sh, key, _: signed(_member(sh.header_json, '"crit":["b64"]'), sh.payload_json, key),
        gate_allows=False,
    ),
    "duplicate exp": Breaker(
        lambda sh, key, _: signed(
            sh.header_json, _member(_member(sh.payload_json, '"exp":1'), '"exp":4e9'), key
        ),
        gate_allows=False,
    ),
    "NaN claim": Breaker(
        lambda sh, key, _: signed(sh.header_json, _member(sh.payload_json, '"x":NaN'), key),
        gate_allows=False,
    ),
    "1e400 claim": Breaker(
        lambda sh, key, _: signed(sh.header_json, _member(sh.payload_json, '"x":1e400'), key),
        gate_allows=False,
    ),
    "BOM": Breaker(
        lambda sh, key, _: signed("\ufeff" + sh.header_json, sh.payload_json, key),
        gate_allows=False,
    ),
    "trailing comma": Breaker(
        lambda sh, key, _: signed(sh.header_json, sh.payload_json.rstrip()[:-1] + ",}", key),
        gate_allows=False,
    ),
    "trailing data": Breaker(
        lambda sh, key, _: signed(sh.header_json + " {}", sh.payload_json, key),
        gate_allows=False,
    ),
    "payload an array": Breaker(
        lambda sh, key, _: signed(sh.header_json, f"[{sh.payload_json}]", key),
        gate_allows=False,
    ),
    "payload not UTF-8": Breaker(
        lambda sh, key, _: signed(
            sh.header_json, sh.payload_json.encode()[:-1] + b',"\xff":1}', key
        ),
        gate_allows=False,
    ),
    "padded segments": Breaker(
        lambda sh, key, _: signed(sh.header_json, sh.payload_json, key, pad="="),
        gate_allows=False,
    ),
    "signed by the other key": Breaker(lambda sh, _, other: _token(sh, other), gate_allows=False),
    "stray bits in the signature": Breaker(
        lambda sh, key, _: _stray_bits(_token(sh, key)), gate_allows=False
    ),
    "ES256 signature as DER": Breaker(
        lambda sh, key, _: _es256_variant(_token(sh, key), encode_dss_signature),
        False,
        ("ES256",),
    ),
    "ES256 s + n": Breaker(
        lambda sh, key, _: _es256_variant(_token(sh, key), _s_plus_n), False, ("ES256",)
    ),
    "a fourth segment": Breaker(lambda sh, key, _: _token(sh, key) + ".e30", gate_allows=False),
}


@pytest.mark.parametrize("breaker", list(BREAKERS))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_every_token_the_gate_allows_joserfc_verifies(
    world: World, breaker: str, data: st.DataObject
) -> None:
    """Each way of breaking a token, a few times over; the gate's own answer to each is
    pinned too, since joserfc accepting a token (a duplicate member, say) would otherwise
    let the gate start allowing it unnoticed."""
    spoil = BREAKERS[breaker]
    shape = data.draw(shapes(st.sampled_from(spoil.algs)), label="shape")
    signer = world.signers[shape.alg]
    token = spoil.make(shape, signer.private, world.signers[_other_alg(shape.alg)].private)
    assume(len(token) <= MAX_TOKEN_LENGTH)

    decision = decide(token, world.with_kid(shape.kid, shape.alg), Policy(), NOW)

    assert (decision == Allowed(shape.kid)) is spoil.gate_allows, decision
    if spoil.gate_allows:
        assert joserfc_verifies(token, signer), token


@pytest.mark.parametrize(
    "member",
    ['"typ":5', '"cty":["a"]', '"x5c":"not a list"', '"jku":"not a URL"', '"b64":"yes"'],
)
def test_known_difference_a_registered_header_member_of_another_type(
    world: World, member: str
) -> None:
    """The gate reads only ``alg`` and ``kid`` from a header (row 2 asks for a JSON object
    without ``crit``); joserfc also type-checks the other members RFC 7515 registers.
    Neither reading changes what was signed or by whom. Pinned here so that the difference
    is a decision, documented, rather than a surprise."""
    signer = world.signers["ES256"]
    token = signed(_member('{"alg":"ES256","kid":"k"}', member), "{}", signer.private)
    assert decide(token, world.with_kid("k", "ES256"), Policy(), NOW) == Allowed("k")
    assert not joserfc_verifies(token, signer)


def test_known_difference_b64_false_without_crit(world: World) -> None:
    """RFC 7797 (unencoded payload) is in use only with ``b64`` listed in ``crit``, and
    joserfc refuses ``"b64":false`` without it. The gate refuses every ``crit`` and reads
    the payload as base64url JSON whatever ``b64`` says; in the compact form the signed
    bytes are the same either way. Pinned, as above."""
    signer = world.signers["ES256"]
    token = signed('{"alg":"ES256","kid":"k","b64":false}', "{}", signer.private)
    assert decide(token, world.with_kid("k", "ES256"), Policy(), NOW) == Allowed("k")
    assert not joserfc_verifies(token, signer)
    with_crit = signed('{"alg":"ES256","kid":"k","b64":false,"crit":["b64"]}', "{}", signer.private)
    assert decide(with_crit, world.with_kid("k", "ES256"), Policy(), NOW) != Allowed("k")


# -- mint: joserfc signs, and the bytes are those mint always made -------------------------


def _hand_built_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return ".".join(
        b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )


CLAIMS: Final = [{}, {"exp": NOW + 60, "aud": ["a", "b"]}, {"sub": "é\udcff", "n": 10**40}]


@pytest.mark.parametrize("claims", CLAIMS, ids=["empty", "times", "unicode"])
def test_an_rs256_token_is_byte_for_byte_the_hand_built_one(
    rsa_key: PrivateKey, claims: dict[str, Any]
) -> None:
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    signing_input = _hand_built_input({"alg": "RS256", "typ": "JWT", "kid": "k"}, claims)
    signature = rsa_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert mint(rsa_key, "k", claims) == f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize("claims", CLAIMS, ids=["empty", "times", "unicode"])
def test_an_es256_token_has_the_hand_built_content_and_a_64_byte_r_s_signature(
    ec_key: PrivateKey, claims: dict[str, Any]
) -> None:
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    signing_input, signature = mint(ec_key, "k", claims).rsplit(".", 1)
    assert signing_input == _hand_built_input({"alg": "ES256", "typ": "JWT", "kid": "k"}, claims)
    raw = base64.urlsafe_b64decode(signature + "==")
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    ec_key.public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_joserfc_verifies_what_mint_signs(world: World) -> None:
    for signer in world.signers.values():
        assert joserfc_verifies(mint(signer.private, "k", {"exp": NOW}), signer)


@pytest.mark.parametrize(
    "override",
    [
        {"alg": "none"},
        {"alg": "HS256"},
        {"alg": "ES256"},
        {"crit": ["exp"]},
        {"kid": 5},
        {"x-not-registered": [1, {"a": None}]},
        {"typ": None, "kid": "\udcff"},
    ],
    ids=["none", "hs256", "es256", "crit", "kid-number", "unknown-member", "odd-values"],
)
def test_a_header_override_is_signed_exactly_as_given_by_the_keys_own_algorithm(
    rsa_key: PrivateKey, override: dict[str, Any]
) -> None:
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    header_segment, payload_segment, signature = mint(
        rsa_key, "k", {"a": 1}, header=override
    ).split(".")
    header = json.loads(base64.urlsafe_b64decode(header_segment + "=="))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "k", **override}
    assert list(header) == list({"alg": 0, "typ": 0, "kid": 0, **override})
    rsa_key.public_key().verify(
        base64.urlsafe_b64decode(signature + "=="),
        f"{header_segment}.{payload_segment}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_the_es256_signature_of_sign_is_r_s_of_the_signing_input(ec_key: PrivateKey) -> None:
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    raw = sign(ec_key, b"e30.e30")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    assert len(raw) == 64
    assert decode_dss_signature(encode_dss_signature(r, s)) == (r, s)
    ec_key.public_key().verify(encode_dss_signature(r, s), b"e30.e30", ec.ECDSA(hashes.SHA256()))
