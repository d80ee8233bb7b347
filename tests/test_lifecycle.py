"""Health, reflection and a clean drain on SIGTERM under load."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from authz_process import AuthzProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import wait_for
from test_metrics import KID, PROJECT, check_request

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.app import Settings, running_gate
from authz_server.service import SERVICE_NAME
from authz_server.tokens import PrivateKey, mint, public_pem

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


@pytest.fixture
def keys_dir(tmp_path: Path, ec_key: PrivateKey) -> Path:
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / f"{KID}.pem").write_bytes(public_pem(ec_key))
    return tmp_path


def test_serving_as_soon_as_announced(keys_dir: Path) -> None:
    with AuthzProcess(keys_dir) as process:
        # The announcement comes after the first load: health already agrees.
        assert health_status(process.address) == SERVING
        assert health_status(process.address, SERVICE_NAME) == SERVING


def test_not_serving_until_the_first_key_load(tmp_path: Path, ec_key: PrivateKey) -> None:
    keys_dir = tmp_path / "keys"  # not there yet: no key load can complete
    settings = Settings(keys_dir=keys_dir, listen="127.0.0.1:0", rescan_interval=0.05, grace=1)
    with running_gate(settings) as server:
        assert health_status(server.address) == NOT_SERVING
        assert health_status(server.address, SERVICE_NAME) == NOT_SERVING
        (keys_dir / PROJECT).mkdir(parents=True)
        (keys_dir / PROJECT / f"{KID}.pem").write_bytes(public_pem(ec_key))
        wait_for(lambda: health_status(server.address) == SERVING, timeout=10, interval=0.05)
        assert health_status(server.address, SERVICE_NAME) == SERVING
    assert server.health is not None


def test_stop_says_not_serving_first(keys_dir: Path) -> None:
    settings = Settings(keys_dir=keys_dir, listen="127.0.0.1:0", grace=1)
    seen: list[int] = []
    with running_gate(settings) as server:
        original = server.set_serving

        def record(serving: bool) -> None:
            seen.append(serving)
            original(serving)

        server.set_serving = record  # type: ignore[method-assign]
    assert seen == [False]


def test_reflection_lists_the_services(keys_dir: Path) -> None:
    with AuthzProcess(keys_dir) as process, grpc.insecure_channel(process.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {service.name for service in reply.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
        described = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
        (reply,) = list(stub.ServerReflectionInfo(iter([described]), timeout=5))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_sigterm_under_load_drains_and_exits_zero(keys_dir: Path, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {"exp": time.time() + 600})
    request = check_request(PROJECT, token)
    stop_clients = threading.Event()
    lock = threading.Lock()
    ok: list[float] = []  # monotonic times of successful calls
    failures: list[tuple[grpc.StatusCode, str, float]] = []
    wrong: list[int] = []

    with AuthzProcess(keys_dir) as process:
        address = process.address

        def client() -> None:
            with grpc.insecure_channel(address) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                while not stop_clients.is_set():
                    try:
                        reply = stub.Check(request, timeout=10)
                    except grpc.RpcError as exc:
                        with lock:
                            failures.append((exc.code(), str(exc.details()), time.monotonic()))
                        time.sleep(0.01)
                        continue
                    with lock:
                        if reply.status.code == 0:
                            ok.append(time.monotonic())
                        else:
                            wrong.append(reply.status.code)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(ok) >= 300, timeout=30)
        assert not failures
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        assert process.process is not None
        exit_status = process.process.wait(timeout=20)
        time.sleep(0.3)  # the clients meet the closed port too
        stop_clients.set()
        for thread in threads:
            thread.join(timeout=15)
    assert exit_status == 0, process.log
    assert "received SIGTERM; draining" in process.log
    assert not wrong  # every answered call got the right answer
    assert failures  # the clients kept calling after the shutdown began
    assert all(at >= signalled for _code, _details, at in failures)
    # Every call the service took (each one counted, then logged at exit) reached its
    # client as a success: none that was accepted failed in the drain.
    match = re.search(r"drained; (\d+) check\(s\) answered", process.log)
    assert match, process.log
    assert int(match.group(1)) == len(ok)
    # The rest were refused: UNAVAILABLE (GOAWAY, then the closed port), or CANCELLED for
    # the few calls gRPC core had received but not yet handed to the server when the
    # shutdown began (grpc-python kills those pending calls; they never ran).
    assert {code for code, _details, _at in failures} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    }, failures
    cancelled = [at for code, _details, at in failures if code is grpc.StatusCode.CANCELLED]
    assert len(cancelled) <= 8  # at most one pending call per client
