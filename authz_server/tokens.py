"""The customer's side: key pairs and signed JWTs (RS256 or ES256).

Used by the demo, the tests and the command-line tooling. The signer derives the
algorithm from the private key, as a customer's library would.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .keys import Algorithm

__all__ = ["PrivateKey", "algorithm_of", "b64url", "generate_private_key", "mint", "public_pem"]

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
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode())
        for part in (full_header, dict(claims or {}))
    )
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url(signature)}"
