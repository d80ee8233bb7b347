"""The customer flow through the installed ``authz-server`` console script only, with the
running service and a real Envoy in front of a JSON-RPC node answering alongside."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.keystore import MAX_KEYS_PER_PROJECT
from authz_server.tokens import mint, public_pem
from authz_server.verifier import Reason, deny_body
from tests.authz_process import AuthzProcess, authz_server_binary
from tests.support import TRANSPORTS, post, wait_for

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
RELOAD_DEADLINE = 1.0  # docs/contract.md: a key change takes effect within 1 second
LOOPBACK_0 = Endpoint("127.0.0.1", 0)
EMPTY_CONFIGURATION = Reason.UNKNOWN_KEY_ID.message
CHAIN_ID = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``authz-server ARGS`` as a user types it, with no AUTHZ_ settings around."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    return subprocess.run(
        [authz_server_binary(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout.strip()


def customer(tmp_path: Path, keys_dir: Path, project: str, alg: str) -> tuple[str, str]:
    """keygen, keys add (with a second key, so the project stays protected when the
    first is removed), token: the key id and the token, made by the CLI only."""
    for name, key_alg in (("customer", alg), ("spare", "ES256")):
        ok(run("keygen", "--alg", key_alg, "--out", tmp_path / name))
    kid = ok(run(
        "keys", "add", "--keys-dir", keys_dir, "--project", project, "--name", "customer",
        tmp_path / "customer" / "public.pem",
    ))  # fmt: skip
    ok(run("keys", "add", "--keys-dir", keys_dir, "--project", project,
           tmp_path / "spare" / "public.pem"))  # fmt: skip
    token = ok(run("token", "--key", tmp_path / "customer" / "private.pem", "--kid", kid))
    return kid, token


@dataclass
class Stack:
    keys_dir: Path
    authz: AuthzProcess
    node: JsonRpcNode
    envoy: EnvoyProcess

    def post(self, project: str, token: str) -> tuple[int, object]:
        """A JSON-RPC call through Envoy: (status, decoded JSON body)."""
        reply = post(self.envoy.port, f"/eth/{project}", token=token, body=CHAIN_ID)
        return reply.status, reply.json()

    def allows(self, project: str, token: str) -> bool:
        return self.post(project, token)[0] == 200

    def denies(self, project: str, token: str, message: str) -> bool:
        status, body = self.post(project, token)
        return status == 403 and isinstance(body, dict) and body.get("message") == message


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """authz-server serve on a watched keys directory, a JSON-RPC node and Envoy in front,
    Envoy asking over gRPC or over HTTP ext_authz."""
    transport: str = request.param
    keys_dir = tmp_path_factory.mktemp("stack") / "keys"
    keys_dir.mkdir()
    with AuthzProcess(keys_dir, "--http-listen", "127.0.0.1:0") as authz, JsonRpcNode() as node:
        config = render(
            listen=LOOPBACK_0,
            authz=Endpoint("127.0.0.1", authz.port_for(transport)),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=LOOPBACK_0,
            transport=transport,
        )
        with EnvoyProcess(config) as envoy:
            yield Stack(keys_dir, authz, node, envoy)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_the_customer_flow_through_the_cli_then_the_service_and_envoy(
    stack: Stack, tmp_path: Path, alg: str
) -> None:
    """keygen -> keys add -> token -> check (allowed) -> keys remove -> check (empty
    configuration), all through the console script; the running service and Envoy agree
    at each step, and the removal revokes the token within a second."""
    project = f"flow-{alg.lower()}"
    kid, token = customer(tmp_path, stack.keys_dir, project, alg)

    checked = run("check", "--keys-dir", stack.keys_dir, "--project", project, token)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f'"alg": "{alg}", "typ": "JWT", "kid": "{kid}"' in checked.stdout
    assert "(expires in 9 min)" in checked.stdout
    assert f"answer    allowed (kid {kid})\n" in checked.stdout

    wait_for(lambda: stack.allows(project, token), RELOAD_DEADLINE)
    status, body = stack.post(project, token)
    assert (status, body) == (200, {"jsonrpc": "2.0", "id": 1, "result": "0x1"}), stack.envoy.log
    assert stack.node.requests[-1]["x-jwt-kid"] == kid

    assert ok(run("keys", "remove", "--keys-dir", stack.keys_dir, "--project", project, kid))
    wait_for(lambda: stack.denies(project, token, EMPTY_CONFIGURATION), RELOAD_DEADLINE)
    status, body = stack.post(project, token)
    assert status == 403
    assert body == {"code": -32013, "message": EMPTY_CONFIGURATION, "project": project}

    checked = run("check", "--keys-dir", stack.keys_dir, "--project", project, token)
    assert checked.returncode == 1
    assert f"answer    denied: {EMPTY_CONFIGURATION}\n" in checked.stdout
    assert f"body      403 {deny_body(Reason.UNKNOWN_KEY_ID, project)}\n" in checked.stdout


def test_concurrent_adds_stop_at_25_and_the_service_never_sees_a_partial_file(
    stack: Stack, tmp_path: Path
) -> None:
    project = "racing"
    already, racers = 10, 20
    staged = tmp_path / project
    staged.mkdir()
    for index in range(already):
        (staged / f"existing-{index}.pem").write_bytes(
            public_pem(ec.generate_private_key(ec.SECP256R1()))
        )
    staged.rename(stack.keys_dir / project)  # the project appears whole, as keys add writes

    private_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(racers)]
    key_files = []
    for index, key in enumerate(private_keys):
        key_files.append(tmp_path / f"racer-{index}.pem")
        key_files[-1].write_bytes(public_pem(key))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}

    def add(index: int, path: Path) -> subprocess.Popen[str]:
        command = [authz_server_binary(), "keys", "add", "--keys-dir", str(stack.keys_dir)]
        command += ["--project", project, "--name", f"racer {index}", str(path)]
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    processes = [add(index, path) for index, path in enumerate(key_files)]
    outcomes = [(p.communicate(timeout=60), p.returncode) for p in processes]

    added = {index: out.strip() for index, ((out, _), code) in enumerate(outcomes) if code == 0}
    refused = [err for (_, err), code in outcomes if code != 0]
    assert len(added) == MAX_KEYS_PER_PROJECT - already
    assert len(refused) == racers - len(added)
    for err in refused:
        assert err == (
            f"authz-server: error: project {project} already has 25 keys, the most a project "
            "may have (25): remove one first (authz-server keys remove --keys-dir "
            f"{stack.keys_dir} --project {project} ID)\n"
        )

    tokens = [mint(private_keys[index], kid) for index, kid in added.items()]
    wait_for(lambda: all(stack.allows(project, t) for t in tokens), RELOAD_DEADLINE)
    assert f"project {project}: 25 active key(s)" in stack.authz.log
    assert not [line for line in stack.authz.lines if "refused" in line and project in line]
    names = os.listdir(stack.keys_dir / project)
    assert len([n for n in names if n.endswith(".pem") and not n.startswith(".")]) == 25
    assert not [n for n in names if n.endswith(".tmp")]
