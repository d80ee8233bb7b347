"""End to end: HTTP client -> a real Envoy -> authz-server (a real process) -> JSON-RPC node."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from authz_process import AuthzProcess
from support import wait_for

from authz_server.demo_upstream import JsonRpcNode
from authz_server.envoy_config import Endpoint, ProjectRoute, render
from authz_server.envoy_process import EnvoyProcess
from authz_server.tokens import PrivateKey, mint, public_pem
from authz_server.verifier import TABLE_REASONS, Reason

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
ROUTED = "routed-project"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
SUFFIX = "example.com"
RPC = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}


@dataclass
class Reply:
    status: int
    content_type: str
    body: dict[str, object]


@dataclass
class Stack:
    keys_dir: Path
    node: JsonRpcNode
    authz: AuthzProcess
    envoy: EnvoyProcess

    def post(self, path: str, token: str | None = None, **headers: str) -> Reply:
        sent = {"content-type": "application/json", **headers}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.envoy.url + path, data=json.dumps(RPC).encode(), headers=sent, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Reply(response.status, response.headers["content-type"], _json(response))
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.headers["content-type"], _json(error))

    def add_key(self, project: str, kid: str, key: PrivateKey) -> Path:
        directory = self.keys_dir / project
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".{kid}.tmp"
        staging.write_bytes(public_pem(key))
        path = directory / f"{kid}.pem"
        staging.rename(path)
        return path


def _json(response: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(response.read())  # type: ignore[attr-defined]
    return data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey) -> Iterator[Stack]:
    keys_dir = tmp_path_factory.mktemp("keys")
    (keys_dir / PROJECT).mkdir()
    (keys_dir / PROJECT / f"{KID}.pem").write_bytes(public_pem(ec_key))
    (keys_dir / ROUTED).mkdir()
    (keys_dir / ROUTED / f"{KID}.pem").write_bytes(public_pem(ec_key))
    with (
        JsonRpcNode() as node,
        AuthzProcess(keys_dir, "--audience-suffix", SUFFIX) as authz,
    ):
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz.port),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
            project_routes=[ProjectRoute("/v1/mainnet", ROUTED)],
        )
        with EnvoyProcess(config) as envoy:
            yield Stack(keys_dir, node, authz, envoy)


def _denied(reply: Reply, reason: Reason, project: str = PROJECT) -> None:
    assert reply.status == 403
    assert reply.content_type == "application/json"
    assert reply.body == {"code": -32013, "message": reason.message, "project": project}


def test_a_valid_token_gets_the_nodes_answer(stack: Stack, ec_key: PrivateKey) -> None:
    now = int(time.time())
    token = mint(ec_key, KID, {"exp": now + 60, "nbf": now - 60, "aud": f"rpc.{SUFFIX}"})
    reply = stack.post(f"/eth/{PROJECT}", token)
    assert reply.status == 200
    assert reply.body["id"] == 1
    assert str(reply.body["result"]).startswith("0x")


def test_the_upstream_sees_the_kid_and_never_the_token(stack: Stack, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {})
    assert stack.post(f"/eth/{PROJECT}", token, **{"x-jwt-kid": "forged"}).status == 200
    seen = stack.node.requests[-1]
    assert seen["x-jwt-kid"] == KID
    assert "authorization" not in seen


def test_a_project_without_keys_passes_untouched(stack: Stack) -> None:
    reply = stack.post("/eth/open-project", "not-even-a-jwt", **{"x-jwt-kid": "forged"})
    assert reply.status == 200
    seen = stack.node.requests[-1]
    assert seen["authorization"] == "Bearer not-even-a-jwt"
    assert "x-jwt-kid" not in seen


def _row_tokens(key: PrivateKey, other: PrivateKey) -> dict[Reason, str | None]:
    now = int(time.time())
    return {
        Reason.MISSING_TOKEN: None,
        Reason.MALFORMED: "abc.def",
        Reason.UNSUPPORTED_ALGORITHM: mint(key, KID, {}, header={"alg": "none"}),
        Reason.EMPTY_KEY_ID: mint(key, "", {}),
        Reason.UNKNOWN_KEY_ID: mint(key, "not-registered", {}),
        Reason.BAD_SIGNATURE: mint(other, KID, {}),
        Reason.EXPIRED: mint(key, KID, {"exp": now - 5}),
        Reason.NOT_YET_VALID: mint(key, KID, {"nbf": now + 3600}),
        Reason.BAD_AUDIENCE: mint(key, KID, {"aud": "rpc.example.org"}),
    }


@pytest.mark.parametrize(
    "reason",
    list(TABLE_REASONS),
    ids=lambda r: r.code,
)
def test_each_row_of_the_table_reaches_the_client_as_403_json(
    stack: Stack, ec_key: PrivateKey, other_ec_key: PrivateKey, reason: Reason
) -> None:
    token = _row_tokens(ec_key, other_ec_key)[reason]
    before = len(stack.node.requests)
    _denied(stack.post(f"/eth/{PROJECT}", token), reason)
    assert len(stack.node.requests) == before  # nothing reached the node


def test_a_route_context_extension_selects_the_project(stack: Stack, ec_key: PrivateKey) -> None:
    _denied(stack.post("/v1/mainnet"), Reason.MISSING_TOKEN, project=ROUTED)
    assert stack.post("/v1/mainnet", mint(ec_key, KID, {})).status == 200


def test_a_key_dropped_in_is_accepted_within_a_second_and_deleting_it_revokes(
    stack: Stack, other_ec_key: PrivateKey
) -> None:
    kid = "7b1c9f5e-0c1d-4f1e-9d2a-3a4b5c6d7e8f"
    token = mint(other_ec_key, kid, {})
    _denied(stack.post(f"/eth/{PROJECT}", token), Reason.UNKNOWN_KEY_ID)
    path = stack.add_key(PROJECT, kid, other_ec_key)
    wait_for(lambda: stack.post(f"/eth/{PROJECT}", token).status == 200, timeout=1.0)
    path.unlink()
    wait_for(lambda: stack.post(f"/eth/{PROJECT}", token).status == 403, timeout=1.0)
    _denied(stack.post(f"/eth/{PROJECT}", token), Reason.UNKNOWN_KEY_ID)
