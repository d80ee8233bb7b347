"""``--workers N``: N supervised serving processes, one port each, balanced by Envoy."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.tokens import PrivateKey
from tests.authz_process import AuthzProcess, authz_server_binary
from tests.support import TRANSPORTS, wait_for, write_key

_SERVING = re.compile(r"\[(\d+)\] authz_server: serving on 127\.0\.0\.1:(\d+):")
_SERVING_HTTP = re.compile(r"\[(\d+)\] authz_server: serving on .* HTTP ext_authz on \S+:(\d+)")


def _workers(process: AuthzProcess, transport: str = "grpc") -> dict[int, int]:
    """pid -> port of every worker that announced itself (its HTTP ext_authz port for
    ``transport`` "http")."""
    serving = _SERVING if transport == "grpc" else _SERVING_HTTP
    return {int(pid): int(port) for pid, port in serving.findall(process.log)}


def test_each_worker_serves_on_its_own_port_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path, "--workers", "2") as process:
        wait_for(lambda: len(_workers(process)) == 2, timeout=20)
        ports = set(_workers(process).values())
        assert len(ports) == 2
        assert all(_healthy(port) for port in ports)
        process.signal(signal.SIGTERM)
        assert process.stop() == 0
    assert process.log.count("authz_server: stopped") == 2


def _status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def _healthy(port: int) -> bool:
    return _status(port) == health_pb2.HealthCheckResponse.SERVING


def test_every_worker_drains_and_a_second_signal_reaches_them_all(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path, "--workers", "2", "--drain-delay", "120") as process:
        wait_for(lambda: len(_workers(process)) == 2, timeout=20)
        ports = set(_workers(process).values())
        process.signal(signal.SIGTERM)
        wait_for(lambda: process.log.count("still answering for 120s") == 2, timeout=10)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert all(_status(port) == not_serving for port in ports)  # draining, still there
        process.signal(signal.SIGTERM)  # the supervisor passes it on: no 120 s wait
        assert process.process is not None
        assert process.process.wait(timeout=30) == 0, process.log
    assert "passing the signal on" in process.log
    assert process.log.count("authz_server: stopping now") == 2
    assert process.log.count("authz_server: stopped") == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_envoy_balances_calls_over_the_workers(
    tmp_path: Path, ec_key: PrivateKey, transport: str
) -> None:
    write_key(tmp_path / "locked", "k", ec_key)
    with (
        JsonRpcNode() as node,
        AuthzProcess(tmp_path, "--workers", "2", "--http-listen", "127.0.0.1:0") as process,
    ):
        wait_for(lambda: len(_workers(process, transport)) == 2, timeout=20)
        ports = _workers(process, transport).values()
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=[Endpoint("127.0.0.1", port) for port in ports],
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
            transport=transport,
        )
        with EnvoyProcess(config) as envoy:
            for _ in range(40):
                request = urllib.request.Request(envoy.url + "/eth/locked", data=b"{}")
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=5)
                assert refused.value.code == 403
                refused.value.close()
        wait_for(lambda: process.log.count("reason=missing_token") == 40, timeout=5)
    served = collections.Counter(re.findall(r"\[(\d+)\] authz_server.service: denied", process.log))
    assert len(served) == 2, f"one worker took every call: {served}"
    assert min(served.values()) >= 10, served


def test_a_dead_worker_is_replaced_on_its_port(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path, "--workers", "2", "--listen", "127.0.0.1:0") as process:
        wait_for(lambda: len(_workers(process)) == 2, timeout=20)
        victim = min(_workers(process))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_workers(process)) == 3, timeout=20)
        assert f"(pid {victim}) exited with status -9" in process.log
        assert process.stop() == 0


def test_worker_ports_past_65535_are_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            authz_server_binary(),
            "serve",
            "--keys-dir",
            str(tmp_path),
            "--listen",
            "127.0.0.1:65535",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "run past port 65535" in result.stderr


def test_a_single_server_refuses_a_port_already_taken(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path) as first:
        second = AuthzProcess(tmp_path)
        second.command[second.command.index("127.0.0.1:0")] = first.address
        with pytest.raises(RuntimeError, match="cannot listen"):
            second.start()
