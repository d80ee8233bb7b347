"""JSON Web Keys (RFC 7517/7518) in and out, and RFC 7638 thumbprints.

A JWK handed to ``keys add`` is only converted here: the result is a PEM public key
that :func:`~authz_server.keys.parse_public_key` then judges, so a JWK is held to
exactly the rules of a key file. Every refusal is a :class:`~authz_server.keys.KeyRejected`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519

from .keys import Algorithm, KeyRejected, PublicKey, VerifyKey, parse_public_key
from .tokens import b64url

__all__ = ["is_jwk", "jwk_to_pem", "public_jwk", "thumbprint"]

_AnyPublicKey: TypeAlias = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | x25519.X25519PublicKey
    | x448.X448PublicKey
)

# RFC 7518 section 6.3.2 and 6.2.2: any of these makes a JWK a private key.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
# RFC 7638 section 3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS: Final = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
# Curves converted so that the key rules, not this module, say why one is refused.
_EC_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}
_OKP_CURVES: Final[dict[str, Callable[[bytes], _AnyPublicKey]]] = {
    "Ed25519": ed25519.Ed25519PublicKey.from_public_bytes,
    "Ed448": ed448.Ed448PublicKey.from_public_bytes,
    "X25519": x25519.X25519PublicKey.from_public_bytes,
    "X448": x448.X448PublicKey.from_public_bytes,
}
_P256_COORDINATE_BYTES: Final = 32


def is_jwk(data: bytes) -> bool:
    """Whether a key file's bytes look like JSON (a JWK or JWKS) rather than PEM."""
    return data.lstrip().startswith(b"{")


def jwk_to_pem(data: bytes) -> tuple[bytes, str | None]:
    """A public JWK (or a JWKS holding exactly one key) as a PEM public key.

    Returns the PEM and the JWK's own ``kid``, if any. The PEM still has to pass
    :func:`~authz_server.keys.parse_public_key`; this function only refuses what is
    not a usable public JWK at all.
    """
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeyRejected("not valid JSON (expected a JWK)") from None
    if not isinstance(document, dict):
        raise KeyRejected("not a JWK (expected a JSON object)")
    if "keys" in document and "kty" not in document:
        keys = document["keys"]
        if not isinstance(keys, list) or len(keys) != 1:
            count = len(keys) if isinstance(keys, list) else "no list of"
            raise KeyRejected(f"a JWKS with {count} keys: add one key at a time")
        document = keys[0]
        if not isinstance(document, dict):
            raise KeyRejected("not a JWK (expected a JSON object)")
    jwk: dict[str, Any] = document
    if _PRIVATE_MEMBERS & jwk.keys():
        raise KeyRejected("a private key: register only the public key")
    public_key = _public_key(jwk)
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    alg, _key = parse_public_key(pem)
    _check_intended_use(jwk, alg)
    kid = jwk.get("kid")
    return pem, kid if isinstance(kid, str) and kid else None


def public_jwk(key: VerifyKey) -> dict[str, str]:
    """The JWK of a registered key, as ``keys export`` publishes it."""
    members = _members(key.public_key)
    return {"kty": members.pop("kty"), "use": "sig", "alg": key.alg, "kid": key.kid, **members}


def thumbprint(public_key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key."""
    members = _members(public_key)
    required = {name: members[name] for name in _THUMBPRINT_MEMBERS[members["kty"]]}
    # Sorted member names, no whitespace: the canonical form RFC 7638 section 3 hashes.
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _members(public_key: PublicKey) -> dict[str, str]:
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    point = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(point.x.to_bytes(_P256_COORDINATE_BYTES, "big")),
        "y": b64url(point.y.to_bytes(_P256_COORDINATE_BYTES, "big")),
    }


def _uint(value: int) -> str:
    """RFC 7518 section 2 "Base64urlUInt": big-endian, as few octets as possible."""
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _public_key(jwk: Mapping[str, Any]) -> _AnyPublicKey:
    kty = jwk.get("kty")
    if kty == "RSA":
        numbers = rsa.RSAPublicNumbers(_integer(jwk, "e"), _integer(jwk, "n"))
        try:
            return numbers.public_key()
        except ValueError as exc:
            raise KeyRejected(f"invalid RSA JWK ({exc})") from None
    if kty == "EC":
        crv = jwk.get("crv")
        curve = _EC_CURVES.get(crv) if isinstance(crv, str) else None
        if curve is None:
            raise KeyRejected(f"EC JWK on unknown curve {_shown(crv)}")
        curve_instance = curve()
        size = (curve_instance.key_size + 7) // 8
        x, y = _bytes(jwk, "x"), _bytes(jwk, "y")
        if len(x) != size or len(y) != size:
            raise KeyRejected(f"EC JWK whose x or y is not {size} bytes long for {crv}")
        ec_numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve_instance
        )
        try:
            return ec_numbers.public_key()
        except ValueError:
            raise KeyRejected(f"EC JWK whose x, y is not a point on {crv}") from None
    if kty == "OKP":
        crv = jwk.get("crv")
        load = _OKP_CURVES.get(crv) if isinstance(crv, str) else None
        if load is None:
            raise KeyRejected(f"OKP JWK on unknown curve {_shown(crv)}")
        try:
            return load(_bytes(jwk, "x"))
        except ValueError:
            raise KeyRejected(f"OKP JWK whose x is not a {crv} key") from None
    if kty == "oct":
        raise KeyRejected("a shared secret (kty oct): register a public key")
    raise KeyRejected(f"JWK of kty {_shown(kty)} (accepted: RSA for RS256, EC P-256 for ES256)")


def _check_intended_use(jwk: Mapping[str, Any], alg: Algorithm) -> None:
    """A JWK that says it is for something else would never verify a token here."""
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        raise KeyRejected(f"JWK alg {_shown(declared)}, but this key can verify {alg} only")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyRejected(f"JWK use {_shown(use)} (a key for tokens has use sig)")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyRejected("JWK key_ops without verify")


def _bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise KeyRejected(f"JWK member {name} missing or not a string")
    text = value.rstrip("=")
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise KeyRejected(f"JWK member {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyRejected(f"JWK member {name} is not base64url") from None


def _integer(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_bytes(jwk, name), "big")


def _shown(value: object) -> str:
    """A JSON value quoted for a one-line message, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
