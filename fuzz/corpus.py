"""Seed corpora for the fuzz targets, generated from the Wycheproof vectors.

- ``token``: every compact JWS in json_web_signature_test.json and json_web_key_test.json,
  plus tokens minted (``authz_server.tokens.mint``) with the vectors' own RS256/ES256
  private keys over claim shapes that reach rows 7 to 9 (exp, nbf, aud) and a few framings
  of the header.
- ``key``: every JWK of json_web_key_test.json (as JSON, and as a PEM of its raw numbers,
  valid key or not), the PEM keys of the RSA and ECDSA signature vector files (also as
  PKCS#1 ``RSA PUBLIC KEY``), and private keys as PEM (which must be refused).

Usage: ``python -m fuzz.corpus --target token|key [--out DIR]``; ``run.py`` calls it when
the corpus directory is empty. Files are named by the SHA-1 of their content.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz_server.tokens import mint
from tests.wycheproof import VECTORS_DIR, jwk_pem, jwk_uint

CORPUS_DIR: Final = Path(__file__).resolve().parent / "corpus"
NOW: Final = 1_700_000_000
SIGNATURE_FILES: Final = (
    "rsa_signature_2048_sha256_test.json",
    "rsa_signature_3072_sha256_test.json",
    "rsa_signature_4096_sha256_test.json",
    "ecdsa_secp256r1_sha256_p1363_test.json",
)


def _load(vectors_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / name).read_text(encoding="utf-8"))
    return data


def _private_key(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if jwk["kty"] == "RSA":
        public = rsa.RSAPublicNumbers(e=jwk_uint(jwk, "e"), n=jwk_uint(jwk, "n"))
        names = ("p", "q", "d", "dp", "dq", "qi")
        p, q, d, dp, dq, qi = (jwk_uint(jwk, n) for n in names)
        return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public).private_key()
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    point = ec.EllipticCurvePublicNumbers(jwk_uint(jwk, "x"), jwk_uint(jwk, "y"), curve[jwk["crv"]])
    return ec.EllipticCurvePrivateNumbers(jwk_uint(jwk, "d"), point).private_key()


_CLAIMS: Final[tuple[dict[str, Any], ...]] = (
    {},
    {"exp": NOW + 600},
    {"exp": NOW - 1},
    {"nbf": NOW + 600},
    {"exp": NOW + 0.5, "nbf": NOW - 0.5},
    {"aud": "rpc.example.com"},
    {"aud": ["a.example.org", "rpc.example.com"]},
    {"aud": "example.org", "sub": "customer", "iat": NOW},
    {"exp": "soon"},
    {"aud": [1]},
)


def token_seeds(vectors_dir: Path = VECTORS_DIR) -> Iterator[bytes]:
    signatures = _load(vectors_dir, "json_web_signature_test.json")
    for group in signatures["testGroups"]:
        for test in group["tests"]:
            yield test["jws"].encode()
    for group in _load(vectors_dir, "json_web_key_test.json")["testGroups"]:
        for test in group["tests"]:
            yield test["jws"].encode()
    for group in signatures["testGroups"]:
        private = group.get("private", {})
        if private.get("alg") not in ("RS256", "ES256") or "d" not in private:
            continue
        key = _private_key(private)
        kid = private.get("kid", "")
        for claims in _CLAIMS:
            yield mint(key, kid, claims).encode()
        yield mint(key, kid, {}, header={"crit": ["exp"]}).encode()
        valid = mint(key, kid, {"exp": NOW + 60})
        for framed in (f"Bearer {valid}", f"bearer   {valid}", f"Bearer {valid}, Bearer x"):
            yield framed.encode()
    yield from (b"", b".", b"..", b"a.b.c", b"Bearer ", b"e30.e30.")


def _raw_pem(jwk: Mapping[str, Any]) -> bytes | None:
    """A PEM holding a JWK's numbers as they are, valid key or not (None: no such PEM)."""
    try:
        return jwk_pem(jwk)
    except (KeyError, ValueError):
        return None


def key_seeds(vectors_dir: Path = VECTORS_DIR) -> Iterator[bytes]:
    for group in _load(vectors_dir, "json_web_key_test.json")["testGroups"]:
        for side in ("public", "private"):
            for jwk in group.get(side, {}).get("keys", ()):
                yield json.dumps(jwk).encode()
                public_only = {k: v for k, v in jwk.items() if k not in ("d", "p", "q")}
                pem = _raw_pem(public_only)
                if pem is not None:
                    yield pem
    for group in _load(vectors_dir, "json_web_signature_test.json")["testGroups"]:
        private = group.get("private", {})
        if private.get("kty") in ("RSA", "EC") and "d" in private:
            try:
                key = _private_key(private)
            except (KeyError, ValueError):
                continue
            yield key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    for name in SIGNATURE_FILES:
        for group in _load(vectors_dir, name)["testGroups"]:
            pem = group["publicKeyPem"].encode()
            yield pem
            public = serialization.load_pem_public_key(pem)
            if isinstance(public, rsa.RSAPublicKey):
                yield public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
                )


def build(target: str, out: Path, vectors_dir: Path = VECTORS_DIR) -> int:
    """Write the target's seeds into ``out``; return how many distinct seeds there are."""
    seeds = token_seeds(vectors_dir) if target == "token" else key_seeds(vectors_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = set()
    for seed in seeds:
        name = hashlib.sha1(seed, usedforsecurity=False).hexdigest()
        names.add(name)
        (out / name).write_bytes(seed)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["token", "key"], required=True)
    parser.add_argument("--out", type=Path, help="default: fuzz/corpus/<target>")
    parser.add_argument("--vectors", type=Path, default=VECTORS_DIR)
    args = parser.parse_args(argv)
    out = args.out or CORPUS_DIR / args.target
    count = build(args.target, out, args.vectors)
    sys.stdout.write(f"{count} {args.target} seeds in {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
