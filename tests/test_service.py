"""The gRPC service on port 0, called by a real gRPC client as Envoy would."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server._proto.envoy.service.auth.v3 import (
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz_server.devtools.requests import check_request
from authz_server.keystore import KeyStore
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.grpc import AuthorizationService, GateServer, project_of
from authz_server.verifier import Policy, Reason
from tests.support import write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
NOW = 1_700_000_000.0
# Every other spelling of the gate's headers that a CGI/WSGI upstream reads as the same name.
FORGED_ALIASES = {
    "x_jwt_kid", "x-jwt_kid", "x_jwt-kid",
    "x_authz_project", "x-authz_project", "x_authz-project",
}  # fmt: skip


class Gate:
    """A running service on 127.0.0.1:0 with a client stub and a writable keys dir."""

    def __init__(self, keys_dir: Path, **options: object) -> None:
        self.keys_dir = keys_dir
        self.store = KeyStore(keys_dir)
        self.store.reload()
        policy = Policy(
            leeway=float(options.pop("leeway", 0)),  # type: ignore[arg-type]
            audience_suffix=str(options.pop("audience_suffix", "")),
        )
        service = AuthorizationService(
            lambda: self.store.snapshot,
            policy,
            clock=lambda: NOW,
            **options,  # type: ignore[arg-type]
        )
        self.server = GateServer(service, "127.0.0.1:0", threads=4)
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)

    def add_key(self, project: str, kid: str, key: PrivateKey) -> None:
        write_key(self.keys_dir / project, kid, key)
        self.store.reload()

    def check(
        self,
        path: str = f"/eth/{PROJECT}",
        headers: dict[str, str] | None = None,
        context: dict[str, str] | None = None,
        request_id: str = "",
    ) -> external_auth_pb2.CheckResponse:
        request = check_request(path, headers=headers, context=context, request_id=request_id)
        response: external_auth_pb2.CheckResponse = self.stub.Check(request, timeout=5)
        return response

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=1)


@pytest.fixture
def gate(tmp_path: Path, ec_key: PrivateKey) -> Iterator[Gate]:
    g = Gate(tmp_path)
    g.add_key(PROJECT, KID, ec_key)
    yield g
    g.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def denial(response: external_auth_pb2.CheckResponse) -> dict[str, object]:
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    assert denied.status.code == 403
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers == {"content-type": "application/json"}
    body: dict[str, object] = json.loads(denied.body)
    return body


def test_a_valid_token_is_allowed_with_its_kid_and_without_the_authorization_header(
    gate: Gate, ec_key: PrivateKey
) -> None:
    response = gate.check(headers=bearer(mint(ec_key, KID, {"exp": NOW + 60})))
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == [
        ("x-authz-project", PROJECT),
        ("x-jwt-kid", KID),
    ]
    assert {h.append_action for h in ok.headers} == {ok.headers[0].OVERWRITE_IF_EXISTS_OR_ADD}
    assert set(ok.headers_to_remove) == {"authorization", *FORGED_ALIASES}


def test_forward_jwt_keeps_the_authorization_header(tmp_path: Path, ec_key: PrivateKey) -> None:
    g = Gate(tmp_path, forward_jwt=True)
    try:
        g.add_key(PROJECT, KID, ec_key)
        response = g.check(headers=bearer(mint(ec_key, KID, {})))
        assert response.status.code == code_pb2.OK
        assert set(response.ok_response.headers_to_remove) == FORGED_ALIASES
    finally:
        g.close()


def test_a_project_without_keys_passes_untouched_but_cannot_forge_the_gates_headers(
    gate: Gate,
) -> None:
    for headers in ({}, {"authorization": "Bearer whatever"}, {"x-jwt-kid": "forged"}):
        response = gate.check(path="/eth/open-project", headers=headers)
        assert response.status.code == code_pb2.OK
        ok = response.ok_response
        assert [(h.header.key, h.header.value) for h in ok.headers] == [
            ("x-authz-project", "open-project")
        ]
        assert ok.headers[0].append_action == ok.headers[0].OVERWRITE_IF_EXISTS_OR_ADD
        assert set(ok.headers_to_remove) == {"x-jwt-kid", *FORGED_ALIASES}


@pytest.mark.parametrize(
    "segment",
    [
        f"{PROJECT};x",
        f"{PROJECT};",
        f"{PROJECT}%20",
        f"{PROJECT}%09",
        f"{PROJECT}%3Fx",
        f"{PROJECT}%23",
        f"{PROJECT}.",
        "a b",
        "x" * 129,
        "p\u00e9",
    ],
    ids=["semicolon-x", "semicolon", "pct20", "pct09", "pct3f", "pct23", "dot", "space",
         "129-chars", "non-ascii"],
)  # fmt: skip
def test_a_path_segment_that_is_no_valid_project_id_is_denied_before_any_other_check(
    gate: Gate, ec_key: PrivateKey, segment: str
) -> None:
    """Even with a valid token of the keyed project it resembles, and with no token."""
    for headers in ({}, bearer(mint(ec_key, KID, {}))):
        body = denial(gate.check(path=f"/eth/{segment}", headers=headers))
        assert body == {"code": -32013, "message": "invalid project id", "project": segment[:128]}


@pytest.mark.parametrize("path", ["/", "", "//"])
def test_a_path_without_any_segment_names_no_project_and_is_denied(gate: Gate, path: str) -> None:
    body = denial(gate.check(path=path))
    assert body == {"code": -32013, "message": "invalid project id", "project": ""}


def test_an_invalid_project_in_a_route_context_extension_is_denied(gate: Gate) -> None:
    body = denial(gate.check(path=f"/eth/{PROJECT}", context={"project": "a;b"}))
    assert body["message"] == "invalid project id"


@pytest.mark.parametrize("project", ["a", "A-Z_0-9", "x" * 128], ids=["1", "charset", "128"])
def test_valid_project_ids_at_the_edges_are_projects(gate: Gate, project: str) -> None:
    response = gate.check(path=f"/eth/{project}")
    assert response.status.code == code_pb2.OK
    assert response.ok_response.headers[0].header.value == project


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, Reason.MISSING_TOKEN),
        ({"authorization": "Basic Zm9vOmJhcg=="}, Reason.MISSING_TOKEN),
        ({"authorization": "Bearer "}, Reason.MISSING_TOKEN),
        ({"authorization": "Bearer not.a.jwt!"}, Reason.MALFORMED),
    ],
    ids=["no-header", "basic", "empty-bearer", "garbage"],
)
def test_denials_carry_the_json_rpc_body(
    gate: Gate, headers: dict[str, str], reason: Reason
) -> None:
    body = denial(gate.check(headers=headers))
    assert body == {"code": -32013, "message": reason.message, "project": PROJECT}


def test_each_signed_denial_reaches_the_client_with_its_exact_message(
    tmp_path: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    g = Gate(tmp_path, audience_suffix="example.com")
    try:
        g.add_key(PROJECT, KID, ec_key)
        cases = {
            Reason.UNSUPPORTED_ALGORITHM: mint(ec_key, KID, {}, header={"alg": "HS256"}),
            Reason.EMPTY_KEY_ID: mint(ec_key, "", {}),
            Reason.UNKNOWN_KEY_ID: mint(ec_key, "unknown", {}),
            Reason.BAD_SIGNATURE: mint(other_ec_key, KID, {}),
            Reason.EXPIRED: mint(ec_key, KID, {"exp": NOW}),
            Reason.NOT_YET_VALID: mint(ec_key, KID, {"nbf": NOW + 1}),
            Reason.BAD_AUDIENCE: mint(ec_key, KID, {"aud": "example.org"}),
        }
        for reason, token in cases.items():
            body = denial(g.check(headers=bearer(token)))
            assert body["message"] == reason.message
    finally:
        g.close()


def test_the_body_is_exactly_the_providers_format(gate: Gate) -> None:
    response = gate.check()
    assert response.denied_response.body == (
        '{"code": -32013, "message": "missing JWT token", '
        '"project": "2a8428f5a79b09aadff75a745397cf6d2f59d51e"}'
    )


def test_keys_of_one_project_never_serve_another(
    gate: Gate, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    gate.add_key("other-project", "other-kid", other_ec_key)
    token = mint(other_ec_key, "other-kid", {})
    body = denial(gate.check(headers=bearer(token)))
    assert body["message"] == Reason.UNKNOWN_KEY_ID.message
    assert gate.check(path="/eth/other-project", headers=bearer(token)).status.code == 0


def test_each_response_names_its_own_project_when_another_gets_the_same_answer(
    gate: Gate, ec_key: PrivateKey
) -> None:
    """Responses are encoded once and reused: the project must be part of what is reused."""
    gate.add_key("other-project", KID, ec_key)
    token = mint(ec_key, KID, {})
    for project in (PROJECT, "other-project", PROJECT):
        assert denial(gate.check(path=f"/eth/{project}"))["project"] == project
        ok = gate.check(path=f"/eth/{project}", headers=bearer(token)).ok_response
        assert [(h.header.key, h.header.value) for h in ok.headers] == [
            ("x-authz-project", project),
            ("x-jwt-kid", KID),
        ]
    for project in ("open-a", "open-b", "open-a"):
        ok = gate.check(path=f"/eth/{project}").ok_response
        assert [(h.header.key, h.header.value) for h in ok.headers] == [
            ("x-authz-project", project)
        ]


@pytest.mark.parametrize(
    ("path", "context", "project"),
    [
        (f"/eth/{PROJECT}", {}, PROJECT),
        (f"/eth/{PROJECT}/", {}, PROJECT),
        (f"/eth/{PROJECT}//", {}, PROJECT),
        (f"/eth/{PROJECT}?a=b/c", {}, PROJECT),
        (f"/{PROJECT}", {}, PROJECT),
        ("/", {}, ""),
        ("", {}, ""),
        ("/v1/mainnet", {"project": PROJECT}, PROJECT),
        ("/v1/mainnet", {"project": ""}, "mainnet"),
        ("/v1/mainnet", {"other": "x"}, "mainnet"),
    ],
)
def test_the_project_is_the_context_extension_or_the_last_path_segment(
    path: str, context: dict[str, str], project: str
) -> None:
    attributes = check_request(path, context=context).attributes
    assert project_of(attributes) == project


def test_a_route_context_extension_selects_the_project(gate: Gate, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {})
    assert gate.check(path="/v1/mainnet", context={"project": PROJECT}).status.code != 0
    allowed = gate.check(path="/v1/mainnet", context={"project": PROJECT}, headers=bearer(token))
    assert allowed.status.code == code_pb2.OK


def test_before_the_first_complete_scan_every_request_is_denied(
    tmp_path: Path, ec_key: PrivateKey
) -> None:
    """Which projects have keys is unknown until the keys directory has been read whole:
    no project may pass as one without keys meanwhile (fail closed)."""
    keys_dir = tmp_path / "keys"  # not there yet: no scan can complete
    g = Gate(keys_dir)
    try:
        token = mint(ec_key, KID, {})
        for headers in ({}, bearer(token)):
            response = g.check(path="/eth/some-project", headers=headers)
            assert denial(response) == {
                "code": -32013,
                "message": "authorization service unavailable",
                "project": "some-project",
            }
        keys_dir.mkdir()
        g.store.reload()  # the first complete scan: no project has keys
        assert g.check(path="/eth/some-project").status.code == code_pb2.OK
    finally:
        g.close()


def test_an_internal_error_denies_and_never_logs_the_token(
    tmp_path: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_snapshot() -> object:
        raise RuntimeError("storage exploded")

    service = AuthorizationService(broken_snapshot, Policy())  # type: ignore[arg-type]
    token = mint(ec_key, KID, {})
    with caplog.at_level(logging.DEBUG):
        response = service.check(check_request(f"/eth/{PROJECT}", token=token))
    assert denial(response)["message"] == Reason.INTERNAL_ERROR.message
    assert "RuntimeError" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_denials_are_logged_with_reason_kid_and_request_id_but_never_the_token(
    gate: Gate, other_ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    token = mint(other_ec_key, KID, {})
    with caplog.at_level(logging.INFO, logger="authz_server.service"):
        gate.check(headers=bearer(token), request_id="req-123")
    line = next(r.getMessage() for r in caplog.records if "denied" in r.getMessage())
    assert f"project={PROJECT}" in line
    assert "reason=bad_signature" in line
    assert f"kid={KID}" in line
    assert "request_id=req-123" in line
    for part in token.split("."):
        assert part not in caplog.text


def test_health_reports_serving_for_the_server_and_the_check_service(gate: Gate) -> None:
    stub = health_pb2_grpc.HealthStub(gate.channel)
    for service in ("", "envoy.service.auth.v3.Authorization"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_reports_not_serving_once_stopping(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    g.server.set_serving(False)
    stub = health_pb2_grpc.HealthStub(g.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    g.close()


def test_a_key_swap_mid_traffic_never_yields_an_error(
    gate: Gate, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    token = mint(ec_key, KID, {})
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            code = gate.check(headers=bearer(token)).status.code
            if code not in (code_pb2.OK, code_pb2.PERMISSION_DENIED):
                failures.append(str(code))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        gate.add_key(PROJECT, f"extra-{i}", other_ec_key)
        gate.add_key(PROJECT, KID, ec_key)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert gate.check(headers=bearer(token)).status.code == code_pb2.OK
