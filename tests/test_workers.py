"""``--workers N``: several serving processes on one port, supervised."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import grpc
import pytest
from authz_process import AuthzProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import wait_for

from authz_server._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz_server.tokens import PrivateKey, public_pem

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def _workers(process: AuthzProcess) -> set[int]:
    return {int(m) for m in re.findall(r"\[(\d+)\] authz_server: serving on", process.log)}


def _check_on_a_new_connection(address: str) -> None:
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(path="/eth/locked")
            )
        )
    )
    # A distinct channel option forces a new connection for every call.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(
            CHECK,
            request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
            response_deserializer=external_auth_pb2.CheckResponse.FromString,
        )
        response = call(request, timeout=5)
        assert response.denied_response.status.code == 403


def test_workers_share_one_port_and_connections_spread_over_them(
    tmp_path: Path, ec_key: PrivateKey
) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "k.pem").write_bytes(public_pem(ec_key))
    with AuthzProcess(tmp_path, "--workers", "2") as process:
        wait_for(lambda: len(_workers(process)) == 2, timeout=20)
        for _ in range(40):
            _check_on_a_new_connection(process.address)
        wait_for(lambda: process.log.count("reason=missing_token") == 40, timeout=5)
        served_by = set(re.findall(r"\[(\d+)\] authz_server.service: denied", process.log))
        assert len(served_by) == 2, "the kernel sent 40 connections to one worker"
        process.signal(signal.SIGTERM)
        assert process.stop() == 0
    assert process.log.count("authz_server: stopped") == 2


def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path, "--workers", "2") as process:
        wait_for(lambda: len(_workers(process)) == 2, timeout=20)
        victim = min(_workers(process))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_workers(process)) == 3, timeout=20)
        assert f"(pid {victim}) exited with status -9" in process.log
        with grpc.insecure_channel(process.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert process.stop() == 0


def test_a_single_server_refuses_a_port_already_taken(tmp_path: Path) -> None:
    with AuthzProcess(tmp_path) as first:
        second = AuthzProcess(tmp_path)
        second.command[second.command.index("127.0.0.1:0")] = first.address
        with pytest.raises(RuntimeError, match="cannot listen"):
            second.start()
