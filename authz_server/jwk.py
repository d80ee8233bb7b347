"""JSON Web Keys (RFC 7517/7518) in and out, and RFC 7638 thumbprints, through joserfc.

joserfc builds keys from a JWK's key material and writes JWKs and thumbprints; what may be
registered stays this project's decision. A JWK handed to ``keys add`` becomes a PEM
public key that :func:`~authz_server.keys.parse_public_key` then judges, so a JWK is held
to exactly the rules of a key file. On top of joserfc's own checks, this module refuses:

- private keys (joserfc would import one as readily as a public key);
- a JWKS of more or fewer than one key;
- EC coordinates that are not exactly the curve's size (joserfc reads any length);
- a ``use``, ``key_ops`` or ``alg`` that says the key is not for verifying its one
  algorithm here.

Only the key material (``kty`` and the members RFC 7518 requires) is handed to joserfc:
the other members are checked here or ignored, as before, so a ``kid`` that is not a
string, say, is not a reason to refuse a key. Every refusal is a
:class:`~authz_server.keys.KeyRejected` whose message names the member at fault.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from .keys import Algorithm, KeyRejected, PublicKey, VerifyKey, parse_public_key

__all__ = ["is_jwk", "jwk_to_pem", "public_jwk", "thumbprint"]

ImportedKey: TypeAlias = RSAKey | ECKey | OKPKey

# RFC 7518 sections 6.2.2 and 6.3.2: any of these makes a JWK a private key.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
# The curves joserfc reads, with the size of a coordinate in bytes. Curves other than
# P-256 are converted all the same, so that the key rules, not this module, say why
# such a key is refused.
_EC_COORDINATE_BYTES: Final = {"P-256": 32, "P-384": 48, "P-521": 66, "secp256k1": 32}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448", "X25519", "X448"})
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
# Unpadded base64url: the last character of a 2- or 3-character tail carries only data
# bits. joserfc's decoder refuses other tails too; checked here first so that the
# refusal can name the member.
_CANONICAL_LAST: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def is_jwk(data: bytes) -> bool:
    """Whether a key file's bytes look like JSON (a JWK or JWKS) rather than PEM."""
    return data.lstrip().startswith(b"{")


def jwk_to_pem(data: bytes) -> tuple[bytes, str | None]:
    """A public JWK (or a JWKS holding exactly one key) as a PEM public key.

    Returns the PEM and the JWK's own ``kid``, if any. The PEM still has to pass
    :func:`~authz_server.keys.parse_public_key`; this function only refuses what is
    not a usable public JWK at all.
    """
    jwk = _single_jwk(data)
    if _PRIVATE_MEMBERS & jwk.keys():
        raise KeyRejected("private_key", "a private key: register only the public key")
    pem = _import_public_jwk(jwk).as_pem()
    alg, _key = parse_public_key(pem)
    _check_intended_use(jwk, alg)
    kid = jwk.get("kid")
    return pem, kid if isinstance(kid, str) and kid else None


def public_jwk(key: VerifyKey) -> dict[str, str]:
    """The JWK of a registered key, as ``keys export`` publishes it."""
    members = _key_material(_imported(key.public_key))
    return {"kty": members.pop("kty"), "use": "sig", "alg": key.alg, "kid": key.kid, **members}


def thumbprint(public_key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key."""
    return _imported(public_key).thumbprint()


def _single_jwk(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeyRejected("not_jwk", "not valid JSON (expected a JWK)") from None
    if not isinstance(document, dict):
        raise KeyRejected("not_jwk", "not a JWK (expected a JSON object)")
    if "keys" in document and "kty" not in document:
        keys = document["keys"]
        if not isinstance(keys, list) or len(keys) != 1:
            count = len(keys) if isinstance(keys, list) else "no list of"
            raise KeyRejected("jwks_size", f"a JWKS with {count} keys: add one key at a time")
        document = keys[0]
        if not isinstance(document, dict):
            raise KeyRejected("not_jwk", "not a JWK (expected a JSON object)")
    return document


def _imported(public_key: PublicKey) -> RSAKey | ECKey:
    """A registered key as joserfc's key object (through PEM, the format joserfc reads)."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAKey.import_key(pem)
    return ECKey.import_key(pem)


def _key_material(key: ImportedKey) -> dict[str, str]:
    # A key imported from PEM without parameters holds only kty and its key material,
    # all of which are strings (the list-valued members, such as key_ops, are never set).
    return {name: value for name, value in key.as_dict().items() if isinstance(value, str)}


def _import_public_jwk(jwk: Mapping[str, Any]) -> ImportedKey:
    kty = jwk.get("kty")
    if kty == "RSA":
        # e before n: a JWK with both wrong is refused for e, as it always was.
        material = {"kty": "RSA", "e": _base64url(jwk, "e"), "n": _base64url(jwk, "n")}
        return _import(RSAKey, material, "invalid RSA JWK ({reason})")
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _EC_COORDINATE_BYTES:
            raise KeyRejected("ec_curve", f"EC JWK on unknown curve {_shown(crv)}")
        size = _EC_COORDINATE_BYTES[crv]
        x, y = _base64url(jwk, "x"), _base64url(jwk, "y")
        if _decoded_length(x) != size or _decoded_length(y) != size:
            raise KeyRejected(
                "jwk_member", f"EC JWK whose x or y is not {size} bytes long for {crv}"
            )
        material = {"kty": "EC", "crv": crv, "x": x, "y": y}
        return _import(ECKey, material, f"EC JWK whose x, y is not a point on {crv}")
    if kty == "OKP":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _OKP_CURVES:
            raise KeyRejected("key_type", f"OKP JWK on unknown curve {_shown(crv)}")
        material = {"kty": "OKP", "crv": crv, "x": _base64url(jwk, "x")}
        return _import(OKPKey, material, f"OKP JWK whose x is not a {crv} key")
    if kty == "oct":
        raise KeyRejected("key_type", "a shared secret (kty oct): register a public key")
    raise KeyRejected(
        "key_type", f"JWK of kty {_shown(kty)} (accepted: RSA for RS256, EC P-256 for ES256)"
    )


def _import(
    key_class: type[RSAKey] | type[ECKey] | type[OKPKey], material: dict[str, Any], refusal: str
) -> ImportedKey:
    """joserfc's import of checked key material; ``refusal`` may quote its ``{reason}``."""
    try:
        with warnings.catch_warnings():
            # joserfc warns on RSA keys under 2048 bits; parse_public_key refuses them
            # with the accepted range, so the warning would only repeat it on stderr.
            warnings.simplefilter("ignore", SecurityWarning)
            return key_class.import_key(material)
    except (ValueError, JoseError) as exc:
        raise KeyRejected("unreadable_jwk", refusal.format(reason=exc)) from None


def _check_intended_use(jwk: Mapping[str, Any], alg: Algorithm) -> None:
    """A JWK that says it is for something else would never verify a token here."""
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        raise KeyRejected(
            "jwk_use", f"JWK alg {_shown(declared)}, but this key can verify {alg} only"
        )
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyRejected("jwk_use", f"JWK use {_shown(use)} (a key for tokens has use sig)")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyRejected("jwk_use", "JWK key_ops without verify")


def _base64url(jwk: Mapping[str, Any], name: str) -> str:
    """A member's base64url text, without the padding some tools add; joserfc decodes it."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise KeyRejected("jwk_member", f"JWK member {name} missing or not a string")
    text = value.rstrip("=")
    tail = len(text) % 4
    if (
        _BASE64URL.fullmatch(text) is None
        or tail == 1
        or (tail and text[-1] not in _CANONICAL_LAST[tail])
    ):
        raise KeyRejected("jwk_member", f"JWK member {name} is not base64url")
    return text


def _decoded_length(text: str) -> int:
    """Bytes encoded by unpadded base64url ``text`` (6 bits a character, whole bytes)."""
    return len(text) * 3 // 4


def _shown(value: object) -> str:
    """A JSON value quoted for a one-line message, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
