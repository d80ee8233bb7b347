"""Public keys: which files are accepted as keys, and signature checks with one key.

The rules are the contract's "Keys directory" section. They live here, apart from
the directory walking in ``keystore``, so that every tool that accepts a key applies
the same ones. Each key is pinned to one algorithm by its type: RSA keys verify
RS256 only, P-256 keys ES256 only, whatever a token's header claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "MAX_RSA_BITS",
    "MAX_RSA_EXPONENT",
    "MIN_RSA_BITS",
    "Algorithm",
    "KeyRejected",
    "PublicKey",
    "VerifyKey",
    "has_roca_fingerprint",
    "is_valid_id",
    "parse_public_key",
]

Algorithm: TypeAlias = Literal["RS256", "ES256"]
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192
# A public exponent is small in every real key (65537 almost always). The cost of a
# verification grows with its bit length: a 3071-bit exponent made one failed check cost
# about 90 times that of e = 65537, and let a flood of bad tokens starve other projects.
MAX_RSA_EXPONENT: Final = 2**32
# A PEM of an 8192-bit RSA key is about 1.5 KiB; anything far larger is not a key.
MAX_KEY_FILE_BYTES: Final = 64 * 1024

# Project ids and key ids (docs/contract.md). Both travel in URL paths, headers and logs,
# so they are kept to characters that every parser reads the same way: no ';', '%',
# '.', spaces or anything that an upstream could strip, decode or trim into another id.
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def is_valid_id(name: str) -> bool:
    """Whether ``name`` may be a project id or a key id: 1 to 128 of ``A-Za-z0-9_-``."""
    return _ID.fullmatch(name) is not None


# Order of the P-256 group: ES256's r and s must lie in [1, n-1] (RFC 7518 3.4).
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_PEM_PUBLIC_LABELS: Final = (b"-----BEGIN PUBLIC KEY-----", b"-----BEGIN RSA PUBLIC KEY-----")
_PKCS1V15: Final = padding.PKCS1v15()
_SHA256: Final = hashes.SHA256()
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


# ROCA (CVE-2017-15361): RSA keys made by a widely deployed smart-card and TPM library
# (2012-2017) can be factored. Their primes are built from powers of 65537 modulo a
# primorial, which leaves a fingerprint in the modulus n: for every small prime r below,
# n mod r lies in the subgroup that 65537 generates modulo r. A vulnerable modulus
# passes all 38 tests; a random one, with probability about 4e-9 (the product over r of
# the subgroup's share of the residues).
_ROCA_PRIMES: Final = (
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73,
    79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
)  # fmt: skip
_ROCA_SUBGROUPS: Final = tuple(
    (r, frozenset(pow(65537, k, r) for k in range(r - 1))) for r in _ROCA_PRIMES
)


def has_roca_fingerprint(modulus: int) -> bool:
    """Whether an RSA modulus carries the fingerprint of the ROCA weakness."""
    return all(modulus % r in powers for r, powers in _ROCA_SUBGROUPS)


class KeyRejected(ValueError):
    """A key file is not an acceptable public key: ``code`` is a short stable name for the
    reason (``rsa_size``, ``private_key``, ...: metric labels and summaries group by it),
    ``str()`` the one-line message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, eq=False)
class VerifyKey:
    """One registered public key, pinned to the one algorithm it may verify."""

    kid: str
    alg: Algorithm
    public_key: PublicKey

    def verify(self, signature: bytes, signing_input: bytes) -> bool:
        """True only when ``signature`` is a valid ``alg`` signature of ``signing_input``."""
        try:
            if isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(signature, signing_input, _PKCS1V15, _SHA256)
                return True
            # JWS carries ECDSA signatures as the fixed 64-byte r||s, never DER.
            if len(signature) != 64:
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
                return False
            self.public_key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
            return True
        except InvalidSignature:
            return False

    @property
    def description(self) -> str:
        """Type and size, e.g. ``RSA-2048`` or ``EC P-256``."""
        if isinstance(self.public_key, rsa.RSAPublicKey):
            return f"RSA-{self.public_key.key_size}"
        return "EC P-256"


def parse_public_key(data: bytes) -> tuple[Algorithm, PublicKey]:
    """Parse a key file's bytes; raise :class:`KeyRejected` with a one-line reason.

    The reason never quotes the file: it may be a secret put there by mistake.
    """
    if not data.strip():
        raise KeyRejected("empty_file", "empty file")
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyRejected("too_large", f"file larger than {MAX_KEY_FILE_BYTES} bytes")
    if b"PRIVATE KEY-----" in data:
        raise KeyRejected("private_key", "a private key: register only the public key")
    if not any(label in data for label in _PEM_PUBLIC_LABELS):
        raise KeyRejected(
            "not_pem", "not a PEM public key (expected BEGIN PUBLIC KEY or RSA PUBLIC KEY)"
        )
    if data.count(b"-----BEGIN ") > 1:
        raise KeyRejected("several_pem", "more than one PEM block: one key per file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRejected("unreadable_pem", "unreadable PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise KeyRejected(
                "rsa_size", f"RSA key of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
            )
        numbers = key.public_numbers()
        if numbers.e < 3 or numbers.e % 2 == 0:
            raise KeyRejected("rsa_exponent", f"RSA key with unsafe public exponent {numbers.e}")
        if numbers.e >= MAX_RSA_EXPONENT:
            raise KeyRejected(
                "rsa_exponent",
                f"RSA key with a {numbers.e.bit_length()}-bit public exponent "
                "(accepted: odd, 3 to 2^32 - 1)",
            )
        if has_roca_fingerprint(numbers.n):
            raise KeyRejected(
                "roca",
                "RSA key with the ROCA weakness (CVE-2017-15361): its private key can be "
                "recovered; make a new key pair with up-to-date software",
            )
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyRejected(
                "ec_curve", f"EC key on curve {key.curve.name} (accepted: P-256 for ES256)"
            )
        return "ES256", key
    kind = type(key).__name__.removesuffix("PublicKey").removeprefix("_") or "unknown"
    raise KeyRejected("key_type", f"{kind} key (accepted: RSA for RS256, EC P-256 for ES256)")
