"""What the load generators send: CheckRequests as Envoy builds them, and the tokens in them.

A bench customer owns one project with an RS256 and an ES256 key. Requests are serialized
once, before any timing starts; tokens for the "distinct tokens" runs are minted in a process
pool, since an RS256 signature costs about a millisecond.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.devtools import requests as envoy_requests
from authz_server.tokens import PrivateKey, b64url, generate_private_key, mint, public_pem

__all__ = [
    "CHECK_METHOD",
    "RPC_BODY",
    "Customer",
    "check_request",
    "decode_verdict",
    "grpc_frame",
    "jwks_of",
    "mint_distinct",
]

CHECK_METHOD: Final = "/envoy.service.auth.v3.Authorization/Check"
RPC_BODY: Final = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
TOKEN_LIFETIME_S: Final = 6 * 3600


@dataclass(frozen=True, slots=True)
class Customer:
    """One project with one RS256 and one ES256 key, registered in ``keys_dir``."""

    project: str
    rsa: PrivateKey
    rsa_kid: str
    ec: PrivateKey
    ec_kid: str
    keys_dir: Path

    @classmethod
    def create(cls, keys_dir: Path) -> Customer:
        project = uuid.uuid4().hex + "00000000"  # 40 hex digits, like a real project id
        customer = cls(
            project=project,
            rsa=generate_private_key("RS256"),
            rsa_kid=str(uuid.uuid4()),
            ec=generate_private_key("ES256"),
            ec_kid=str(uuid.uuid4()),
            keys_dir=keys_dir,
        )
        customer.project_dir.mkdir(parents=True, exist_ok=True)
        customer.key_path("RS256").write_bytes(public_pem(customer.rsa))
        customer.key_path("ES256").write_bytes(public_pem(customer.ec))
        return customer

    @property
    def project_dir(self) -> Path:
        return self.keys_dir / self.project

    @property
    def path(self) -> str:
        """The URL path of the project's endpoint."""
        return f"/eth/{self.project}"

    def private(self, alg: str) -> tuple[PrivateKey, str]:
        return (self.rsa, self.rsa_kid) if alg == "RS256" else (self.ec, self.ec_kid)

    def key_path(self, alg: str) -> Path:
        return self.project_dir / f"{self.private(alg)[1]}.pem"

    def token(self, alg: str, **claims: object) -> str:
        key, kid = self.private(alg)
        return mint(key, kid, {"exp": int(time.time()) + TOKEN_LIFETIME_S, **claims})


def check_request(path: str, token: str | None, *, request_id: str = "") -> bytes:
    """A serialized CheckRequest for ``POST path`` with the token as a Bearer header."""
    headers = {
        ":authority": "127.0.0.1",
        ":method": "POST",
        ":path": path,
        "content-type": "application/json",
        "user-agent": "bench",
        "x-forwarded-proto": "http",
        "x-request-id": request_id or str(uuid.uuid4()),
    }
    request = envoy_requests.check_request(
        path, headers=headers, token=token, request_id=headers["x-request-id"], host="127.0.0.1"
    )
    return request.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def decode_verdict(response: bytes) -> str:
    """``allow`` or ``deny: <message>`` for a serialized CheckResponse."""
    decoded = external_auth_pb2.CheckResponse.FromString(response)
    if decoded.status.code == 0:
        return "allow"
    return f"deny: {decoded.status.message}"


def jwks_of(keys: Sequence[tuple[PrivateKey, str]]) -> str:
    """A JWKS document (RFC 7517) with the public halves, for Envoy's jwt_authn filter."""
    entries: list[dict[str, str]] = []
    for key, kid in keys:
        public = key.public_key()
        numbers = public.public_numbers()
        if hasattr(numbers, "n"):
            n, e = numbers.n, numbers.e  # type: ignore[union-attr]
            entries.append(
                {
                    "kty": "RSA",
                    "kid": kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")),
                    "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big")),
                }
            )
        else:
            x, y = numbers.x, numbers.y
            entries.append(
                {
                    "kty": "EC",
                    "kid": kid,
                    "alg": "ES256",
                    "use": "sig",
                    "crv": "P-256",
                    "x": b64url(x.to_bytes(32, "big")),
                    "y": b64url(y.to_bytes(32, "big")),
                }
            )
    return json.dumps({"keys": entries})


def _mint_chunk(private_pem: bytes, kid: str, start: int, count: int, exp: int) -> list[str]:
    loaded = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(loaded, PrivateKey)
    return [
        mint(loaded, kid, {"exp": exp, "jti": f"bench-{i}"}) for i in range(start, start + count)
    ]


def mint_distinct(key: PrivateKey, kid: str, count: int) -> list[str]:
    """``count`` different valid tokens for one key (they differ by ``jti``)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    exp = int(time.time()) + TOKEN_LIFETIME_S
    processes = max(1, os.cpu_count() or 1)
    chunk = -(-count // processes)
    with ProcessPoolExecutor(processes) as pool:
        parts = [
            pool.submit(_mint_chunk, pem, kid, start, min(chunk, count - start), exp)
            for start in range(0, count, chunk)
        ]
        return [token for part in parts for token in part.result()]
