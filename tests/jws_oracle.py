"""An independent judge of compact JWS signatures, for the property tests and the fuzzer.

It shares nothing with the verifier under test: the token is split by hand, each segment
decoded as strict base64url (:func:`wycheproof.b64url_decode`), and the signature checked
with the ``cryptography`` primitives directly (RS256: PKCS#1 v1.5 over SHA-256; ES256:
the 64-byte ``r||s`` form with both halves in ``[1, n)``). A token the verifier allows
must be one this says is genuinely signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.wycheproof import split_compact

__all__ = ["P256_ORDER", "PublicKey", "genuinely_signed"]

P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def genuinely_signed(token: str, keys: Mapping[str, tuple[str, PublicKey]]) -> bool:
    """Whether ``token`` is signed by the key its header names: ``keys`` maps each kid to
    its algorithm and public key, and the header's ``alg`` must be that algorithm."""
    if not token.isascii():
        return False
    jws = split_compact(token)
    if jws is None or not isinstance(jws.header, dict):
        return False
    kid = jws.header.get("kid")
    entry = keys.get(kid) if isinstance(kid, str) else None
    if entry is None or entry[0] != jws.header.get("alg"):
        return False
    public, signature = entry[1], jws.signature
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
            return True
        if len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
            return False
        public.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False
