"""Properties of the verifier over inputs nobody wrote by hand (Hypothesis).

For arbitrary text and bytes, for token-shaped garbage, for arbitrary JSON headers and
claims, and for mutations of valid tokens, ``decide`` never raises, always answers with
one of the contract's messages, and allows a token only when its signature is genuinely
valid: either the mutated token still carries the original's signing input and signature,
or an independent check (the ``cryptography`` primitives, called directly) verifies it
with the registered key. Structured tokens are also compared with a model of the
contract's decision table written here from docs/contract.md.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.devtools.requests import check_request
from authz_server.keys import VerifyKey
from authz_server.keystore import ProjectKeys, Snapshot
from authz_server.tokens import PrivateKey, b64url, mint, public_pem, sign
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import MAX_TOKEN_LENGTH, Allowed, Denied, Policy, bearer_token, decide
from tests.jws_oracle import P256_ORDER, PublicKey, genuinely_signed
from tests.support import (
    BAD_AUDIENCE,
    BAD_SIGNATURE,
    CONTRACT_MESSAGES,
    EMPTY_KID,
    EXPIRED,
    MALFORMED,
    NOT_YET,
    UNKNOWN_KID,
    UNSUPPORTED,
)
from tests.wycheproof import b64url_decode

EC_KID: Final = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
RSA_KID: Final = "6b1a3f0e-15a9-11ee-b7c2-0a58538e0d0c"
PROJECT: Final = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
NOW: Final = 1_700_000_000
SUFFIX: Final = "rpc.example.com"

POLICIES: Final = (Policy(), Policy(audience_suffix=SUFFIX), Policy(leeway=30))

PROPERTY: Final = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the world: two registered keys, looked at two independent ways ----------------------------


class Registered:
    """The project's keys as the verifier sees them, and as the oracle sees them."""

    def __init__(self, rsa_key: PrivateKey, ec_key: PrivateKey) -> None:
        from authz_server.keys import parse_public_key

        assert isinstance(rsa_key, rsa.RSAPrivateKey)
        assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
        self.rsa, self.ec = rsa_key, ec_key
        self.private: dict[str, PrivateKey] = {RSA_KID: rsa_key, EC_KID: ec_key}
        self.keys: dict[str, VerifyKey] = {}
        for kid, key in self.private.items():
            alg, public = parse_public_key(public_pem(key))
            self.keys[kid] = VerifyKey(kid=kid, alg=alg, public_key=public)
        self.alg = {RSA_KID: "RS256", EC_KID: "ES256"}
        # The oracle's own view: the algorithm registered for each kid, the key straight
        # from the private key (not through the key loader).
        self.oracle_keys: dict[str, tuple[str, PublicKey]] = {
            kid: (self.alg[kid], key.public_key()) for kid, key in self.private.items()
        }
        # A few valid tokens to mutate, signed once.
        self.valid = [
            mint(ec_key, EC_KID, {}),
            mint(ec_key, EC_KID, {"exp": NOW + 600, "aud": "eth." + SUFFIX, "sub": "a/b?c"}),
            mint(rsa_key, RSA_KID, {"nbf": NOW - 5, "jti": "x" * 40}),
            mint(rsa_key, RSA_KID, {"aud": [SUFFIX, "other"]}),
        ]

    def genuinely_signed(self, token: str) -> bool:
        """The oracle (``jws_oracle``): independent of the verifier's parser and keys."""
        return genuinely_signed(token, self.oracle_keys)


@pytest.fixture(scope="module")
def registered(rsa_key: PrivateKey, ec_key: PrivateKey) -> Registered:
    return Registered(rsa_key, ec_key)


def answer(token: str | None, registered: Registered, policy: Policy = POLICIES[0]) -> str | None:
    """``decide``'s message, or None when it allows; checks it is a contract message and
    that the call is deterministic."""
    decision = decide(token, registered.keys, policy, NOW)
    assert decide(token, registered.keys, policy, NOW) == decision
    if isinstance(decision, Allowed):
        assert decision.kid is not None
        return None
    assert isinstance(decision, Denied)
    assert decision.reason.message in CONTRACT_MESSAGES
    return decision.reason.message


def assert_allowed_only_if_genuine(token: str | None, registered: Registered) -> None:
    for policy in POLICIES:
        if answer(token, registered, policy) is None:
            assert token is not None
            assert registered.genuinely_signed(token), (
                f"allowed without a valid signature: {token!r}"
            )


# -- arbitrary input ---------------------------------------------------------------------------

B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
token_shaped = st.lists(
    st.text(alphabet=B64URL + "=+/. ", max_size=60), min_size=0, max_size=6
).map(".".join)


@PROPERTY
@given(text=st.text())
def test_arbitrary_text_is_denied_with_a_contract_message(
    text: str, registered: Registered
) -> None:
    assert_allowed_only_if_genuine(text, registered)
    assert_allowed_only_if_genuine(bearer_token("Bearer " + text), registered)
    assert decide(text, None, POLICIES[0], NOW) == Allowed(kid=None)


@PROPERTY
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_are_denied_with_a_contract_message(
    data: bytes, registered: Registered
) -> None:
    assert_allowed_only_if_genuine(data.decode("latin-1"), registered)
    assert_allowed_only_if_genuine(data.decode("utf-8", "surrogateescape"), registered)


@PROPERTY
@given(token=token_shaped)
def test_token_shaped_garbage_is_denied_with_a_contract_message(
    token: str, registered: Registered
) -> None:
    assert_allowed_only_if_genuine(token, registered)


# Headers are drawn as scheme + separator + token, and the expected answer is computed from
# those parts, not from the header: arbitrary text almost never starts with "Bearer ", so a
# property over it would assert nothing.
BEARER_SPELLINGS: Final = frozenset(
    "".join(letters) for letters in itertools.product(*((c, c.upper()) for c in "bearer"))
)
schemes = st.one_of(
    st.sampled_from(sorted(BEARER_SPELLINGS)),
    st.sampled_from(["", "Bear", "Beare", "Bearerr", "Bearer:", "Basic", " Bearer", "\tBearer"]),
    # look-alikes: a fullwidth B, a small capital B, a Cyrillic e
    st.sampled_from(["\uff22earer", "\u0299earer", "B\u0435arer"]),
)
separators = st.one_of(
    st.text(alphabet=" ", min_size=1, max_size=4),
    st.sampled_from(["", "\t", "\n", "\u00a0", "\u3000", "\t ", "\u00a0 "]),
)
tokens = st.one_of(
    st.just(""),
    token_shaped,
    # the token is what follows the run of spaces, so it never starts with a space itself
    st.builds(str.__add__, st.characters(exclude_characters=" "), st.text(max_size=40)),
)


@PROPERTY
@given(scheme=schemes, separator=separators, token=tokens)
def test_bearer_token_is_the_text_after_the_scheme_in_any_case_and_a_run_of_spaces(
    scheme: str, separator: str, token: str
) -> None:
    token = token.lstrip(" ")  # token_shaped may start with one
    is_bearer = scheme in BEARER_SPELLINGS and set(separator) == {" "}
    expected = token if is_bearer and token else None
    assert bearer_token(scheme + separator + token) == expected


def test_the_bearer_token_property_draws_each_kind_of_header() -> None:
    """The strategies reach accepted headers, refused schemes, refused separators and
    empty tokens, so the property above asserts every branch of the rule."""
    seen: set[str] = set()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(scheme=schemes, separator=separators, token=tokens)
    def classify(scheme: str, separator: str, token: str) -> None:
        if scheme not in BEARER_SPELLINGS:
            seen.add("scheme refused")
        elif set(separator) != {" "}:
            seen.add("separator refused")
        elif not token.lstrip(" "):
            seen.add("empty token")
        else:
            seen.add("token" if separator == " " else "token after several spaces")

    classify()
    assert seen == {
        "scheme refused",
        "separator refused",
        "empty token",
        "token",
        "token after several spaces",
    }


@PROPERTY
@given(header=st.one_of(st.text(), token_shaped.map(lambda t: "Bearer " + t)))
def test_the_servicer_answers_any_header_with_a_json_rpc_denial(
    header: str, registered: Registered
) -> None:
    snapshot = Snapshot({PROJECT: ProjectKeys(registered.keys, ())})
    service = AuthorizationService(lambda: snapshot, Policy(), clock=lambda: NOW)
    response = service.check(check_request(f"/eth/{PROJECT}", headers={"authorization": header}))
    assert response.WhichOneof("http_response") == "denied_response"
    body = json.loads(response.denied_response.body)
    assert body["code"] == -32013
    assert body["message"] in CONTRACT_MESSAGES
    assert body["project"] == PROJECT


# -- structured tokens against a model of the decision table ------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
times = st.one_of(
    st.integers(min_value=NOW - 100, max_value=NOW + 100),
    st.floats(min_value=NOW - 100, max_value=NOW + 100),
    st.sampled_from([0, -1, -0.0, 10**30, 1e308, -1e308]),
    st.booleans(),  # bool is not a number (row 2), though Python's bool is an int
    json_values,
)
audiences = st.one_of(
    st.sampled_from([SUFFIX, "eth." + SUFFIX, "ETH.RPC.EXAMPLE.COM", "example.org", ""]),
    st.lists(st.sampled_from([SUFFIX, "x.org", "EXAMPLE.ORG"]), max_size=3),
    json_values,
)
headers = st.builds(
    lambda extra, fields: {**extra, **fields},
    st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    st.fixed_dictionaries(
        {},
        optional={
            "alg": st.one_of(
                st.sampled_from(["RS256", "ES256", "none", "HS256", "PS256", "es256", "ES384"]),
                json_values,
            ),
            "kid": st.one_of(st.sampled_from([EC_KID, RSA_KID, "", "unknown"]), json_values),
            "crit": json_values,
            "typ": st.sampled_from(["JWT", "jwt", "at+jwt"]),
        },
    ),
)
claims = st.builds(
    lambda extra, fields: {**extra, **fields},
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    st.fixed_dictionaries({}, optional={"exp": times, "nbf": times, "aud": audiences}),
)

# Arbitrary headers and claims almost never get past rows 2 to 4 (a drawn ``crit``, a
# mistyped claim or an unsupported alg decides first): measured, fewer than 1 token in 300
# reached rows 7 to 9 or the allow. Tokens signed with the header a registered key calls
# for (or nearly: the other key's kid, an unknown kid, the other algorithm) and well-typed
# claims, with times on and around the boundaries, get there.
ALG_OF: Final = {EC_KID: "ES256", RSA_KID: "RS256"}
near_now = st.one_of(
    st.sampled_from([NOW - 30, NOW - 0.5, NOW, NOW + 0.5, NOW + 30]),  # leeway is 0 or 30
    st.integers(min_value=NOW - 60, max_value=NOW + 60),
    st.floats(min_value=NOW - 60, max_value=NOW + 60),
)
well_typed_claims = st.builds(
    lambda times, aud, extra: {**extra, **times, **({} if aud is None else {"aud": aud})},
    st.fixed_dictionaries({}, optional={"exp": near_now, "nbf": near_now}),
    st.sampled_from(["example.org", "eth." + SUFFIX, SUFFIX + ".x", "ETH.RPC.EXAMPLE.COM"])
    | st.lists(st.sampled_from([SUFFIX, "x.org", "EXAMPLE.ORG"]), min_size=1, max_size=3)
    | st.none(),
    st.fixed_dictionaries({}, optional={"sub": st.text(max_size=8), "iat": near_now}),
)


@st.composite
def signed_parts(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A nearly right header, well-typed claims, and the kid whose key signs."""
    signer, other = draw(st.permutations([EC_KID, RSA_KID]))
    kid = draw(st.sampled_from([signer, signer, signer, signer, other, "unknown"]))
    right = ALG_OF.get(kid, "ES256")
    wrong = "ES256" if right == "RS256" else "RS256"
    alg = draw(st.sampled_from([right, right, right, right, wrong]))
    typ = draw(st.sampled_from([{}, {"typ": "JWT"}]))
    return {"alg": alg, "kid": kid, **typ}, draw(well_typed_claims), signer


def model(
    header: dict[str, Any],
    claims: dict[str, Any],
    signed_by: str | None,
    length: int,
    policy: Policy,
) -> str | None:
    """docs/contract.md's decision table, rows 2 to 9, for a project whose keys are
    EC_KID (ES256) and RSA_KID (RS256). ``signed_by`` is the kid whose key really signed."""
    number = (int, float)
    if length > MAX_TOKEN_LENGTH or "crit" in header:
        return MALFORMED
    if any(name in claims and type(claims[name]) not in number for name in ("exp", "nbf")):
        return MALFORMED
    if "aud" in claims:
        aud = claims["aud"]
        if not (
            isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
        ):
            return MALFORMED
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ("RS256", "ES256"):
        return UNSUPPORTED
    if not isinstance(kid, str) or not kid:
        return EMPTY_KID
    if kid not in (EC_KID, RSA_KID):
        return UNKNOWN_KID
    if signed_by != kid or alg != {EC_KID: "ES256", RSA_KID: "RS256"}[kid]:
        return BAD_SIGNATURE
    if "exp" in claims and claims["exp"] + policy.leeway <= NOW:
        return EXPIRED
    if "nbf" in claims and claims["nbf"] - policy.leeway > NOW:
        return NOT_YET
    if "aud" in claims and policy.audience_suffix:
        values = [claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]
        if not any(v.casefold().endswith(policy.audience_suffix.casefold()) for v in values):
            return BAD_AUDIENCE
    return None


# The audience is checked only under a suffix: half of these policies set one. (Hypothesis
# draws the first element of sampled_from more often than the others.)
TABLE_POLICIES: Final = (
    Policy(audience_suffix=SUFFIX),
    Policy(),
    Policy(audience_suffix=SUFFIX, leeway=30),
    Policy(leeway=30),
)


def assert_table_answer(
    header: dict[str, Any],
    claims: dict[str, Any],
    signer: str | None,
    policy: Policy,
    registered: Registered,
) -> None:
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    signing_input = f"{h}.{p}".encode()
    if signer == EC_KID:
        signature = sign(registered.ec, signing_input)
    elif signer == RSA_KID:
        signature = sign(registered.rsa, signing_input)
    else:
        signature = bytes(64)
    token = f"{h}.{p}.{b64url(signature)}"
    assert answer(token, registered, policy) == model(header, claims, signer, len(token), policy)


@PROPERTY
@given(
    header=headers,
    claims=claims,
    signer=st.sampled_from([EC_KID, RSA_KID, None]),
    policy=st.sampled_from(TABLE_POLICIES),
)
def test_structured_tokens_get_the_answer_of_the_contracts_table(
    header: dict[str, Any],
    claims: dict[str, Any],
    signer: str | None,
    policy: Policy,
    registered: Registered,
) -> None:
    assert_table_answer(header, claims, signer, policy, registered)


@PROPERTY
@given(parts=signed_parts(), policy=st.sampled_from(TABLE_POLICIES))
def test_signed_tokens_get_the_answer_of_the_contracts_table_on_their_claims(
    parts: tuple[dict[str, Any], dict[str, Any], str], policy: Policy, registered: Registered
) -> None:
    header, claims, signer = parts
    assert_table_answer(header, claims, signer, policy, registered)


def test_the_two_table_properties_reach_every_row_and_the_allow() -> None:
    """Arbitrary headers and claims reach rows 2 to 4; signed tokens rows 5 to 9 and the
    allow. (The first property alone once reached little beyond row 4.)"""
    structured: set[str | None] = set()
    signed: set[str | None] = set()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(
        header=headers,
        claims=claims,
        signer=st.sampled_from([EC_KID, RSA_KID, None]),
        policy=st.sampled_from(TABLE_POLICIES),
    )
    def classify_structured(
        header: dict[str, Any], claims: dict[str, Any], signer: str | None, policy: Policy
    ) -> None:
        structured.add(model(header, claims, signer, 0, policy))

    @settings(max_examples=300, database=None, derandomize=True)
    @given(parts=signed_parts(), policy=st.sampled_from(TABLE_POLICIES))
    def classify_signed(parts: tuple[dict[str, Any], dict[str, Any], str], policy: Policy) -> None:
        signed.add(model(*parts, 0, policy))

    classify_structured()
    classify_signed()
    assert structured >= {MALFORMED, UNSUPPORTED, EMPTY_KID}
    assert signed == {UNKNOWN_KID, BAD_SIGNATURE, EXPIRED, NOT_YET, BAD_AUDIENCE, None}


# -- mutations of valid tokens -----------------------------------------------------------------


def _segments(token: str) -> list[str]:
    return token.split(".")


def _flip_char_bit(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    if not token:
        return token
    i = draw(st.integers(0, len(token) - 1))
    bit = draw(st.integers(0, 7))
    return token[:i] + chr(ord(token[i]) ^ (1 << bit)) + token[i + 1 :]


def _flip_decoded_bit(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    parts = _segments(token)
    k = draw(st.integers(0, len(parts) - 1))
    try:
        raw = bytearray(b64url_decode(parts[k]))
    except ValueError:
        return token
    if not raw:
        return token
    i = draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << draw(st.integers(0, 7))
    parts[k] = b64url(bytes(raw))
    return ".".join(parts)


def _swap_segments(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    parts = _segments(token)
    if len(parts) < 2:
        return token
    i, j = draw(st.permutations(range(len(parts))))[:2]
    parts[i], parts[j] = parts[j], parts[i]
    return ".".join(parts)


def _transplant_segment(draw: st.DrawFn, token: str, others: list[str]) -> str:
    """A segment from another valid token (another key, other claims)."""
    parts, donor = _segments(token), _segments(draw(st.sampled_from(others)))
    k = draw(st.integers(0, min(len(parts), len(donor)) - 1))
    parts[k] = donor[k]
    return ".".join(parts)


def _reencode(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    parts = _segments(token)
    k = draw(st.integers(0, len(parts) - 1))
    try:
        raw = b64url_decode(parts[k])
    except ValueError:
        return token
    how = draw(st.sampled_from(["standard", "padded", "json-spaced", "json-sorted", "ascii"]))
    if how == "standard":
        parts[k] = base64.b64encode(raw).decode().rstrip("=")
    elif how == "padded":
        parts[k] = base64.urlsafe_b64encode(raw).decode()
    else:
        try:
            value = json.loads(raw)
        except ValueError:
            return token
        text = {
            "json-spaced": lambda: json.dumps(value, indent=1),
            "json-sorted": lambda: json.dumps(value, sort_keys=True, separators=(",", ":")),
            "ascii": lambda: json.dumps(value, ensure_ascii=False),
        }[how]()
        parts[k] = b64url(text.encode())
    return ".".join(parts)


def _truncate(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    return token[: draw(st.integers(0, max(0, len(token) - 1)))]


def _insert(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    i = draw(st.integers(0, len(token)))
    junk = draw(st.text(alphabet=B64URL + "=.+/ \n\t\x00\u00e9", min_size=1, max_size=3))
    return token[:i] + junk + token[i:]


def _delete(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    if not token:
        return token
    i = draw(st.integers(0, len(token) - 1))
    return token[:i] + token[i + draw(st.integers(1, 4)) :]


def _malleate_ecdsa(draw: st.DrawFn, token: str, _others: list[str]) -> str:
    """(r, n - s) is the other valid ECDSA signature: allowed, and the oracle agrees."""
    parts = _segments(token)
    try:
        signature = b64url_decode(parts[-1])
    except ValueError:
        return token
    if len(signature) != 64:
        return token
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not 0 < s < P256_ORDER:
        return token
    parts[-1] = b64url(r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big"))
    return ".".join(parts)


MUTATIONS: Final[list[Callable[[st.DrawFn, str, list[str]], str]]] = [
    _flip_char_bit,
    _flip_decoded_bit,
    _swap_segments,
    _transplant_segment,
    _reencode,
    _truncate,
    _insert,
    _delete,
    _malleate_ecdsa,
]


def _signed_content(token: str) -> tuple[str, bytes] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return f"{parts[0]}.{parts[1]}", b64url_decode(parts[2])
    except ValueError:
        return None


@st.composite
def mutated(draw: st.DrawFn, valid: list[str]) -> tuple[str, str]:
    original = draw(st.sampled_from(valid))
    token = original
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        token = mutation(draw, token, valid)
    return original, token


@PROPERTY
@given(data=st.data())
def test_a_mutated_valid_token_is_allowed_only_if_still_genuinely_signed(
    data: st.DataObject, registered: Registered
) -> None:
    original, token = data.draw(mutated(registered.valid))
    for policy in POLICIES:
        if answer(token, registered, policy) is None:
            unchanged = _signed_content(token) == _signed_content(original)
            assert unchanged or registered.genuinely_signed(token), (original, token)


def test_the_originals_are_allowed_and_the_oracle_agrees(registered: Registered) -> None:
    for token in registered.valid:
        assert answer(token, registered, Policy(audience_suffix=SUFFIX)) is None
        assert registered.genuinely_signed(token)
    forged = registered.valid[0][:-2] + ("AA" if not registered.valid[0].endswith("AA") else "BA")
    assert not registered.genuinely_signed(forged)


def test_the_other_valid_ecdsa_signature_is_allowed_and_the_oracle_agrees(
    registered: Registered,
) -> None:
    """(r, n - s) verifies as well as (r, s): a mutation the property must tolerate."""
    original = registered.valid[0]
    token = _malleate_ecdsa(lambda _strategy: None, original, [])  # type: ignore[arg-type, return-value]
    assert token != original
    assert answer(token, registered) is None
    assert registered.genuinely_signed(token)


@pytest.fixture(scope="module")
def caching_service(registered: Registered) -> AuthorizationService:
    snapshot = Snapshot({PROJECT: ProjectKeys(registered.keys, ())})
    return AuthorizationService(lambda: snapshot, Policy(), clock=lambda: NOW)


def _servicer_allows(service: AuthorizationService, token: str) -> bool:
    response = service.check(check_request(f"/eth/{PROJECT}", token=token))
    if response.WhichOneof("http_response") == "ok_response":
        return True
    assert json.loads(response.denied_response.body)["message"] in CONTRACT_MESSAGES
    return False


@PROPERTY
@given(data=st.data())
def test_mutations_of_a_cached_token_are_judged_afresh_by_the_servicer(
    data: st.DataObject, registered: Registered, caching_service: AuthorizationService
) -> None:
    """The servicer remembers verified tokens; a near copy of one must not ride on that."""
    original, token = data.draw(mutated(registered.valid))
    assert _servicer_allows(caching_service, original)  # verified, now remembered
    assert _servicer_allows(caching_service, original)  # answered from the cache
    if _servicer_allows(caching_service, token):
        unchanged = _signed_content(token) == _signed_content(original)
        assert unchanged or registered.genuinely_signed(token), (original, token)
