"""``authz-server serve`` as an operator runs it: options, environment, exit codes."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server.tokens import PrivateKey
from tests.authz_process import AuthzProcess, authz_server_binary, run_cli
from tests.support import write_key


def test_a_missing_keys_dir_exits_2_saying_so(tmp_path: Path) -> None:
    result = run_cli("serve", "--keys-dir", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert f"keys directory {tmp_path / 'nope'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_keys_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    result = run_cli("serve", "--keys-dir", str(file))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--leeway", "-1"], "must be a finite number >= 0"),
        (["--leeway", "soon"], "not a number of seconds"),
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
        (["--forward-jwt", "maybe"], "not a boolean"),
        (["--drain-delay", "-5"], "must be a finite number >= 0"),
        (["--drain-delay", "inf"], "must be a finite number >= 0"),
        (["--grace", "later"], "not a number of seconds"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli("serve", "--keys-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_dir_is_required(tmp_path: Path) -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert "--keys-dir" in result.stderr


def test_every_option_is_documented_with_its_environment_variable() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for env in (
        "AUTHZ_KEYS_DIR",
        "AUTHZ_LISTEN",
        "AUTHZ_AUDIENCE_SUFFIX",
        "AUTHZ_LEEWAY",
        "AUTHZ_FORWARD_JWT",
    ):
        assert env in result.stdout


def test_options_come_from_the_environment(tmp_path: Path, ec_key: PrivateKey) -> None:
    write_key(tmp_path / "p", "k", ec_key)
    process = AuthzProcess(
        tmp_path / "ignored-by-cli-flag",
        env={"AUTHZ_LEEWAY": "5", "AUTHZ_FORWARD_JWT": "true", "AUTHZ_DRAIN_DELAY": "0"},
    )
    process.command = [authz_server_binary(), "serve"]
    process.env.update({"AUTHZ_KEYS_DIR": str(tmp_path), "AUTHZ_LISTEN": "127.0.0.1:0"})
    with process:
        assert "1 project(s) with 1 key(s)" in process.log
        assert str(tmp_path) in process.log


def test_it_serves_health_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path) as process:
        with grpc.insecure_channel(process.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"),
                timeout=5,
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.signal(signal.SIGTERM)
        assert process.stop() == 0
        assert "stopped" in process.log


def test_the_health_command_answers_for_probes(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path) as process:
        result = run_cli("health", "--address", process.address)
        assert result.returncode == 0
        assert "SERVING" in result.stdout
        unknown = run_cli("health", "--address", process.address, "--service", "nope")
        assert unknown.returncode == 1
    down = run_cli("health", "--address", process.address, "--timeout", "0.5")
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr or "DEADLINE_EXCEEDED" in down.stderr


def test_sigint_stops_it_cleanly_too(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path) as process:
        process.signal(signal.SIGINT)
        assert process.stop() == 0, process.log
        assert "Traceback" not in process.log
