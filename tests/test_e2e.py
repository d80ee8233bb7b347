"""End to end: HTTP client -> a real Envoy -> authz-server (a real process) -> JSON-RPC node.

Every test of the stack runs twice: Envoy asking over gRPC, and over HTTP ext_authz."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
import pytest
from google.rpc import code_pb2, status_pb2

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, ProjectRoute, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.tokens import PrivateKey, generate_private_key, mint, public_pem
from authz_server.verifier import TABLE_REASONS, Reason
from tests.authz_process import AuthzProcess
from tests.support import TRANSPORTS, Reply, post, row_tokens, wait_for, write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
ROUTED = "routed-project"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
SUFFIX = "example.com"


@dataclass
class Stack:
    keys_dir: Path
    node: JsonRpcNode
    authz: AuthzProcess
    envoy: EnvoyProcess
    transport: str = "grpc"
    authz_endpoint: Endpoint | None = None  # the address Envoy asks, for render()

    def render(self, upstream_port: int, **options: Any) -> dict[str, Any]:
        """An Envoy config asking this stack's authz-server over its transport."""
        assert self.authz_endpoint is not None
        return render(
            listen=Endpoint("127.0.0.1", 0),
            authz=self.authz_endpoint,
            upstream=Endpoint("127.0.0.1", upstream_port),
            admin=Endpoint("127.0.0.1", 0),
            transport=self.transport,
            **options,
        )

    def post(self, path: str, token: str | None = None, **headers: str) -> Reply:
        return post(self.envoy.port, path, token=token, headers=headers)

    def add_key(self, project: str, kid: str, key: PrivateKey) -> Path:
        directory = self.keys_dir / project
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".{kid}.tmp"
        staging.write_bytes(public_pem(key))
        path = directory / f"{kid}.pem"
        staging.rename(path)
        return path


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey
) -> Iterator[Stack]:
    transport: str = request.param
    keys_dir = tmp_path_factory.mktemp("keys")
    write_key(keys_dir / PROJECT, KID, ec_key)
    write_key(keys_dir / ROUTED, KID, ec_key)
    with (
        JsonRpcNode() as node,
        AuthzProcess(
            keys_dir, "--audience-suffix", SUFFIX, "--http-listen", "127.0.0.1:0"
        ) as authz,
    ):
        port = authz.port_for(transport)
        stack = Stack(keys_dir, node, authz, None, transport, Endpoint("127.0.0.1", port))  # type: ignore[arg-type]
        # Per-route projects are gRPC's context_extensions; over HTTP the path names it.
        routes = [ProjectRoute("/v1/mainnet", ROUTED)] if transport == "grpc" else []
        with EnvoyProcess(stack.render(node.port, project_routes=routes)) as envoy:
            stack.envoy = envoy
            yield stack


def _denied(reply: Reply, reason: Reason, project: str = PROJECT) -> None:
    assert reply.status == 403
    assert reply.content_type == "application/json"
    assert reply.json() == {"code": -32013, "message": reason.message, "project": project}


def test_a_valid_token_gets_the_nodes_answer(stack: Stack, ec_key: PrivateKey) -> None:
    now = int(time.time())
    token = mint(ec_key, KID, {"exp": now + 60, "nbf": now - 60, "aud": f"rpc.{SUFFIX}"})
    reply = stack.post(f"/eth/{PROJECT}", token)
    assert reply.status == 200
    assert reply.json()["id"] == 1
    assert str(reply.json()["result"]).startswith("0x")


def test_envoy_asks_the_service_over_the_stacks_transport(stack: Stack) -> None:
    stack.post(f"/eth/{PROJECT}")
    with urllib.request.urlopen(stack.envoy.admin_url + "/stats?filter=^cluster\\.authz\\.") as r:
        stats = dict(line.split(": ", 1) for line in r.read().decode().splitlines())
    http1 = int(stats["cluster.authz.upstream_cx_http1_total"])
    http2 = int(stats["cluster.authz.upstream_cx_http2_total"])
    assert (http1 > 0, http2 > 0) == ((False, True) if stack.transport == "grpc" else (True, False))


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


@pytest.mark.parametrize(
    "reason",
    list(TABLE_REASONS),
    ids=lambda r: r.code,
)
def test_each_row_of_the_table_reaches_the_client_as_403_json(
    stack: Stack, ec_key: PrivateKey, other_ec_key: PrivateKey, reason: Reason
) -> None:
    before = len(stack.node.requests)
    if reason is Reason.INVALID_PROJECT_ID:  # row 0 is about the path, not the token
        _denied(stack.post(f"/eth/{PROJECT};x"), reason, project=f"{PROJECT};x")
    else:
        token = row_tokens(ec_key, other_ec_key, KID)[reason]
        _denied(stack.post(f"/eth/{PROJECT}", token), reason)
    assert len(stack.node.requests) == before  # nothing reached the node


def test_a_route_context_extension_selects_the_project_and_over_http_the_path_does(
    stack: Stack, ec_key: PrivateKey
) -> None:
    if stack.transport == "grpc":
        _denied(stack.post("/v1/mainnet"), Reason.MISSING_TOKEN, project=ROUTED)
        assert stack.post("/v1/mainnet", mint(ec_key, KID, {})).status == 200
    else:
        assert stack.post("/v1/mainnet").status == 200  # "mainnet": a project without keys
        assert stack.node.requests[-1]["x-authz-project"] == "mainnet"
        _denied(stack.post(f"/v1/{ROUTED}"), Reason.MISSING_TOKEN, project=ROUTED)


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


def test_a_project_keeps_its_25_oldest_keys_and_a_26th_signs_nothing(stack: Stack) -> None:
    project = "twenty-six-keys"
    keys = [generate_private_key("ES256") for _ in range(26)]
    now = time.time()
    staging = stack.keys_dir / f".{project}.tmp"  # hidden: not a project until renamed
    for index, key in enumerate(keys):  # key 0 is the oldest, key 25 the newest
        write_key(staging, f"key-{index:02d}", key, mtime=now - 1000 + index)
    staging.rename(stack.keys_dir / project)
    oldest, last_active, newest = (mint(keys[i], f"key-{i:02d}", {}) for i in (0, 24, 25))
    # Open until its keys are loaded: then a request without a token is refused.
    wait_for(lambda: stack.post(f"/eth/{project}").status == 403, timeout=2.0)
    assert stack.post(f"/eth/{project}", oldest).status == 200
    assert stack.post(f"/eth/{project}", last_active).status == 200
    _denied(stack.post(f"/eth/{project}", newest), Reason.UNKNOWN_KEY_ID, project=project)


# -- the project a request is for, as the gate and the upstream read it ----------------------

# Each reached the node with 200 before: the gate saw an unknown (open) project, while common
# upstream parsers (urlparse, servlet ';' stripping, decode-then-trim) read them as PROJECT.
TRICK_SEGMENTS = [";x", ";", "%20", "%09", "%3Fx", "%23", "%2e", "."]


@pytest.mark.parametrize("suffix", TRICK_SEGMENTS)
def test_a_path_an_upstream_could_read_as_a_keyed_project_is_denied_and_never_forwarded(
    stack: Stack, ec_key: PrivateKey, suffix: str
) -> None:
    before = len(stack.node.requests)
    for token in (None, mint(ec_key, KID, {})):
        reply = stack.post(f"/eth/{PROJECT}{suffix}", token)
        assert reply.status == 403
        assert reply.content_type == "application/json"
        assert reply.json()["code"] == -32013
        assert reply.json()["message"] == "invalid project id"
    assert len(stack.node.requests) == before


def test_the_upstream_is_told_the_project_and_no_client_copy_of_the_gates_headers_survives(
    stack: Stack, ec_key: PrivateKey
) -> None:
    forged = {
        "X-Authz-Project": "evil",
        "x_authz_project": "evil",
        "X-JWT-KID": "forged",
        "x_jwt_kid": "forged",
        "x-jwt_kid": "forged",
    }
    assert stack.post(f"/eth/{PROJECT}", mint(ec_key, KID, {}), **forged).status == 200
    seen = stack.node.requests[-1]
    assert seen["x-authz-project"] == PROJECT
    assert seen["x-jwt-kid"] == KID
    assert not [name for name in seen if "_" in name]

    assert stack.post("/eth/open-project", **forged).status == 200
    seen = stack.node.requests[-1]
    assert seen["x-authz-project"] == "open-project"
    assert "x-jwt-kid" not in seen
    assert not [name for name in seen if "_" in name]

    assert stack.post("/v1/mainnet/extra", mint(ec_key, KID, {}), **forged).status == 200
    routed = ROUTED if stack.transport == "grpc" else "extra"
    assert stack.node.requests[-1]["x-authz-project"] == routed


class _WsgiUpstream:
    """A WSGI app on wsgiref, which reads `x_jwt_kid` and `x-jwt-kid` as one HTTP_X_JWT_KID."""

    def __init__(self) -> None:
        self.environs: list[dict[str, str]] = []
        self.server = make_server("127.0.0.1", 0, self.app, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.environs.append({k: v for k, v in environ.items() if k.startswith("HTTP_X_")})
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"jsonrpc": "2.0", "id": 1, "result": "0x1"}']


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def wsgi_gate(stack: Stack) -> Iterator[tuple[_WsgiUpstream, EnvoyProcess]]:
    upstream = _WsgiUpstream()
    upstream.thread.start()
    try:
        with EnvoyProcess(stack.render(upstream.server.server_address[1])) as envoy:
            yield upstream, envoy
    finally:
        upstream.server.shutdown()
        upstream.server.server_close()


@pytest.mark.parametrize("spelling", ["x_jwt_kid", "x-jwt_kid", "x_jwt-kid"])
def test_a_wsgi_upstream_sees_only_the_gates_kid_and_project(
    wsgi_gate: tuple[_WsgiUpstream, EnvoyProcess], ec_key: PrivateKey, spelling: str
) -> None:
    upstream, envoy = wsgi_gate
    spoofed = {spelling: "forged", spelling.replace("jwt", "authz").replace("kid", "project"): "x"}
    headers = {"authorization": f"Bearer {mint(ec_key, KID, {})}", **spoofed}
    assert post(envoy.port, f"/eth/{PROJECT}", headers=headers).status == 200
    assert upstream.environs[-1]["HTTP_X_JWT_KID"] == KID
    assert upstream.environs[-1]["HTTP_X_AUTHZ_PROJECT"] == PROJECT
    assert post(envoy.port, "/eth/open-project", headers=spoofed).status == 200
    assert "HTTP_X_JWT_KID" not in upstream.environs[-1]
    assert upstream.environs[-1]["HTTP_X_AUTHZ_PROJECT"] == "open-project"


class _AllowEverything:
    """An authorizer that allows every Check: what a faulty service would do."""

    def __enter__(self) -> _AllowEverything:
        allow = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK)
        ).SerializeToString()
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.auth.v3.Authorization",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    lambda _request, _context: allow,
                    request_deserializer=bytes,
                    response_serializer=bytes,
                )
            },
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def test_the_rendered_routes_keep_such_paths_from_the_upstream_even_if_the_service_allowed_them(
    ec_key: PrivateKey,
) -> None:
    with JsonRpcNode() as node, _AllowEverything() as authz:
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz.port),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
        )
        with EnvoyProcess(config) as envoy:
            stack = Stack(Path(), node, None, envoy)  # type: ignore[arg-type]
            for suffix in TRICK_SEGMENTS:
                reply = stack.post(f"/eth/{PROJECT}{suffix}")
                assert reply.status == 403, suffix
                assert reply.content_type == "application/json"
                assert reply.json()["message"] == "invalid project id"
                assert reply.json()["code"] == -32013
            assert node.requests == []
            assert stack.post(f"/eth/{PROJECT}").status == 200
            assert stack.post(f"/eth/{PROJECT}/?a=b;c").status == 200
            assert len(node.requests) == 2
