"""Project Wycheproof vectors: where they live, how they load, and JWKs turned into keys.

The vectors are data files vendored in ``tests/vectors/wycheproof`` (their origin, upstream
commit and licence in ``SOURCE.md`` there). Each file is parsed once per test session. A
missing file is an error the tests report, never a reason to skip them.

Cases are plain frozen dataclasses built from the JSON; ``case_id`` gives the readable
pytest ids (``rsa2048-tc17-<comment-slug>``).

The JWK helpers exist because two vector files give keys only as JWKs, and some of those
keys are deliberately broken: :func:`jwk_public_key` builds a key the way a careful
library would (and raises on a broken one), while :func:`jwk_pem` writes the JWK's raw
numbers into a PEM file *without* validating them, as a naive JWK-to-PEM converter
would, so that such keys can be put to ``parse_public_key`` at all.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz_server.tokens import b64url

__all__ = [
    "VECTORS_DIR",
    "CompactJws",
    "JwkCase",
    "JwsCase",
    "KeyGroup",
    "SignatureCase",
    "VectorsMissingError",
    "b64url_decode",
    "case_id",
    "jwk_case_list",
    "jwk_pem",
    "jwk_public_key",
    "jwk_uint",
    "jws_case_list",
    "key_groups",
    "load",
    "missing_message",
    "public_pem",
    "signature_cases",
    "split_compact",
]

VECTORS_DIR: Final = Path(__file__).resolve().parent / "vectors" / "wycheproof"

Result = Literal["valid", "invalid", "acceptable"]
Jwk = Mapping[str, Any]


class VectorsMissingError(FileNotFoundError):
    """The vector files are not where the tests expect them."""


def missing_message() -> str:
    return (
        f"Wycheproof vectors not found in {VECTORS_DIR} (vendored in the repository, "
        "see SOURCE.md there); these tests need them and never skip"
    )


@functools.cache
def load(filename: str) -> dict[str, Any]:
    """One vector file, parsed once per session."""
    path = VECTORS_DIR / filename
    if not path.is_file():
        raise VectorsMissingError(f"{missing_message()}: {filename} is missing")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def case_id(prefix: str, tc_id: int, comment: str) -> str:
    """``prefix-tc<id>-<comment slug>``: readable in a terminal and stable across runs."""
    # Split camelCase so that "rejectsModifiedSignature" reads "rejects-modified-signature".
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", comment)
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:48].rstrip("-")
    return f"{prefix}-tc{tc_id}" + (f"-{slug}" if slug else "")


# -- signature vectors (rsa_signature_*, ecdsa_*_p1363) ------------------------------------


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """One test group's public key, in the forms the file gives it."""

    tag: str
    index: int
    pem: bytes
    der: bytes
    jwk: Jwk | None  # a few ECDSA groups give no JWK
    key_size: int


@dataclass(frozen=True, slots=True)
class SignatureCase:
    tag: str
    group: int
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    msg: bytes
    sig: bytes
    result: Result
    key_der: bytes

    @property
    def id(self) -> str:
        return case_id(self.tag, self.tc_id, self.comment)


def key_groups(filename: str, tag: str) -> list[KeyGroup]:
    groups = []
    for index, group in enumerate(load(filename)["testGroups"]):
        # RSA files call the JWK "keyJwk" and give "keySize"; ECDSA files say
        # "publicKeyJwk" and put the size inside "publicKey".
        jwk = group.get("keyJwk") or group.get("publicKeyJwk")
        size = group.get("keySize") or group["publicKey"]["keySize"]
        groups.append(
            KeyGroup(
                tag=tag,
                index=index,
                pem=group["publicKeyPem"].encode("ascii"),
                der=bytes.fromhex(group["publicKeyDer"]),
                jwk=jwk,
                key_size=int(size),
            )
        )
    return groups


def signature_cases(filename: str, tag: str) -> list[SignatureCase]:
    cases = []
    for index, group in enumerate(load(filename)["testGroups"]):
        der = bytes.fromhex(group["publicKeyDer"])
        for test in group["tests"]:
            cases.append(
                SignatureCase(
                    tag=tag,
                    group=index,
                    tc_id=test["tcId"],
                    comment=test["comment"],
                    flags=tuple(test["flags"]),
                    msg=bytes.fromhex(test["msg"]),
                    sig=bytes.fromhex(test["sig"]),
                    result=test["result"],
                    key_der=der,
                )
            )
    return cases


# -- whole-token and key-set vectors (json_web_signature, json_web_key) ---------------------


@dataclass(frozen=True, slots=True)
class JwsCase:
    group: int
    group_comment: str
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    jws: str
    result: Result
    public_jwk: Jwk | None  # None: the group has only a private (symmetric) key

    @property
    def id(self) -> str:
        return case_id(f"jws-{self.group_comment}", self.tc_id, self.comment)


@dataclass(frozen=True, slots=True)
class JwkCase:
    group_comment: str
    tc_id: int
    comment: str
    result: Result
    public_keys: tuple[Jwk, ...]  # empty: the key set has only private (symmetric) keys
    private_keys: tuple[Jwk, ...]
    jws: str

    @property
    def id(self) -> str:
        return case_id(f"jwk-{self.group_comment}", self.tc_id, self.comment)


def jws_case_list() -> list[JwsCase]:
    cases = []
    for index, group in enumerate(load("json_web_signature_test.json")["testGroups"]):
        for test in group["tests"]:
            cases.append(
                JwsCase(
                    group=index,
                    group_comment=group["comment"],
                    tc_id=test["tcId"],
                    comment=test["comment"],
                    flags=tuple(test["flags"]),
                    jws=test["jws"],
                    result=test["result"],
                    public_jwk=group.get("public"),
                )
            )
    return cases


def jwk_case_list() -> list[JwkCase]:
    cases = []
    for group in load("json_web_key_test.json")["testGroups"]:
        public = tuple(group.get("public", {}).get("keys", ()))
        private = tuple(group.get("private", {}).get("keys", ()))
        for test in group["tests"]:
            cases.append(
                JwkCase(
                    group_comment=group["comment"],
                    tc_id=test["tcId"],
                    comment=test["comment"],
                    result=test["result"],
                    public_keys=public,
                    private_keys=private,
                    jws=test["jws"],
                )
            )
    return cases


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS cut into its pieces, independently of the verifier's own parser."""

    header: Any  # whatever JSON the header segment holds
    header_segment: str
    payload: bytes
    signing_input: bytes
    signature: bytes


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url: raise ValueError unless ``segment`` is the canonical form."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment):
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if b64url(raw) != segment:
        raise ValueError("non-canonical base64url")
    return raw


def split_compact(token: str) -> CompactJws | None:
    """The pieces of a three-part token with strict base64url segments, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header_raw, payload, signature = (b64url_decode(part) for part in parts)
        header = json.loads(header_raw)
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return CompactJws(
        header=header,
        header_segment=parts[0],
        payload=payload,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
    )


# -- JWK -> key ------------------------------------------------------------------------------

_CURVES: Final[Mapping[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


def jwk_uint(jwk: Jwk, name: str) -> int:
    """A JWK member as the unsigned big-endian integer its strict base64url encodes."""
    if not isinstance(jwk.get(name), str):
        raise ValueError(f"a {jwk.get('kty')!r} JWK without {name!r}")
    return int.from_bytes(b64url_decode(jwk[name]), "big")


def jwk_public_key(jwk: Jwk) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The public key a JWK describes; ValueError/KeyError when it describes none."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return rsa.RSAPublicNumbers(e=jwk_uint(jwk, "e"), n=jwk_uint(jwk, "n")).public_key()
    if kty == "EC":
        curve = _CURVES.get(jwk.get("crv", ""))
        if curve is None:
            raise ValueError(f"an EC JWK on an unknown curve {jwk.get('crv')!r}")
        return ec.EllipticCurvePublicNumbers(
            x=jwk_uint(jwk, "x"), y=jwk_uint(jwk, "y"), curve=curve
        ).public_key()
    raise ValueError(f"a {kty!r} JWK has no public key")


def public_pem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# A few DER bytes written out by hand, so that a JWK's numbers reach a PEM file even when
# they are not a valid key (cryptography refuses to build such keys in the first place).
_OID_RSA_ENCRYPTION: Final = bytes.fromhex("06092a864886f70d010101")
_OID_EC_PUBLIC_KEY: Final = bytes.fromhex("06072a8648ce3d0201")
_OID_CURVES: Final[Mapping[str, tuple[bytes, int]]] = {
    "P-256": (bytes.fromhex("06082a8648ce3d030107"), 32),
    "P-384": (bytes.fromhex("06052b81040022"), 48),
    "P-521": (bytes.fromhex("06052b81040023"), 66),
}
_DER_NULL: Final = bytes.fromhex("0500")


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_uint(value: int) -> bytes:
    # One spare leading zero byte keeps the INTEGER positive when its top bit is set.
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{lines}\n-----END PUBLIC KEY-----\n".encode("ascii")


def jwk_pem(jwk: Jwk) -> bytes:
    """A ``PUBLIC KEY`` PEM holding the JWK's numbers as they are, valid key or not."""
    kty = jwk.get("kty")
    if kty == "RSA":
        algorithm = _der(0x30, _OID_RSA_ENCRYPTION + _DER_NULL)
        key = _der(0x30, _der_uint(jwk_uint(jwk, "n")) + _der_uint(jwk_uint(jwk, "e")))
    elif kty == "EC":
        curve_oid, width = _OID_CURVES[jwk["crv"]]
        algorithm = _der(0x30, _OID_EC_PUBLIC_KEY + curve_oid)
        x, y = (jwk_uint(jwk, name).to_bytes(width, "big") for name in ("x", "y"))
        key = b"\x04" + x + y  # the uncompressed point of SEC 1
    else:
        raise ValueError(f"a {kty!r} JWK has no public key")
    return _pem(_der(0x30, algorithm + _der(0x03, b"\x00" + key)))
