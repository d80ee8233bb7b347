"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

from authz_server.keys import VerifyKey, parse_public_key
from authz_server.tokens import PrivateKey, b64url, mint, public_pem
from authz_server.verifier import Reason

# The contract's messages, spelled out here rather than taken from the code under test.
MISSING: Final = "missing JWT token"
MALFORMED: Final = "invalid JWT token (malformatted token)"
UNSUPPORTED: Final = "invalid JWT token (unsupported algorithm)"
EMPTY_KID: Final = "invalid JWT token (empty key id)"
UNKNOWN_KID: Final = "invalid JWT token (empty configuration)"
BAD_SIGNATURE: Final = "invalid JWT token (signature verification failed)"
EXPIRED: Final = "invalid JWT token (expired token)"
NOT_YET: Final = "invalid JWT token (not reached nbf)"
BAD_AUDIENCE: Final = "invalid JWT token (invalid audience)"
CONTRACT_MESSAGES: Final = frozenset(
    {MISSING, MALFORMED, UNSUPPORTED, EMPTY_KID, UNKNOWN_KID, BAD_SIGNATURE}
    | {EXPIRED, NOT_YET, BAD_AUDIENCE}
)

# The ways Envoy asks the gate: every end-to-end test through a real Envoy runs over each
# (an authz-server started with --http-listen serves both; AuthzProcess.port_for picks).
TRANSPORTS: Final = ("grpc", "http")


def verify_key(kid: str, private: PrivateKey) -> VerifyKey:
    alg, public = parse_public_key(public_pem(private))
    return VerifyKey(kid=kid, alg=alg, public_key=public)


def write_key(
    directory: Path, kid: str, key: PrivateKey | bytes, mtime: float | None = None
) -> Path:
    """``<directory>/<kid>.pem`` holding ``key``'s public PEM (or these bytes as they are),
    the directory made if need be; ``mtime`` sets the file's times."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kid}.pem"
    path.write_bytes(key if isinstance(key, bytes) else public_pem(key))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def b64(data: bytes | str) -> str:
    """:func:`authz_server.tokens.b64url` of bytes, or of text as UTF-8."""
    return b64url(data.encode() if isinstance(data, str) else data)


def segment(obj: Any) -> str:
    """A base64url JSON segment, built by hand so tests can make any shape."""
    return b64(json.dumps(obj))


def with_parts(token: str, *, header: str | None = None, payload: str | None = None) -> str:
    """The token with a segment replaced (its signature no longer matches)."""
    h, p, s = token.split(".")
    return ".".join((header or h, payload or p, s))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> float:
    """Poll until ``predicate()`` is true; return the seconds it took, or fail."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def row_tokens(key: PrivateKey, other: PrivateKey, kid: str) -> dict[Reason, str | None]:
    """A token that each row of the decision table (but row 0, which is about the path)
    denies, for a project whose key ``kid`` is ``key``; audience suffix ``example.com``."""
    now = int(time.time())
    return {
        Reason.MISSING_TOKEN: None,
        Reason.MALFORMED: "abc.def",
        Reason.UNSUPPORTED_ALGORITHM: mint(key, kid, {}, header={"alg": "none"}),
        Reason.EMPTY_KEY_ID: mint(key, "", {}),
        Reason.UNKNOWN_KEY_ID: mint(key, "not-registered", {}),
        Reason.BAD_SIGNATURE: mint(other, kid, {}),
        Reason.EXPIRED: mint(key, kid, {"exp": now - 5}),
        Reason.NOT_YET_VALID: mint(key, kid, {"nbf": now + 3600}),
        Reason.BAD_AUDIENCE: mint(key, kid, {"aud": "rpc.example.org"}),
    }


README: Final = Path(__file__).resolve().parent.parent / "README.md"


def readme_section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def readme_shell_block(title: str) -> str:
    """The first ```sh block of a README section, as a user would copy it."""
    section = readme_section(title)
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


# A JSON-RPC call, as the end-to-end tests POST it through Envoy.
RPC_CALL: Final = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})


class Reply(NamedTuple):
    """What came back: the status, the headers (names lower-cased) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def post(
    port: int,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: str = RPC_CALL,
    timeout: float = 10.0,
) -> Reply:
    """POST ``body`` as JSON to ``127.0.0.1:port`` (Envoy, in the end-to-end tests), with
    ``token`` as a Bearer token and ``headers`` on top; any status is an answer."""
    sent = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers=sent)
        response = connection.getresponse()
        received = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, received, response.read())
    finally:
        connection.close()
