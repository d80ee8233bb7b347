"""Every known JWT attack is refused with the contract's exact message.

Each case is one row of data: a readable id, the ``Authorization`` header an attacker
sends, and the message the contract's ORDER gives for it (row 2 malformed before row 3
algorithm before row 4 key id ...). Wherever it matters the attacker's token is
*genuinely* signed over exactly the bytes it carries (by the registered key when the
attack is about parsing), so that the row named is the one that refuses it, not a later
signature check that happens to fail as well.

Every case runs three ways: ``bearer_token`` + ``decide``; the servicer's ``check``
(the JSON-RPC body, and no token in the logs); and a real gRPC call on port 0. None may
touch the network: headers such as ``jku`` and ``x5u`` are never fetched.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import json
import logging
import socket
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from google.rpc import code_pb2

from authz_server._proto.envoy.service.auth.v3 import (
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz_server.devtools.requests import check_request
from authz_server.keys import VerifyKey
from authz_server.keystore import KeyStore, Snapshot
from authz_server.tokens import PrivateKey, b64url, generate_private_key, public_pem
from authz_server.transports.grpc import AuthorizationService, GateServer
from authz_server.verifier import (
    MAX_JSON_BRACKETS,
    Allowed,
    Denied,
    Policy,
    bearer_token,
    decide,
)
from tests.support import (
    BAD_AUDIENCE,
    BAD_SIGNATURE,
    CONTRACT_MESSAGES,
    EMPTY_KID,
    EXPIRED,
    MALFORMED,
    MISSING,
    NOT_YET,
    UNKNOWN_KID,
    UNSUPPORTED,
    write_key,
)

PROJECT: Final = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
OTHER_PROJECT: Final = "9f1c0e6d2b7a4c3e8d5f6a1b0c9d8e7f6a5b4c3d"
EC_KID: Final = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
RSA_KID: Final = "6b1a3f0e-15a9-11ee-b7c2-0a58538e0d0c"
E3_KID: Final = "7c2b4e1f-15a9-11ee-9d3a-0a58538e0d0c"  # an RSA key with public exponent 3
OTHER_KID: Final = "8d3c5f20-15a9-11ee-8e4b-0a58538e0d0c"  # a key of OTHER_PROJECT only
AUDIENCE_SUFFIX: Final = "rpc.example.com"
NOW: Final = 1_700_000_000
POLICY: Final = Policy(audience_suffix=AUDIENCE_SUFFIX)
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


Signer: TypeAlias = Callable[[bytes], bytes]
Part: TypeAlias = Mapping[str, Any] | bytes  # a JSON object, or the raw bytes of a segment


# -- building tokens by hand ----------------------------------------------------------


def b64_std(data: bytes) -> str:
    """The standard alphabet (``+``/``/``), unpadded: not base64url."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def raw(part: Part) -> bytes:
    if isinstance(part, bytes):
        return part
    return json.dumps(part, separators=(",", ":")).encode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def signed(header_segment: str, payload_segment: str, sign: Signer | None) -> str:
    """``h.p.sig`` with the signature computed over exactly the text ``h.p``."""
    signature = b"" if sign is None else sign(f"{header_segment}.{payload_segment}".encode())
    return f"{header_segment}.{payload_segment}.{b64url(signature)}"


def jws(header: Part, payload: Part = b"{}", sign: Signer | None = None) -> str:
    return signed(b64url(raw(header)), b64url(raw(payload)), sign)


def es_signer(key: ec.EllipticCurvePrivateKey, algorithm: hashes.HashAlgorithm) -> Signer:
    """JWS ECDSA: the fixed-width big-endian ``r || s`` of RFC 7518 section 3.4."""
    width = (key.curve.key_size + 7) // 8

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(algorithm)))
        return r.to_bytes(width, "big") + s.to_bytes(width, "big")

    return sign


def es_der_signer(key: ec.EllipticCurvePrivateKey) -> Signer:
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def rs_signer(key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm) -> Signer:
    return lambda data: key.sign(data, padding.PKCS1v15(), algorithm)


def ps_signer(key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm) -> Signer:
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    return lambda data: key.sign(data, pss, algorithm)


def hs_signer(secret: bytes, digest: str) -> Signer:
    return lambda data: hmac.new(secret, data, digest).digest()


def fixed(signature: bytes) -> Signer:
    return lambda _data: signature


def public_jwk(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> dict[str, str]:
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        n, e = numbers.n, numbers.e
        return {
            "kty": "RSA",
            "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big")),
        }
    point = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(point.x.to_bytes(32, "big")),
        "y": b64url(point.y.to_bytes(32, "big")),
    }


def spki_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def case_variants(word: str) -> list[str]:
    """Every upper/lower-case spelling of ``word``."""
    return ["".join(p) for p in itertools.product(*((c.lower(), c.upper()) for c in word))]


# -- the world the attacks are mounted against ------------------------------------------


@dataclass
class World:
    """A keys directory with two projects, its snapshot, a servicer, and attacker keys."""

    ec: ec.EllipticCurvePrivateKey  # registered in PROJECT as EC_KID
    rsa: rsa.RSAPrivateKey  # registered in PROJECT as RSA_KID
    e3: rsa.RSAPrivateKey  # registered in PROJECT as E3_KID
    other: ec.EllipticCurvePrivateKey  # registered in OTHER_PROJECT as OTHER_KID
    attacker_ec: ec.EllipticCurvePrivateKey
    attacker_rsa: rsa.RSAPrivateKey
    snapshot: Snapshot
    service: AuthorizationService
    _built: dict[str, str | None] = field(default_factory=dict)

    @property
    def keys(self) -> Mapping[str, VerifyKey]:
        keys = self.snapshot.keys_for(PROJECT)
        assert keys is not None
        return keys

    def es256(self, key: ec.EllipticCurvePrivateKey | None = None) -> Signer:
        return es_signer(key or self.ec, hashes.SHA256())

    def rs256(self, key: rsa.RSAPrivateKey | None = None) -> Signer:
        return rs_signer(key or self.rsa, hashes.SHA256())

    def valid(self, **claims: Any) -> str:
        """A token the gate allows (before any framing trick)."""
        return jws({"alg": "ES256", "typ": "JWT", "kid": EC_KID}, claims, self.es256())

    def header_for(self, attack: Attack) -> str | None:
        """The attack's Authorization header, built once so that all paths see one token."""
        if attack.id not in self._built:
            self._built[attack.id] = attack.build(self)
        return self._built[attack.id]


@dataclass(frozen=True)
class Attack:
    id: str
    expected: str
    build: Callable[[World], str | None]  # the Authorization header value


ATTACKS: list[Attack] = []


def add(case_id: str, expected: str, token: Callable[[World], str]) -> None:
    """An attack whose header is ``Bearer <token>``."""
    ATTACKS.append(Attack(case_id, expected, lambda w: "Bearer " + token(w)))


def add_header(case_id: str, expected: str, header: Callable[[World], str | None]) -> None:
    ATTACKS.append(Attack(case_id, expected, header))


def ec_header(**extra: Any) -> dict[str, Any]:
    return {"alg": "ES256", "typ": "JWT", "kid": EC_KID, **extra}


def rsa_header(**extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": RSA_KID, **extra}


# -- 1. alg "none", in every letter case ---------------------------------------------------

for _alg in case_variants("none"):
    add(f"alg-{_alg}-unsigned", UNSUPPORTED, lambda w, a=_alg: jws(ec_header(alg=a)))
add(
    "alg-none-with-a-genuine-es256-signature",
    UNSUPPORTED,
    lambda w: jws(ec_header(alg="none"), {}, w.es256()),
)
add("alg-none-without-kid", UNSUPPORTED, lambda w: jws({"alg": "none"}))
add("alg-none-with-an-unknown-kid", UNSUPPORTED, lambda w: jws({"alg": "none", "kid": "nobody"}))
add("alg-none-with-an-empty-kid", UNSUPPORTED, lambda w: jws({"alg": "none", "kid": ""}))
add("alg-none-two-segments", MALFORMED, lambda w: jws(ec_header(alg="none"))[:-1])
add("alg-none-with-the-crit-header", MALFORMED, lambda w: jws(ec_header(alg="none", crit=[])))
add("alg-none-with-a-bad-exp-type", MALFORMED, lambda w: jws(ec_header(alg="none"), {"exp": "x"}))

# -- 2. HMAC signed with the registered public key as the secret ---------------------------------


def _hmac_secret(w: World, key_name: str, form: str) -> bytes:
    key: PrivateKey = w.rsa if key_name == "rsa" else w.ec
    if form == "pem":
        return public_pem(key)  # byte for byte what the operator's key file holds
    if form == "pem-pkcs1":
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
    if form == "der":
        return spki_der(key)
    return json.dumps(public_jwk(key.public_key())).encode()  # jwk


for _alg, _digest in (("HS256", "sha256"), ("HS384", "sha384"), ("HS512", "sha512")):
    for _key_name, _kid in (("rsa", RSA_KID), ("ec", EC_KID)):
        forms = ["pem", "der", "jwk"] + (["pem-pkcs1"] if _key_name == "rsa" else [])
        for _form in forms:
            add(
                f"{_alg.lower()}-keyed-with-the-{_key_name}-public-key-{_form}",
                UNSUPPORTED,
                lambda w, a=_alg, d=_digest, k=_key_name, f=_form, kid=_kid: jws(
                    {"alg": a, "typ": "JWT", "kid": kid},
                    {"sub": "admin"},
                    hs_signer(_hmac_secret(w, k, f), d),
                ),
            )
add(
    "hs256-keyed-with-an-empty-secret",
    UNSUPPORTED,
    lambda w: jws({"alg": "HS256", "kid": EC_KID}, {}, hs_signer(b"", "sha256")),
)

# -- 3. other algorithms, really signed with the key types they name -----------------------------


def _other_alg(alg: str) -> Callable[[World], str]:
    def build(w: World) -> str:
        sign: Signer
        kid = RSA_KID
        if alg.startswith("PS"):
            sign = ps_signer(
                w.rsa,
                {"PS256": hashes.SHA256(), "PS384": hashes.SHA384(), "PS512": hashes.SHA512()}[alg],
            )
        elif alg in ("RS384", "RS512"):
            sign = rs_signer(w.rsa, hashes.SHA384() if alg == "RS384" else hashes.SHA512())
        elif alg == "ES384":
            sign, kid = es_signer(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()), EC_KID
        elif alg == "ES512":
            sign, kid = es_signer(ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()), EC_KID
        elif alg == "ES256K":
            sign, kid = es_signer(ec.generate_private_key(ec.SECP256K1()), hashes.SHA256()), EC_KID
        else:  # EdDSA
            sign, kid = ed25519.Ed25519PrivateKey.generate().sign, EC_KID
        return jws({"alg": alg, "typ": "JWT", "kid": kid}, {"sub": "x"}, sign)

    return build


for _alg in ("PS256", "PS384", "PS512", "RS384", "RS512", "ES384", "ES512", "ES256K", "EdDSA"):
    add(f"alg-{_alg.lower()}-genuinely-signed", UNSUPPORTED, _other_alg(_alg))
for _name, _alg in (
    ("rsa-oaep", "RSA-OAEP"),
    ("dir", "dir"),
    ("a128kw", "A128KW"),
    ("ecdh-es", "ECDH-ES"),
    ("es256-trailing-space", "ES256 "),
    ("es256-leading-space", " ES256"),
    ("es256-trailing-nul", "ES256\u0000"),
    ("rs256-trailing-newline", "RS256\n"),
    ("es256-fullwidth", "\uff25\uff33256"),
):
    add(f"alg-{_name}", UNSUPPORTED, lambda w, a=_alg: jws(ec_header(alg=a), {}, w.es256()))
add(
    "jwe-header-three-segments",
    UNSUPPORTED,
    lambda w: jws({"alg": "dir", "enc": "A256GCM", "kid": EC_KID}, {}, w.es256()),
)

# The algorithm named is RS256/ES256 but the signature is another scheme by the right key.
add(
    "rs256-header-ps256-signature-by-the-registered-key",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(), {}, ps_signer(w.rsa, hashes.SHA256())),
)
add(
    "rs256-header-rs512-signature-by-the-registered-key",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(), {}, rs_signer(w.rsa, hashes.SHA512())),
)
add(
    "es256-header-ecdsa-sha512-signature-by-the-registered-key",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {}, es_signer(w.ec, hashes.SHA512())),
)
add(
    "es256-header-p384-signature",
    BAD_SIGNATURE,
    lambda w: jws(
        ec_header(), {}, es_signer(ec.generate_private_key(ec.SECP384R1()), hashes.SHA256())
    ),
)
add(
    "es256-header-ed25519-signature",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {}, ed25519.Ed25519PrivateKey.generate().sign),
)
add(
    "es256-header-hmac-with-the-public-key",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {}, hs_signer(public_pem(w.ec), "sha256")),
)
add(
    "rs256-header-with-the-ec-kid",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(kid=EC_KID), {}, w.rs256()),
)

# -- 4. keys named by the token itself: never used, never fetched --------------------------------

add(
    "jwk-attacker-ec-key-with-a-registered-kid",
    BAD_SIGNATURE,
    lambda w: jws(
        ec_header(jwk=public_jwk(w.attacker_ec.public_key())),
        {"sub": "admin"},
        w.es256(w.attacker_ec),
    ),
)
add(
    "jwk-attacker-rsa-key-with-a-registered-kid",
    BAD_SIGNATURE,
    lambda w: jws(
        rsa_header(jwk=public_jwk(w.attacker_rsa.public_key())), {}, w.rs256(w.attacker_rsa)
    ),
)
add(
    "jwk-the-registered-key-but-signed-by-the-attacker",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(jwk=public_jwk(w.ec.public_key())), {}, w.es256(w.attacker_ec)),
)
add(
    "jwk-attacker-key-without-kid",
    EMPTY_KID,
    lambda w: jws(
        {"alg": "ES256", "jwk": public_jwk(w.attacker_ec.public_key())}, {}, w.es256(w.attacker_ec)
    ),
)
add(
    "jwk-attacker-key-with-its-own-kid",
    UNKNOWN_KID,
    lambda w: jws(
        ec_header(kid="attacker", jwk=public_jwk(w.attacker_ec.public_key())),
        {},
        w.es256(w.attacker_ec),
    ),
)
add(
    "jwk-attacker-hmac-key",
    UNSUPPORTED,
    lambda w: jws(
        {"alg": "HS256", "kid": EC_KID, "jwk": {"kty": "oct", "k": b64url(b"k" * 32)}},
        {},
        hs_signer(b"k" * 32, "sha256"),
    ),
)
for _member, _where, _url in (
    ("jku", "loopback-http", "http://127.0.0.1:9/jwks.json"),
    ("jku", "remote-https", "https://attacker.example/.well-known/jwks.json"),
    ("jku", "local-file", "file:///etc/passwd"),
    ("x5u", "loopback-http", "http://127.0.0.1:9/cert.pem"),
    ("x5u", "remote-https", "https://attacker.example/cert.pem"),
):
    add(
        f"{_member}-{_where}-registered-kid",
        BAD_SIGNATURE,
        lambda w, m=_member, u=_url: jws(ec_header(**{m: u}), {}, w.es256(w.attacker_ec)),
    )
    add(
        f"{_member}-{_where}-unknown-kid",
        UNKNOWN_KID,
        lambda w, m=_member, u=_url: jws(
            ec_header(kid="remote-key", **{m: u}), {}, w.es256(w.attacker_ec)
        ),
    )
add(
    "x5c-attacker-self-signed-certificate",
    BAD_SIGNATURE,
    lambda w: jws(
        ec_header(x5c=[base64.b64encode(self_signed_certificate(w.attacker_ec)).decode()]),
        {},
        w.es256(w.attacker_ec),
    ),
)
add(
    "x5c-garbage-chain",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(x5c=["not a certificate", "!!"]), {}, w.es256(w.attacker_ec)),
)
add(
    "x5t-s256-of-the-attacker-certificate",
    BAD_SIGNATURE,
    lambda w: jws(
        ec_header(
            **{"x5t#S256": b64url(hashlib.sha256(self_signed_certificate(w.attacker_ec)).digest())}
        ),
        {},
        w.es256(w.attacker_ec),
    ),
)
add(
    "kid-is-a-url",
    UNKNOWN_KID,
    lambda w: jws(ec_header(kid="https://attacker.example/key.pem"), {}, w.es256(w.attacker_ec)),
)

# -- 5. hostile kid values: signed by the registered key, so only the kid decides -------------

_HOSTILE_KIDS: dict[str, str] = {
    "path-etc-passwd": "../../etc/passwd",
    "path-absolute": "/etc/passwd",
    "path-other-project": f"../{OTHER_PROJECT}/{OTHER_KID}",
    "path-other-project-pem": f"../{OTHER_PROJECT}/{OTHER_KID}.pem",
    "path-other-project-generic": "../other-project/kid",
    "path-project-slash-kid": f"{PROJECT}/{EC_KID}",
    "path-dot-slash": f"./{EC_KID}",
    "path-with-suffix": f"{EC_KID}.pem",
    "path-trailing-slash": f"{EC_KID}/",
    "path-windows": "..\\..\\windows\\win.ini",
    "path-percent-encoded": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "path-file-url": "file:///etc/passwd",
    "dot": ".",
    "dot-dot": "..",
    "sql-or-true": "' OR '1'='1",
    "sql-union": "x' UNION SELECT key FROM keys --",
    "sql-drop": "1; DROP TABLE keys; --",
    "long-1000": "k" * 1000,
    "long-5500": "k" * 5500,  # the token stays under 8 KiB
    "cyrillic": "\u043a\u043b\u044e\u0447",
    "homoglyph-of-the-registered-kid": EC_KID.replace("a", "\u0430"),
    "fullwidth-digits-of-the-registered-kid": EC_KID.translate(
        {ord(d): 0xFF10 + int(d) for d in "0123456789"}
    ),
    "rtl-override": "\u202e" + EC_KID,
    "zero-width-space-suffix": EC_KID + "\u200b",
    "bom-prefix": "\ufeff" + EC_KID,
    "combining-mark": EC_KID + "\u0301",
    "emoji": "\U0001f511",
    "lone-surrogate": "\udcff",
    "nul-suffix": EC_KID + "\x00",
    "nul-prefix": "\x00" + EC_KID,
    "nul-then-pem": EC_KID + "\x00.pem",
    "nul-only": "\x00",
    "nul-in-the-middle": EC_KID[:8] + "\x00" + EC_KID[9:],
    "space": " ",
    "tab": "\t",
    "newline-log-injection": "x\nINFO allowed project=" + PROJECT,
    "other-projects-kid": OTHER_KID,
    "proto": "__proto__",
    "dunder-class": "__class__",
    "dict-method": "get",
    "wildcard": "*",
    "null-word": "null",
}
for _name, _kid in _HOSTILE_KIDS.items():
    add(f"kid-{_name}", UNKNOWN_KID, lambda w, k=_kid: jws(ec_header(kid=k), {}, w.es256()))
add(
    "kid-long-6500-pushes-the-token-over-8-kib",
    MALFORMED,
    lambda w: jws(ec_header(kid="k" * 6500), {}, w.es256()),
)
add(
    "kid-of-another-project-signed-by-that-projects-key",
    UNKNOWN_KID,
    lambda w: jws(ec_header(kid=OTHER_KID), {}, w.es256(w.other)),
)
add(
    "kid-raw-control-character-in-json",
    MALFORMED,
    lambda w: jws(b'{"alg":"ES256","kid":"a\nb"}', b"{}", w.es256()),
)

# -- 6. ES256 signatures of the wrong form -------------------------------------------------------


def _es_sig(w: World, mangle: Callable[[int, int], bytes]) -> str:
    h, p = b64url(raw(ec_header())), b64url(b'{"sub":"x"}')
    r, s = decode_dss_signature(w.ec.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    return signed(h, p, fixed(mangle(r, s)))


def _rs(r: int, s: int, width: int = 32) -> bytes:
    return r.to_bytes(width, "big") + s.to_bytes(width, "big")


_ES_SIGNATURES: dict[str, Callable[[int, int], bytes]] = {
    "r-zero-genuine-s": lambda r, s: _rs(0, s),
    "s-zero-genuine-r": lambda r, s: _rs(r, 0),
    "r-equals-n": lambda r, s: _rs(P256_ORDER, s),
    "s-equals-n": lambda r, s: _rs(r, P256_ORDER),
    "r-and-s-equal-n": lambda r, s: _rs(P256_ORDER, P256_ORDER),
    "r-and-s-one": lambda r, s: _rs(1, 1),
    "s-and-r-swapped": lambda r, s: _rs(s, r),
    "length-63-leading-byte-dropped": lambda r, s: _rs(r, s)[1:],
    "length-65-zero-padded": lambda r, s: b"\x00" + _rs(r, s),
    "length-66-es512-style-widths": lambda r, s: _rs(r, s, 33),
    "length-96-es384-style-widths": lambda r, s: _rs(r, s, 48),
    "length-128": lambda r, s: _rs(r, s, 64),
    "length-32-r-only": lambda r, s: r.to_bytes(32, "big"),
    "length-1": lambda r, s: b"\x00",
}
for _name, _mangle in _ES_SIGNATURES.items():
    add(f"es256-sig-{_name}", BAD_SIGNATURE, lambda w, m=_mangle: _es_sig(w, m))
add("es256-sig-der-form", BAD_SIGNATURE, lambda w: jws(ec_header(), {}, es_der_signer(w.ec)))
add(
    "es256-sig-der-form-cut-to-64-bytes",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {}, lambda d: es_der_signer(w.ec)(d)[:64]),
)
add(
    "es256-sig-of-another-token",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {"sub": "admin"}, lambda _d: w.es256()(b"another.token")),
)
add(
    "es256-sig-zero-zero-no-kid-check-bypass",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(), {"admin": True}, fixed(bytes(64))),
)

# -- 7. RSA signatures of the wrong length or value ---------------------------------------------


def _rsa_leading_zero_stripped(w: World) -> str:
    """A genuine RS256 signature that starts with a zero byte, sent without it (255 bytes)."""
    for jti in range(20_000):
        h, p = b64url(raw(rsa_header())), b64url(raw({"jti": jti}))
        signature = w.rsa.sign(f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
        if signature[0] == 0:
            return signed(h, p, fixed(signature[1:]))
    raise AssertionError("no RS256 signature with a leading zero byte in 20000 tries")


def _rsa_modulus(w: World) -> int:
    return w.rsa.public_key().public_numbers().n


add("rs256-sig-leading-zero-stripped", BAD_SIGNATURE, _rsa_leading_zero_stripped)
add(
    "rs256-sig-two-signatures-concatenated",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(), {}, lambda d: w.rs256()(d) * 2),
)
add("rs256-sig-all-zero", BAD_SIGNATURE, lambda w: jws(rsa_header(), {}, fixed(bytes(256))))
add(
    "rs256-sig-one", BAD_SIGNATURE, lambda w: jws(rsa_header(), {}, fixed((1).to_bytes(256, "big")))
)
add(
    "rs256-sig-equals-the-modulus",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(), {}, fixed(_rsa_modulus(w).to_bytes(256, "big"))),
)
add(
    "rs256-sig-modulus-plus-genuine",
    BAD_SIGNATURE,
    lambda w: jws(
        rsa_header(),
        {},
        lambda d: (int.from_bytes(w.rs256()(d), "big") + _rsa_modulus(w)).to_bytes(257, "big"),
    ),
)
add("rs256-sig-all-ones", BAD_SIGNATURE, lambda w: jws(rsa_header(), {}, fixed(b"\xff" * 256)))
add(
    "rs256-sig-of-4096-bit-length",
    BAD_SIGNATURE,
    lambda w: jws(rsa_header(), {}, fixed(b"\x01" * 512)),
)


def _icbrt_ceil(n: int) -> int:
    low, high = 0, 1 << (n.bit_length() // 3 + 2)
    while low < high:
        mid = (low + high) // 2
        if mid**3 < n:
            low = mid + 1
        else:
            high = mid
    return low


_SHA256_DIGEST_INFO: Final = bytes.fromhex("3031300d060960864801650304020105000420")


def _bleichenbacher_e3_forgery(w: World) -> str:
    """Bleichenbacher 2006: against e = 3, a cube root whose cube *starts* with a valid
    PKCS#1 v1.5 block and ends in garbage fools a verifier that does not check the
    padding's full length. No private key is used."""
    h, p = b64url(raw({"alg": "RS256", "kid": E3_KID})), b64url(raw({"sub": "admin"}))
    digest = hashlib.sha256(f"{h}.{p}".encode()).digest()
    prefix = b"\x00\x01\xff\x00" + _SHA256_DIGEST_INFO + digest
    target = int.from_bytes(prefix + b"\x00" * (256 - len(prefix)), "big")
    forged = _icbrt_ceil(target)
    assert (forged**3).to_bytes(256, "big").startswith(prefix), "forgery construction failed"
    return signed(h, p, fixed(forged.to_bytes(256, "big")))


add("rs256-bleichenbacher-e3-forgery", BAD_SIGNATURE, _bleichenbacher_e3_forgery)

# -- 8. non-canonical base64url, empty and miscounted segments ----------------------------------

_PAYLOAD_WITH_URL_CHARS: Final = b'{"q":"??>>~~"}'  # base64url has - and _ here


def _resign(w: World, h: str, p: str) -> str:
    """Sign ``h.p`` as sent, so only the encoding can be at fault."""
    return signed(h, p, w.es256())


def _ec_segments() -> tuple[str, str]:
    return b64url(raw(ec_header())), b64url(_PAYLOAD_WITH_URL_CHARS)


def _pad(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def _sig_with_url_chars(w: World, transform: Callable[[str], str]) -> str:
    h, p = _ec_segments()
    for _ in range(200):
        token = _resign(w, h, p)
        signature = token.rpartition(".")[2]
        if "-" in signature or "_" in signature:
            return f"{h}.{p}.{transform(signature)}"
    raise AssertionError("no ES256 signature with - or _ in 200 tries")


def _trailing_bits(segment: str) -> str:
    """The same bytes, the unused low bits of the last character set."""
    tail = len(segment) % 4
    assert tail in (2, 3), segment
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(segment[-1]) | (0b1111 if tail == 2 else 0b11)
    return segment[:-1] + alphabet[index]


def _header_with_tail(tail: int) -> str:
    for pad in range(8):
        h = b64url(raw(ec_header(pad="x" * pad)))
        if len(h) % 4 == tail:
            return h
    raise AssertionError("unreachable")


add("b64-header-padded", MALFORMED, lambda w: _resign(w, _pad(_header_with_tail(2)), "e30"))
add(
    "b64-payload-padded",
    MALFORMED,
    lambda w: _resign(w, _ec_segments()[0], _pad(_ec_segments()[1])),
)
add("b64-signature-padded", MALFORMED, lambda w: _pad(_resign(w, *_ec_segments())))
add(
    "b64-header-excess-padding", MALFORMED, lambda w: _resign(w, _header_with_tail(3) + "==", "e30")
)
add(
    "b64-payload-standard-alphabet",
    MALFORMED,
    lambda w: _resign(w, _ec_segments()[0], b64_std(_PAYLOAD_WITH_URL_CHARS)),
)
add(
    "b64-signature-standard-alphabet",
    MALFORMED,
    lambda w: _sig_with_url_chars(w, lambda s: s.replace("-", "+").replace("_", "/")),
)
for _name, _junk in (
    ("newline", "\n"),
    ("crlf", "\r\n"),
    ("space", " "),
    ("tab", "\t"),
    ("bang", "!"),
    ("star", "*"),
    ("tilde", "~"),
    ("percent", "%"),
    ("nul", "\x00"),
    ("e-acute", "\u00e9"),
):
    add(
        f"b64-payload-with-{_name}-inside",
        MALFORMED,
        lambda w, j=_junk: _resign(
            w, _ec_segments()[0], _ec_segments()[1][:6] + j + _ec_segments()[1][6:]
        ),
    )
    add(
        f"b64-signature-with-{_name}-inside",
        MALFORMED,
        lambda w, j=_junk: (lambda t: t[:-10] + j + t[-10:])(_resign(w, *_ec_segments())),
    )
add(
    "b64-header-trailing-bits-tail-2",
    MALFORMED,
    lambda w: _resign(w, _trailing_bits(_header_with_tail(2)), "e30"),
)
add(
    "b64-header-trailing-bits-tail-3",
    MALFORMED,
    lambda w: _resign(w, _trailing_bits(_header_with_tail(3)), "e30"),
)
add(
    "b64-signature-trailing-bits",
    MALFORMED,
    lambda w: (lambda t: t[:-1] + _trailing_bits(t.rpartition(".")[2])[-1])(
        _resign(w, *_ec_segments())
    ),
)
add("b64-payload-length-1-mod-4", MALFORMED, lambda w: _resign(w, _ec_segments()[0], "e30AA"))
add("segments-all-empty", MALFORMED, lambda w: "..")
add("segments-just-a-dot", MALFORMED, lambda w: ".")
add("segments-empty-header", MALFORMED, lambda w: _resign(w, "", "e30"))
add("segments-empty-payload-detached", MALFORMED, lambda w: _resign(w, _ec_segments()[0], ""))
add("segments-empty-signature", BAD_SIGNATURE, lambda w: signed(*_ec_segments(), None))
add("segments-two", MALFORMED, lambda w: _resign(w, *_ec_segments()).rpartition(".")[0])
add("segments-four-trailing-dot", MALFORMED, lambda w: _resign(w, *_ec_segments()) + ".")
add(
    "segments-four",
    MALFORMED,
    lambda w: (lambda t: t + "." + t.rpartition(".")[2])(_resign(w, *_ec_segments())),
)
add(
    "segments-five-jws",
    MALFORMED,
    lambda w: (lambda t: f"{t}.{t.rpartition('.')[2]}.e30")(_resign(w, *_ec_segments())),
)
add(
    "segments-five-jwe-compact",
    MALFORMED,
    lambda w: ".".join(
        (
            b64url(raw({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": EC_KID})),
            b64url(bytes(256)),
            b64url(bytes(12)),
            b64url(b"ciphertext"),
            b64url(bytes(16)),
        )
    ),
)
add(
    "segments-jwe-direct-empty-key",
    MALFORMED,
    lambda w: ".".join(
        (
            b64url(raw({"alg": "dir", "enc": "A128GCM", "kid": EC_KID})),
            "",
            b64url(bytes(12)),
            b64url(b"ct"),
            b64url(bytes(16)),
        )
    ),
)
add(
    "jws-json-serialization",
    MALFORMED,
    lambda w: json.dumps({"payload": "e30", "protected": _ec_segments()[0], "signature": "AAAA"}),
)
add("segments-signature-only", MALFORMED, lambda w: _resign(w, *_ec_segments()).rpartition(".")[2])

# -- 9. header and payload JSON ------------------------------------------------------------------


def _raw_json(header: bytes, payload: bytes = b"{}") -> Callable[[World], str]:
    return lambda w: jws(header, payload, w.es256())


_H: Final = f'"alg":"ES256","kid":"{EC_KID}"'.encode()
_JSON_CASES: dict[str, tuple[bytes, bytes, str]] = {
    "dup-alg-none-last": (
        b'{"alg":"ES256","alg":"none","kid":"%s"}' % EC_KID.encode(),
        b"{}",
        MALFORMED,
    ),
    "dup-alg-es256-last": (
        b'{"alg":"none","alg":"ES256","kid":"%s"}' % EC_KID.encode(),
        b"{}",
        MALFORMED,
    ),
    "dup-alg-by-escape": (b"{" + _H + b',"\\u0061lg":"none"}', b"{}", MALFORMED),
    "dup-kid": (
        b'{"alg":"ES256","kid":"%s","kid":"%s"}' % (OTHER_KID.encode(), EC_KID.encode()),
        b"{}",
        MALFORMED,
    ),
    "dup-exp-in-payload": (b"{" + _H + b"}", b'{"exp":1,"exp":9999999999}', MALFORMED),
    "dup-aud-in-payload": (
        b"{" + _H + b"}",
        b'{"aud":"evil.org","aud":"rpc.example.com"}',
        MALFORMED,
    ),
    "nan-exp": (b"{" + _H + b"}", b'{"exp":NaN}', MALFORMED),
    "infinity-exp": (b"{" + _H + b"}", b'{"exp":Infinity}', MALFORMED),
    "minus-infinity-nbf": (b"{" + _H + b"}", b'{"nbf":-Infinity}', MALFORMED),
    "nan-in-an-unchecked-header-member": (b"{" + _H + b',"x":NaN}', b"{}", MALFORMED),
    "1e400-in-an-unchecked-claim": (b"{" + _H + b"}", b'{"iat":1e400}', MALFORMED),
    "minus-1e400-exp": (b"{" + _H + b"}", b'{"exp":-1e400}', MALFORMED),
    "integer-past-the-digit-limit-exp": (
        b"{" + _H + b"}",
        b'{"exp":1' + b"0" * 4400 + b"}",
        MALFORMED,
    ),
    "integer-past-the-digit-limit-in-header": (
        b"{" + _H + b',"x":' + b"9" * 4400 + b"}",
        b"{}",
        MALFORMED,
    ),
    "huge-negative-exp-within-the-limit": (
        b"{" + _H + b"}",
        b'{"exp":-1' + b"0" * 4000 + b"}",
        EXPIRED,
    ),
    "huge-nbf-within-the-limit": (b"{" + _H + b"}", b'{"nbf":1' + b"0" * 4000 + b"}", NOT_YET),
    # Deep, yet under 8 KiB: refused by the parser, not by the size cap.
    "deep-nesting-in-header": (
        b"{" + _H + b',"x":' + b"[" * 2900 + b"]" * 2900 + b"}",
        b"{}",
        MALFORMED,
    ),
    "deep-nesting-in-payload": (
        b"{" + _H + b"}",
        b'{"x":' + b"[" * 2900 + b"]" * 2900 + b"}",
        MALFORMED,
    ),
    # Past MAX_JSON_BRACKETS: refused before parsing, on every Python version alike.
    "nesting-past-the-bracket-cap-under-every-recursion-limit": (
        b"{" + _H + b"}",
        b'{"x":' + b"[" * 520 + b"]" * 520 + b"}",
        MALFORMED,
    ),
    "brackets-past-the-cap-inside-a-string": (
        b"{" + _H + b"}",
        b'{"x":"' + b"{" * 512 + b'"}',
        MALFORMED,
    ),
    "header-not-utf8": (b'{"alg":"ES256","kid":"\xff"}', b"{}", MALFORMED),
    "header-overlong-utf8": (b'{"alg":"ES256","kid":"\xc0\xaf"}', b"{}", MALFORMED),
    "header-utf8-encoded-surrogate": (b'{"alg":"ES256","kid":"\xed\xa0\x80"}', b"{}", MALFORMED),
    "header-latin1-kid": ('{"alg":"ES256","kid":"cl\u00e9"}'.encode("latin-1"), b"{}", MALFORMED),
    "header-utf16-with-bom": (("{" + _H.decode() + "}").encode("utf-16"), b"{}", MALFORMED),
    "header-utf16le-without-bom": (("{" + _H.decode() + "}").encode("utf-16-le"), b"{}", MALFORMED),
    "header-utf32": (("{" + _H.decode() + "}").encode("utf-32"), b"{}", MALFORMED),
    "payload-not-utf8": (b"{" + _H + b"}", b'{"sub":"\xfe"}', MALFORMED),
    "header-utf8-bom": (b"\xef\xbb\xbf{" + _H + b"}", b"{}", MALFORMED),
    "payload-utf8-bom": (b"{" + _H + b"}", b"\xef\xbb\xbf{}", MALFORMED),
    "header-array-of-the-object": (b"[{" + _H + b"}]", b"{}", MALFORMED),
    "header-string": (b'"ES256"', b"{}", MALFORMED),
    "header-null": (b"null", b"{}", MALFORMED),
    "header-number": (b"256", b"{}", MALFORMED),
    "header-empty-bytes": (b"", b"{}", MALFORMED),
    "payload-string": (b"{" + _H + b"}", b'"admin"', MALFORMED),
    "payload-number": (b"{" + _H + b"}", b"1", MALFORMED),
    "payload-true": (b"{" + _H + b"}", b"true", MALFORMED),
    "payload-not-json": (b"{" + _H + b"}", b"admin=true", MALFORMED),
    "header-trailing-garbage": (b"{" + _H + b"}x", b"{}", MALFORMED),
    "header-two-objects": (b"{" + _H + b"}{}", b"{}", MALFORMED),
    "header-comment": (b"/*x*/{" + _H + b"}", b"{}", MALFORMED),
    "header-single-quotes": (b"{'alg':'ES256','kid':'%s'}" % EC_KID.encode(), b"{}", MALFORMED),
    "header-trailing-comma": (b"{" + _H + b",}", b"{}", MALFORMED),
    "header-unquoted-names": (b'{alg:"ES256",kid:"%s"}' % EC_KID.encode(), b"{}", MALFORMED),
    "payload-nul-byte-after-object": (b"{" + _H + b"}", b"{}\x00", MALFORMED),
    "header-empty-object": (b"{}", b"{}", UNSUPPORTED),
    "alg-with-an-escaped-nul": (
        b'{"alg":"ES256\\u0000","kid":"%s"}' % EC_KID.encode(),
        b"{}",
        UNSUPPORTED,
    ),
    "alg-lower-case-by-escape": (
        b'{"alg":"\\u0065S256","kid":"%s"}' % EC_KID.encode(),
        b"{}",
        UNSUPPORTED,
    ),
}
for _name, (_header, _payload, _expected) in _JSON_CASES.items():
    add(f"json-{_name}", _expected, _raw_json(_header, _payload))

# -- 10. claim types and values ------------------------------------------------------------------

_CLAIM_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("exp-true", {"exp": True}, MALFORMED),
    ("nbf-false", {"nbf": False}, MALFORMED),
    ("exp-numeric-string", {"exp": "9999999999"}, MALFORMED),
    ("exp-string-infinity", {"exp": "Infinity"}, MALFORMED),
    ("nbf-null", {"nbf": None}, MALFORMED),
    ("exp-empty-list", {"exp": []}, MALFORMED),
    ("exp-float-in-the-past", {"exp": NOW - 0.25}, EXPIRED),
    ("exp-float-exactly-now", {"exp": float(NOW)}, EXPIRED),
    ("exp-negative", {"exp": -1}, EXPIRED),
    ("exp-negative-zero", {"exp": -0.0}, EXPIRED),
    ("exp-smallest-negative-float", {"exp": -1.7976931348623157e308}, EXPIRED),
    ("nbf-float-in-the-future", {"nbf": NOW + 0.25}, NOT_YET),
    ("nbf-max-float", {"nbf": 1.7976931348623157e308}, NOT_YET),
    ("aud-number", {"aud": 42}, MALFORMED),
    ("aud-object", {"aud": {"aud": AUDIENCE_SUFFIX}}, MALFORMED),
    ("aud-list-with-null", {"aud": [AUDIENCE_SUFFIX, None]}, MALFORMED),
    ("aud-list-with-a-number", {"aud": [1, AUDIENCE_SUFFIX]}, MALFORMED),
    ("aud-list-with-an-object", {"aud": [{"x": AUDIENCE_SUFFIX}]}, MALFORMED),
    ("aud-false", {"aud": False}, MALFORMED),
    ("aud-other-domain", {"aud": "rpc.example.org"}, BAD_AUDIENCE),
    ("aud-suffix-then-more", {"aud": AUDIENCE_SUFFIX + ".evil.org"}, BAD_AUDIENCE),
    ("aud-suffix-then-nul", {"aud": AUDIENCE_SUFFIX + "\x00"}, BAD_AUDIENCE),
    ("aud-suffix-then-space", {"aud": AUDIENCE_SUFFIX + " "}, BAD_AUDIENCE),
    ("aud-suffix-then-dot", {"aud": AUDIENCE_SUFFIX + "."}, BAD_AUDIENCE),
    ("aud-empty-list", {"aud": []}, BAD_AUDIENCE),
    ("aud-list-of-others", {"aud": ["a.org", "b.org"]}, BAD_AUDIENCE),
    ("expired-and-bad-aud-types", {"exp": NOW - 1, "aud": 3}, MALFORMED),
    ("expired-and-not-yet-valid", {"exp": NOW - 1, "nbf": NOW + 1}, EXPIRED),
]
for _name, _claims, _expected in _CLAIM_CASES:
    add(f"claims-{_name}", _expected, lambda w, c=_claims: jws(ec_header(), c, w.es256()))

# -- 11. crit, b64: false, zip ------------------------------------------------------------------


def _unencoded_payload(w: World, crit: bool) -> str:
    """RFC 7797: the signature covers the payload bytes, not their base64url."""
    header = ec_header(b64=False, **({"crit": ["b64"]} if crit else {}))
    h = b64url(raw(header))
    payload = b'{"sub":"admin"}'
    signature = w.es256()(h.encode() + b"." + payload)
    return f"{h}.{b64url(payload)}.{b64url(signature)}"


add("crit-b64-false", MALFORMED, lambda w: _unencoded_payload(w, crit=True))
add("crit-empty-list", MALFORMED, lambda w: jws(ec_header(crit=[]), {}, w.es256()))
add("crit-null", MALFORMED, lambda w: jws(ec_header(crit=None), {}, w.es256()))
add(
    "crit-unknown-extension",
    MALFORMED,
    lambda w: jws(
        ec_header(crit=["http://example.com/ext"], **{"http://example.com/ext": True}),
        {},
        w.es256(),
    ),
)
add(
    "b64-false-without-crit-signed-over-raw-payload",
    BAD_SIGNATURE,
    lambda w: _unencoded_payload(w, crit=False),
)
add(
    "b64-false-crit-detached-payload",
    MALFORMED,
    lambda w: _resign(w, b64url(raw(ec_header(b64=False, crit=["b64"]))), ""),
)
add(
    "zip-deflated-payload",
    MALFORMED,
    lambda w: signed(
        b64url(raw(ec_header(zip="DEF"))),
        b64url(zlib.compress(b'{"sub":"admin"}')[2:-4]),
        w.es256(),
    ),
)
add(
    "zip-deflate-bomb-payload",
    MALFORMED,
    lambda w: signed(
        b64url(raw(ec_header(zip="DEF"))),
        b64url(zlib.compress(b"{" * 4_000_000, 9)[2:-4]),
        w.es256(),
    ),
)
add(
    "zip-with-a-json-payload-forged",
    BAD_SIGNATURE,
    lambda w: jws(ec_header(zip="DEF"), {"sub": "admin"}, w.es256(w.attacker_ec)),
)

# -- 12. size -------------------------------------------------------------------------------------


def _sized(w: World, length: int) -> str:
    """A token genuinely signed by the registered key, exactly ``length`` characters long."""
    signature_length = len(b64url(bytes(64)))
    for extra in range(4):
        h = b64url(raw(ec_header(pad="x" * extra)))
        wanted = length - len(h) - 2 - signature_length
        for fill in range(max(0, wanted * 3 // 4 - 16), wanted * 3 // 4 + 4):
            p = b64url(raw({"pad": "x" * fill}))
            if len(p) == wanted:
                token = _resign(w, h, p)
                assert len(token) == length
                return token
    raise AssertionError(f"no token of exactly {length} characters")


def _big_token(w: World, size: int) -> str:
    h = b64url(raw(ec_header()))
    p = b64url(raw({"pad": "x" * (size * 3 // 4)}))
    return _resign(w, h, p)


add("size-8-kib-plus-one-genuinely-signed", MALFORMED, lambda w: _sized(w, 8 * 1024 + 1))
add("size-1-mib-genuinely-signed", MALFORMED, lambda w: _big_token(w, 1024 * 1024))
add("size-1-mib-of-dots", MALFORMED, lambda w: "." * (1024 * 1024))
add_header("size-bearer-then-1-mib-of-spaces", MISSING, lambda w: "Bearer" + " " * (1024 * 1024))

# -- 13. the Authorization header's framing -------------------------------------------------------

add_header("frame-leading-space-before-the-scheme", MISSING, lambda w: " Bearer " + w.valid())
add_header("frame-tab-after-the-scheme", MISSING, lambda w: "Bearer\t" + w.valid())
add_header("frame-nbsp-after-the-scheme", MISSING, lambda w: "Bearer\u00a0" + w.valid())
add_header("frame-no-space-after-the-scheme", MISSING, lambda w: "Bearer" + w.valid())
add_header("frame-equals-after-the-scheme", MISSING, lambda w: "Bearer=" + w.valid())
add_header("frame-basic-then-bearer", MISSING, lambda w: "Basic Zm9vOmJhcg==, Bearer " + w.valid())
add_header("frame-token-scheme", MISSING, lambda w: "Token " + w.valid())
add_header("frame-dpop-scheme", MISSING, lambda w: "DPoP " + w.valid())
add_header("frame-empty", MISSING, lambda w: "")
add_header("frame-no-header", MISSING, lambda w: None)
add_header("frame-space-then-tab-before-token", MALFORMED, lambda w: "Bearer \t" + w.valid())
add_header("frame-trailing-space", MALFORMED, lambda w: "Bearer " + w.valid() + " ")
add_header("frame-trailing-tab", MALFORMED, lambda w: "Bearer " + w.valid() + "\t")
add_header("frame-trailing-newline", MALFORMED, lambda w: "Bearer " + w.valid() + "\n")
add_header("frame-trailing-crlf", MALFORMED, lambda w: "Bearer " + w.valid() + "\r\n")
add_header("frame-trailing-nul", MALFORMED, lambda w: "Bearer " + w.valid() + "\x00")
add_header("frame-trailing-comma", MALFORMED, lambda w: "Bearer " + w.valid() + ",")
add_header(
    "frame-two-tokens-comma-joined", MALFORMED, lambda w: "Bearer " + w.valid() + "," + w.valid()
)
add_header(
    "frame-two-headers-joined-by-a-proxy",
    MALFORMED,
    lambda w: "Bearer " + w.valid() + ", Bearer " + w.valid(),
)
add_header(
    "frame-two-tokens-space-separated", MALFORMED, lambda w: "Bearer " + w.valid() + " " + w.valid()
)
add_header(
    "frame-forged-then-valid",
    MALFORMED,
    lambda w: "Bearer " + jws(ec_header(), {"sub": "admin"}) + " Bearer " + w.valid(),
)
add_header("frame-scheme-twice", MALFORMED, lambda w: "Bearer Bearer " + w.valid())
add_header("frame-semicolon-parameter", MALFORMED, lambda w: "Bearer " + w.valid() + ";realm=x")
add_header("frame-quoted-token", MALFORMED, lambda w: 'Bearer "' + w.valid() + '"')
add_header(
    "frame-expired-valid-token-is-still-expired", EXPIRED, lambda w: "BEARER   " + w.valid(exp=NOW)
)


def _check_attack_list() -> None:
    ids = [a.id for a in ATTACKS]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate attack ids: {sorted(duplicates)}"


_check_attack_list()


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    rsa_key: PrivateKey,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
) -> World:
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert isinstance(other_ec_key, ec.EllipticCurvePrivateKey)
    e3 = rsa.generate_private_key(public_exponent=3, key_size=2048)
    keys_dir: Path = tmp_path_factory.mktemp("attack-keys")
    files: dict[tuple[str, str], PrivateKey] = {
        (PROJECT, EC_KID): ec_key,
        (PROJECT, RSA_KID): rsa_key,
        (PROJECT, E3_KID): e3,
        (OTHER_PROJECT, OTHER_KID): other_ec_key,
    }
    for (project, kid), key in files.items():
        write_key(keys_dir / project, kid, key)
    store = KeyStore(keys_dir)
    snapshot = store.reload()
    assert set(snapshot.keys_for(PROJECT) or ()) == {EC_KID, RSA_KID, E3_KID}
    attacker_rsa = generate_private_key("RS256")
    assert isinstance(attacker_rsa, rsa.RSAPrivateKey)
    return World(
        ec=ec_key,
        rsa=rsa_key,
        e3=e3,
        other=other_ec_key,
        attacker_ec=ec.generate_private_key(ec.SECP256R1()),
        attacker_rsa=attacker_rsa,
        snapshot=snapshot,
        service=AuthorizationService(lambda: snapshot, POLICY, clock=lambda: NOW),
    )


@dataclass
class NetworkAttempts:
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkAttempts]:
    """Fail the test if anything opens a connection or resolves a name."""
    attempts = NetworkAttempts()

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.calls.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
            raise AssertionError(f"network access attempted: {name}")

        return refused

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, refuse(name))
    yield attempts
    assert attempts.calls == [], f"network access attempted: {attempts.calls}"


@pytest.fixture(scope="module")
def grpc_stub(world: World) -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    server = GateServer(world.service, "127.0.0.1:0", threads=4)
    server.start()
    # Room for the 1 MiB cases: the request carries the header, the response does not.
    channel = grpc.insecure_channel(server.address)
    try:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)
    finally:
        channel.close()
        server.stop(grace=1)


def attack_request(authorization: str | None) -> external_auth_pb2.CheckRequest:
    """The project's request with the attack's Authorization header as it is (or none)."""
    headers = {} if authorization is None else {"authorization": authorization}
    return check_request(f"/eth/{PROJECT}", headers=headers, request_id="attack")


def denial_body(response: external_auth_pb2.CheckResponse) -> dict[str, Any]:
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == 403
    body: dict[str, Any] = json.loads(response.denied_response.body)
    return body


def by_id(attack: Attack) -> str:
    return attack.id


# -- the attack suite -----------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=by_id)
def test_the_verifier_refuses(attack: Attack, world: World, no_network: NetworkAttempts) -> None:
    header = world.header_for(attack)
    decision = decide(bearer_token(header), world.keys, POLICY, NOW)
    assert isinstance(decision, Denied), f"{attack.id} was allowed"
    assert decision.reason.message == attack.expected


@pytest.mark.parametrize("attack", ATTACKS, ids=by_id)
def test_the_servicer_refuses_with_the_json_rpc_body_and_logs_no_token(
    attack: Attack, world: World, no_network: NetworkAttempts, caplog: pytest.LogCaptureFixture
) -> None:
    header = world.header_for(attack)
    with caplog.at_level(logging.DEBUG):
        response = world.service.check(attack_request(header))
    assert denial_body(response) == {
        "code": -32013,
        "message": attack.expected,
        "project": PROJECT,
    }
    token = bearer_token(header) or ""
    for part in token.split("."):
        if len(part) >= 24:
            assert part not in caplog.text


@pytest.mark.parametrize("attack", ATTACKS, ids=by_id)
def test_a_real_grpc_call_is_refused(
    attack: Attack,
    world: World,
    grpc_stub: external_auth_pb2_grpc.AuthorizationStub,
    no_network: NetworkAttempts,
) -> None:
    response = grpc_stub.Check(attack_request(world.header_for(attack)), timeout=10)
    assert denial_body(response) == {
        "code": -32013,
        "message": attack.expected,
        "project": PROJECT,
    }


# -- around the suite --------------------------------------------------------------------------


def test_the_suite_has_one_case_per_id_and_speaks_only_contract_messages() -> None:
    assert len({a.id for a in ATTACKS}) == len(ATTACKS)
    assert {a.expected for a in ATTACKS} == CONTRACT_MESSAGES


def test_the_network_guard_would_catch_a_fetch(no_network: NetworkAttempts) -> None:
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with pytest.raises(AssertionError, match="network access attempted"), socket.socket() as s:
        s.connect(("127.0.0.1", 9))
    assert len(no_network.calls) == 2
    no_network.calls.clear()  # expected here; the fixture checks the list is empty


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "http://127.0.0.1:9/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}},
        {"x5c": ["not a certificate"]},
        {"zip": "DEF"},
        {"b64": False},  # without crit: the payload is still base64url-decoded
    ],
    ids=lambda extra: next(iter(extra)),
)
def test_headers_naming_other_keys_are_ignored_on_a_genuine_token(
    extra: dict[str, Any], world: World, no_network: NetworkAttempts
) -> None:
    token = jws(ec_header(**extra), {"exp": NOW + 60}, world.es256())
    assert decide(token, world.keys, POLICY, NOW) == Allowed(kid=EC_KID)


def test_a_genuine_token_under_the_frames_the_contract_allows_is_allowed(world: World) -> None:
    token = world.valid(exp=NOW + 60, aud="eth." + AUDIENCE_SUFFIX.upper())
    for header in ("Bearer " + token, "bearer " + token, "BEARER     " + token):
        assert decide(bearer_token(header), world.keys, POLICY, NOW) == Allowed(kid=EC_KID)


def test_the_bleichenbacher_forgery_would_fool_a_lenient_verifier(world: World) -> None:
    """The e=3 case is a real attack, not a random signature: its cube parses as a valid
    PKCS#1 v1.5 block for the token's SHA-256 when trailing bytes are ignored."""
    token = _bleichenbacher_e3_forgery(world)
    h, p, s = token.split(".")
    cube = pow(int.from_bytes(unb64(s), "big"), 3, world.e3.public_key().public_numbers().n)
    block = cube.to_bytes(256, "big")
    digest = hashlib.sha256(f"{h}.{p}".encode()).digest()
    assert block.startswith(b"\x00\x01\xff\x00" + _SHA256_DIGEST_INFO + digest)


def test_the_controls_without_the_attack_are_allowed(world: World) -> None:
    """Each family's builder, minus its twist, yields a token the gate allows: what the
    suite refuses is the twist, not a slip in how the token was made."""
    assert "-" in b64url(_PAYLOAD_WITH_URL_CHARS)  # so the standard alphabet differs
    controls = {
        "es256": jws(ec_header(), {}, world.es256()),
        "rs256": jws(rsa_header(), {}, world.rs256()),
        "rs256-e3": jws({"alg": "RS256", "kid": E3_KID}, {}, rs_signer(world.e3, hashes.SHA256())),
        "segments": _resign(world, *_ec_segments()),
        "header-tail-2": _resign(world, _header_with_tail(2), "e30"),
        "header-tail-3": _resign(world, _header_with_tail(3), "e30"),
        "raw-json": _raw_json(b"{" + _H + b"}", b'{"exp":1e10}')(world),
        "raw-json-whitespace": _raw_json(
            b' {\n"alg" : "ES256", "kid":"' + EC_KID.encode() + b'"}\t'
        )(world),
        "size-8-kib": _sized(world, 8 * 1024),
        "huge-exp-within-the-limit": _raw_json(b"{" + _H + b"}", b'{"exp":1' + b"0" * 4000 + b"}")(
            world
        ),
        "brackets-at-the-cap": _raw_json(
            b"{" + _H + b"}", b'{"x":"' + b"[" * (MAX_JSON_BRACKETS - 1) + b'"}'
        )(world),
        "nesting-under-the-recursion-limit": _raw_json(
            b"{" + _H + b"}", b'{"x":' + b"[" * 100 + b"]" * 100 + b"}"
        )(world),
    }
    for name, token in controls.items():
        decision = decide(token, world.keys, POLICY, NOW)
        assert isinstance(decision, Allowed), f"control {name}: {decision}"
