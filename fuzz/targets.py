"""Fuzz targets: the token parser (``bearer_token`` + ``decide`` + the servicer) and the
key loader (``parse_public_key``, and ``jwk_to_pem`` for JSON input).

A target takes one input of bytes and raises only when it finds a bug: any exception
other than the documented refusal, a message outside the contract, or a token allowed
without a valid signature (checked by an oracle that calls the ``cryptography``
primitives directly). The keys registered for the token target are the Wycheproof
vectors' own RS256 and ES256 keys, under their ``kid``, so that vector tokens and their
mutations reach every row of the decision table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz_server.devtools.requests import check_request
from authz_server.jwk import is_jwk, jwk_to_pem
from authz_server.keys import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    KeyRejected,
    VerifyKey,
    parse_public_key,
)
from authz_server.keystore import ProjectKeys, Snapshot
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import (
    TABLE_REASONS,
    Allowed,
    Denied,
    Policy,
    bearer_token,
    decide,
)
from tests.jws_oracle import PublicKey, genuinely_signed
from tests.wycheproof import VECTORS_DIR

__all__ = ["VECTORS_DIR", "KeyTarget", "TokenTarget", "vector_keys"]

PROJECT: Final = "fuzz-project"
# Wycheproof's tokens carry no exp; a fixed "now" keeps runs reproducible.
NOW: Final = 1_700_000_000
CONTRACT_MESSAGES: Final = frozenset(r.message for r in TABLE_REASONS)
POLICIES: Final = (Policy(), Policy(audience_suffix="example.com", leeway=30))


def vector_keys(vectors_dir: Path = VECTORS_DIR) -> dict[str, VerifyKey]:
    """The RS256/ES256 public keys of json_web_signature_test.json, by kid (first wins)."""
    document = json.loads((vectors_dir / "json_web_signature_test.json").read_text())
    keys: dict[str, VerifyKey] = {}
    for group in document["testGroups"]:
        jwk = group.get("public")
        if not jwk or jwk.get("kid") in keys or jwk.get("alg") not in ("RS256", "ES256"):
            continue
        try:
            pem, kid = jwk_to_pem(json.dumps(jwk).encode())
            alg, public_key = parse_public_key(pem)
        except KeyRejected:
            continue
        if kid:
            keys[kid] = VerifyKey(kid=kid, alg=alg, public_key=public_key)
    if not keys:
        raise RuntimeError(f"no RS256/ES256 keys in {vectors_dir}")
    return keys


class TokenTarget:
    """``bearer_token`` + ``decide`` on the input as a token and as a header, then the
    servicer's ``check`` on the same header."""

    def __init__(self, keys: Mapping[str, VerifyKey]) -> None:
        self.keys = dict(keys)
        self.oracle_keys: dict[str, tuple[str, PublicKey]] = {
            kid: (key.alg, key.public_key) for kid, key in self.keys.items()
        }
        snapshot = Snapshot({PROJECT: ProjectKeys(self.keys, ())})
        self.service = AuthorizationService(lambda: snapshot, POLICIES[0], clock=lambda: NOW)

    def __call__(self, data: bytes) -> None:
        text = data.decode("latin-1")  # one character per byte: mutations stay local
        for candidate in (text, bearer_token(text), bearer_token("Bearer " + text)):
            for policy in POLICIES:
                self._decide(candidate, policy)
        self._check(text)

    def _decide(self, token: str | None, policy: Policy) -> None:
        decision = decide(token, self.keys, policy, NOW)
        if isinstance(decision, Allowed):
            if token is None or not genuinely_signed(token, self.oracle_keys):
                raise AssertionError(f"allowed without a valid signature: {token!r}")
            return
        if not isinstance(decision, Denied) or decision.reason.message not in CONTRACT_MESSAGES:
            raise AssertionError(f"not a contract answer: {decision!r} for {token!r}")

    def _check(self, header: str) -> None:
        request = check_request(f"/eth/{PROJECT}", headers={"authorization": header})
        response = self.service.check(request)
        response.SerializeToString()
        if response.WhichOneof("http_response") == "denied_response":
            body: dict[str, Any] = json.loads(response.denied_response.body)
            if body.get("code") != -32013 or body.get("message") not in CONTRACT_MESSAGES:
                raise AssertionError(f"not a contract denial: {body!r}")


class KeyTarget:
    """``parse_public_key`` (and ``jwk_to_pem`` first for JSON): a key or KeyRejected."""

    def __call__(self, data: bytes) -> None:
        if is_jwk(data):
            try:
                data, _kid = jwk_to_pem(data)
            except KeyRejected:
                return
        try:
            alg, key = parse_public_key(data)
        except KeyRejected as exc:
            if not str(exc) or "\n" in str(exc):
                raise AssertionError(f"a refusal must be one non-empty line: {exc!r}") from None
            return
        if alg == "RS256":
            if not isinstance(key, rsa.RSAPublicKey):
                raise AssertionError(f"RS256 for a {type(key).__name__}")
            numbers = key.public_numbers()
            if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
                raise AssertionError(f"RSA key of {key.key_size} bits accepted")
            if numbers.e < 3 or numbers.e % 2 == 0:
                raise AssertionError(f"RSA exponent {numbers.e} accepted")
        elif alg == "ES256":
            if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
                raise AssertionError(f"ES256 for {key!r}")
        else:
            raise AssertionError(f"unexpected algorithm {alg!r}")
