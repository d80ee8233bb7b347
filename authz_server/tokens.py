"""The customer's side: key pairs and signed JWTs (RS256 or ES256).

Used by the demo, the tests and the command-line tooling. The signer derives the
algorithm from the private key, as a customer's library would, and signs through
joserfc, whose ES256 signatures are the 64-byte ``r||s`` of RFC 7518.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from .keys import Algorithm

__all__ = [
    "PrivateKey",
    "algorithm_of",
    "b64url",
    "generate_private_key",
    "mint",
    "public_pem",
    "sign",
]

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key(alg: Algorithm, *, rsa_bits: int = 2048) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def algorithm_of(key: PrivateKey) -> Algorithm:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"EC curve {key.curve.name} cannot sign ES256 (P-256 needed)")


def mint(
    key: PrivateKey,
    kid: str,
    claims: Mapping[str, Any] | None = None,
    *,
    header: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS signed with ``key``; ``header`` entries override the defaults."""
    alg = algorithm_of(key)
    full_header = {"alg": alg, "typ": "JWT", "kid": kid, **(header or {})}
    # The claims are written here rather than by joserfc.jwt.encode, which would write
    # non-ASCII text as raw UTF-8 and refuse lone surrogates: the payload keeps the bytes
    # it always had (compact, ASCII-escaped JSON), and claims of any JSON type can be
    # signed, as the tests of the malformed-token row need.
    payload = _json(dict(claims or {}))
    if not header:
        return jws.serialize_compact(full_header, payload, _signing_key(key), algorithms=[alg])
    # Header overrides exist to build tokens that a conforming JOSE library refuses to
    # make: alg none, HS256 or ES256 over an RSA key, a crit member, a kid of any JSON
    # type, members joserfc does not know. joserfc would refuse or change such a header,
    # so it is written here, exactly as given; the signature is still joserfc's, made
    # with the key's own algorithm whatever the header claims.
    signing_input = f"{b64url(_json(full_header))}.{b64url(payload)}"
    return f"{signing_input}.{b64url(sign(key, signing_input.encode('ascii')))}"


def sign(key: PrivateKey, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` by ``key``'s algorithm (RS256 or ES256)."""
    alg = algorithm_of(key)
    algorithm = jws.JWSRegistry(algorithms=[alg]).get_alg(alg)
    signing_key = _signing_key(key)
    algorithm.check_key(signing_key)
    return algorithm.sign(signing_input, signing_key)


@functools.lru_cache(maxsize=16)
def _signing_key(key: PrivateKey) -> RSAKey | ECKey:
    """``key`` as joserfc's key object. joserfc reads private keys from PEM, and loading
    an RSA private key checks it (some 30 ms for 2048 bits): once per key, not per token."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem)
    return ECKey.import_key(pem)


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
