"""Project settings end to end: client -> a real Envoy -> authz-server (a real process) ->
JSON-RPC node, over both transports. Every setting, hot reload of the settings file and a
broken one, and the spoofing tries a client can make (none passes)."""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.keydir import write_atomically
from authz_server.settings import SETTINGS_FILE
from authz_server.tokens import PrivateKey, mint
from tests.authz_process import AuthzProcess
from tests.support import MISSING, TRANSPORTS, UNKNOWN_KID, post, wait_for, write_key
from tests.test_http_transport import Client, request

KID = "7b1d2a4e-0c55-4f0e-9a1b-3c2d4e5f6a7b"
# The messages, spelled out here rather than taken from the code under test.
IP_DENIED = "ip address not allowed"
ORIGIN_DENIED = "origin not allowed"
INVALID = "invalid project settings"
TOO_LONG = "invalid JWT token (token lifetime too long)"
PAGE = "https://app.example.com"

# Each project's settings at start ("local-ips" is written once Envoy's view of the test's
# address is known).
SETTINGS = {
    "locked": "require_jwt = true\n",
    "far-ips": 'allowed_ips = ["203.0.113.0/24", "2001:db8::/32"]\n',
    "local-ips": "",
    "dapp": f'allowed_origins = ["{PAGE}", "https://*.dapp.example"]\n',
    "lifetime": 'max_token_lifetime = "15m"\n',
    "claims": '[claims_to_headers]\nsub = "x-jwt-sub"\n',
    "rollout": 'report_only = true\nrequire_jwt = true\nallowed_ips = ["203.0.113.0/24"]\n',
    "broken-at-start": "require_jwt = yes please\n",
    "reloaded": "",
}
KEYED = ("lifetime", "claims", "rollout", "reloaded", "dapp")


@dataclass
class Answer:
    status: int
    body: dict[str, object]


@dataclass
class Stack:
    keys_dir: Path
    node: JsonRpcNode
    authz: AuthzProcess
    envoy: EnvoyProcess
    transport: str
    local_ips: str = "[]"  # a TOML list allowing this test's own address, as Envoy sees it

    def post(self, project: str, token: str | None = None, **headers: str) -> Answer:
        """POST through Envoy; ``headers`` named with '_' for '-' (x_forwarded_for=...)."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        reply = post(self.envoy.port, f"/eth/{project}", token=token, headers=sent)
        return Answer(reply.status, reply.json() or {})

    def settings(self, project: str, text: str) -> None:
        directory = self.keys_dir / project
        directory.mkdir(exist_ok=True)
        write_atomically(directory / SETTINGS_FILE, text.encode(), mode=0o644)

    def metric(self, name: str, reason: str) -> float:
        url = f"http://127.0.0.1:{self.authz.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        match = re.search(rf'^{name}\{{reason="{reason}"\}} (\S+)$', text, re.MULTILINE)
        return 0.0 if match is None else float(match.group(1))


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey
) -> Iterator[Stack]:
    transport: str = request.param
    keys_dir = tmp_path_factory.mktemp("keys")
    for project, text in SETTINGS.items():
        (keys_dir / project).mkdir()
        if text:
            (keys_dir / project / SETTINGS_FILE).write_text(text)
    for project in KEYED:
        write_key(keys_dir / project, KID, ec_key)
    with (
        JsonRpcNode() as node,
        AuthzProcess(
            keys_dir, "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"
        ) as authz,
    ):
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz.port_for(transport)),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
            transport=transport,
        )
        with EnvoyProcess(config) as envoy:
            stack = Stack(keys_dir, node, authz, envoy, transport)
            # Envoy appends a loopback client's address to X-Forwarded-For as its own local
            # address (use_remote_address), while gRPC's source is 127.0.0.1: allow both.
            assert stack.post("open-project").status == 200
            appended = node.requests[-1]["x-forwarded-for"].rsplit(",", 1)[-1].strip()
            stack.local_ips = f'["127.0.0.0/8", "{ipaddress.ip_network(appended)}"]'
            stack.settings("local-ips", f"allowed_ips = {stack.local_ips}\n")
            wait_for(lambda: stack.post("local-ips").status == 200, 2)
            yield stack


def token(key: PrivateKey, lifetime: int = 600, **claims: object) -> str:
    return mint(key, KID, {"exp": int(time.time()) + lifetime, **claims})


def denied(answer: Answer, message: str, project: str) -> bool:
    return answer.status == 403 and answer.body == {
        "code": -32013,
        "message": message,
        "project": project,
    }


def test_require_jwt_locks_a_project_without_keys(stack: Stack, ec_key: PrivateKey) -> None:
    assert denied(stack.post("locked"), MISSING, "locked")
    assert denied(stack.post("locked", token(ec_key)), UNKNOWN_KID, "locked")
    assert stack.post("open-project").status == 200


def test_an_ip_allowlist_denies_other_addresses(stack: Stack) -> None:
    assert denied(stack.post("far-ips"), IP_DENIED, "far-ips")
    assert stack.post("local-ips").status == 200


@pytest.mark.parametrize(
    "forwarded_for",
    [
        "203.0.113.7",
        "203.0.113.7, 203.0.113.8",
        "::ffff:203.0.113.7",
        "2001:db8::1",
        "unknown",
    ],
)
def test_a_client_cannot_claim_an_allowed_address_in_x_forwarded_for(
    stack: Stack, forwarded_for: str
) -> None:
    assert denied(stack.post("far-ips", x_forwarded_for=forwarded_for), IP_DENIED, "far-ips")
    assert denied(stack.post("far-ips", X_Real_IP="203.0.113.7"), IP_DENIED, "far-ips")
    # ... nor hide its own address behind another from an allowed project.
    assert stack.post("local-ips", x_forwarded_for="192.0.2.1").status == 200


def test_an_origin_allowlist(stack: Stack, ec_key: PrivateKey) -> None:
    valid = token(ec_key)
    assert stack.post("dapp", valid, origin=PAGE).status == 200
    assert stack.post("dapp", valid, origin="https://a.dapp.example").status == 200
    for origin in (
        "https://evil.example",
        "null",
        "https://APP.example.com",
        "https://app.example.com:443",
        "https://app.example.com.evil.net",
        "https://*.dapp.example",
        "https://dapp.example",
    ):
        assert denied(stack.post("dapp", valid, origin=origin), ORIGIN_DENIED, "dapp"), origin
    assert denied(stack.post("dapp", valid), ORIGIN_DENIED, "dapp")  # no Origin at all


def test_the_origin_is_checked_before_the_token(stack: Stack) -> None:
    assert denied(stack.post("dapp", origin="https://evil.example"), ORIGIN_DENIED, "dapp")
    assert denied(stack.post("dapp", origin=PAGE), MISSING, "dapp")


def test_a_token_that_lives_too_long_is_denied(stack: Stack, ec_key: PrivateKey) -> None:
    assert denied(stack.post("lifetime", token(ec_key, 3600)), TOO_LONG, "lifetime")
    assert denied(stack.post("lifetime", mint(ec_key, KID, {})), TOO_LONG, "lifetime")
    assert stack.post("lifetime", token(ec_key, 600)).status == 200


def test_a_claim_goes_upstream_and_a_client_copy_does_not(stack: Stack, ec_key: PrivateKey) -> None:
    reply = stack.post("claims", token(ec_key, sub="user-42"), x_jwt_sub="forged")
    assert reply.status == 200
    assert stack.node.requests[-1].get("x-jwt-sub") == "user-42"
    reply = stack.post("claims", token(ec_key), x_jwt_sub="forged")  # no sub claim
    assert reply.status == 200
    assert "x-jwt-sub" not in stack.node.requests[-1]


def test_report_only_passes_and_counts_what_it_would_deny(stack: Stack) -> None:
    before = stack.metric("authz_would_deny_total", "ip_not_allowed")
    reply = stack.post("rollout", x_forwarded_for="203.0.113.7")
    assert reply.status == 200
    assert stack.node.requests[-1].get("x-authz-project") == "rollout"
    wait_for(lambda: stack.metric("authz_would_deny_total", "ip_not_allowed") == before + 1, 2)
    wait_for(lambda: "would deny project=rollout reason=ip_not_allowed" in stack.authz.log, 2)


def test_report_only_passes_a_failed_token_without_it(
    stack: Stack, other_ec_key: PrivateKey
) -> None:
    """A token the project would refuse (here: signed by a key it does not have) passes in
    report-only mode, but never reaches the upstream: a failed token is no node's business."""
    reply = stack.post("rollout", token(other_ec_key), x_forwarded_for="203.0.113.7")
    assert reply.status == 200
    seen = stack.node.requests[-1]
    assert seen.get("x-authz-project") == "rollout"
    assert "authorization" not in seen
    assert "x-jwt-kid" not in seen


def test_a_file_that_never_loaded_denies_the_whole_project(stack: Stack) -> None:
    assert denied(stack.post("broken-at-start"), INVALID, "broken-at-start")
    assert "settings file" in stack.authz.log


def test_settings_hot_reload_and_a_broken_file_keeps_the_last_good(
    stack: Stack, ec_key: PrivateKey
) -> None:
    project = "reloaded"
    assert denied(stack.post(project), MISSING, project)  # keys, no settings yet
    valid = token(ec_key)
    assert stack.post(project, valid).status == 200  # now cached
    stack.settings(project, 'allowed_ips = ["203.0.113.0/24"]\n')
    took = wait_for(lambda: denied(stack.post(project, valid), IP_DENIED, project), 1.5)
    assert took < 1.0 + 0.5
    stack.settings(project, f"allowed_ips = {stack.local_ips}\nallowed_ipz = []\n")  # broken
    wait_for(lambda: "allowed_ipz" in stack.authz.log, 2)
    assert denied(stack.post(project, valid), IP_DENIED, project)  # the last good stays
    stack.settings(project, f"allowed_ips = {stack.local_ips}\n")
    wait_for(lambda: stack.post(project, valid).status == 200, 1.5)
    (stack.keys_dir / project / SETTINGS_FILE).unlink()
    stack.settings(project, "")
    wait_for(lambda: stack.post(project, valid).status == 200, 1.5)


@pytest.mark.parametrize(("hops", "status"), [("0", 403), ("1", 200)])
def test_trusted_proxy_hops_picks_the_client_address_left_of_the_operators_proxies(
    tmp_path: Path, hops: str, status: int
) -> None:
    (tmp_path / "far-ips").mkdir()
    (tmp_path / "far-ips" / SETTINGS_FILE).write_text(SETTINGS["far-ips"])
    with AuthzProcess(
        tmp_path, "--http-listen", "127.0.0.1:0", "--trusted-proxy-hops", hops
    ) as authz:
        client = Client(authz.http_port)
        try:
            # The client, then the operator's load balancer that Envoy saw (appended last).
            forwarded = {"x-forwarded-for": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
            answer = client.ask(request("/eth/far-ips", headers=forwarded))
            assert answer.status == status, answer.body
        finally:
            client.close()
