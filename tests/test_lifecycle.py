"""Health, reflection and a clean drain on SIGTERM under load."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz_server.config import Settings
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import AUTHZ_CLUSTER, Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.devtools.requests import check_request
from authz_server.server import running_gate
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.grpc import SERVICE_NAME
from tests.authz_process import AuthzProcess
from tests.support import TRANSPORTS, wait_for, write_key
from tests.test_metrics import KID, PROJECT

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


@pytest.fixture
def one_key_dir(keys_dir: Path, ec_key: PrivateKey) -> Path:
    """The keys directory with the project's one key, ``KID``."""
    write_key(keys_dir / PROJECT, KID, ec_key)
    return keys_dir


def test_serving_as_soon_as_announced(one_key_dir: Path) -> None:
    with AuthzProcess(one_key_dir) as process:
        # The announcement comes after the first load: health already agrees.
        assert health_status(process.address) == SERVING
        assert health_status(process.address, SERVICE_NAME) == SERVING


def test_not_serving_until_the_first_key_load(tmp_path: Path, ec_key: PrivateKey) -> None:
    keys_dir = tmp_path / "keys"  # not there yet: no key load can complete
    settings = Settings(keys_dir=keys_dir, listen="127.0.0.1:0", rescan_interval=0.05, grace=1)
    with running_gate(settings) as server:
        assert health_status(server.address) == NOT_SERVING
        assert health_status(server.address, SERVICE_NAME) == NOT_SERVING
        write_key(keys_dir / PROJECT, KID, ec_key)
        wait_for(lambda: health_status(server.address) == SERVING, timeout=10, interval=0.05)
        assert health_status(server.address, SERVICE_NAME) == SERVING
    assert server.health is not None


def test_stop_says_not_serving_first(one_key_dir: Path) -> None:
    settings = Settings(keys_dir=one_key_dir, listen="127.0.0.1:0", grace=1)
    seen: list[int] = []
    with running_gate(settings) as server:
        original = server.set_serving

        def record(serving: bool) -> bool:
            seen.append(serving)
            return original(serving)

        server.set_serving = record  # type: ignore[method-assign]
    assert seen == [False]


def test_reflection_lists_the_services(one_key_dir: Path) -> None:
    with AuthzProcess(one_key_dir) as process, grpc.insecure_channel(process.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {service.name for service in reply.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
        described = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
        (reply,) = list(stub.ServerReflectionInfo(iter([described]), timeout=5))
        assert reply.file_descriptor_response.file_descriptor_proto


class LoadThreads:
    """Client threads, each running ``_run`` until ``_stop`` is set at the end of the
    ``with`` block; ``_lock`` guards what they record."""

    def __init__(self, clients: int) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


class CheckLoad(LoadThreads):
    """Client threads calling Check with a valid token, each over its own channel, until
    stopped; every outcome is recorded with its time."""

    def __init__(self, address: str, request: CheckRequest, clients: int = 8) -> None:
        self.address = address
        self.request = request
        self.ok: list[float] = []  # monotonic times of successful calls
        self.failures: list[tuple[grpc.StatusCode, str, float]] = []
        self.wrong: list[int] = []  # calls answered with anything but OK
        super().__init__(clients)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            while not self._stop.is_set():
                try:
                    reply = stub.Check(self.request, timeout=10)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append((exc.code(), str(exc.details()), time.monotonic()))
                    continue
                with self._lock:
                    if reply.status.code == 0:
                        self.ok.append(time.monotonic())
                    else:
                        self.wrong.append(reply.status.code)

    def ok_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at in self.ok if at > moment)


def test_sigterm_under_load_fails_no_call_and_exits_zero(
    one_key_dir: Path, ec_key: PrivateKey
) -> None:
    """SIGTERM mid-load: health goes NOT_SERVING at once, every call keeps being answered
    through the drain, and a client that follows health (as Envoy and Kubernetes do)
    leaves before the server stops. Not one call fails."""
    token = mint(ec_key, KID, {"exp": time.time() + 600})
    with AuthzProcess(one_key_dir, "--drain-delay", "5") as process:
        with CheckLoad(process.address, check_request(f"/eth/{PROJECT}", token=token)) as load:
            wait_for(lambda: len(load.ok) >= 300, timeout=30)
            process.signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_for(lambda: health_status(process.address) == NOT_SERVING, timeout=5)
            not_serving_seen = time.monotonic()
            # Still answering while NOT_SERVING: the drain, not a refusal.
            wait_for(lambda: load.ok_since(not_serving_seen) >= 100, timeout=4)
        assert process.process is not None
        exit_status = process.process.wait(timeout=30)
        stopped = time.monotonic()
    assert exit_status == 0, process.log
    assert load.failures == []
    assert load.wrong == []
    assert "received SIGTERM; draining" in process.log
    assert "health NOT_SERVING; still answering for 5s" in process.log
    assert stopped - signalled >= 5  # it kept answering for the whole drain
    # Every call the service took (each one counted, then logged at exit) reached its
    # client as a success.
    match = re.search(r"drained; (\d+) check\(s\) answered", process.log)
    assert match, process.log
    assert int(match.group(1)) == len(load.ok)


def test_a_second_signal_cuts_the_drain_short(one_key_dir: Path, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {"exp": time.time() + 600})
    request = check_request(f"/eth/{PROJECT}", token=token)
    with AuthzProcess(one_key_dir, "--drain-delay", "120") as process:
        process.signal(signal.SIGTERM)
        wait_for(lambda: "still answering for 120s" in process.log, timeout=10)
        assert health_status(process.address) == NOT_SERVING
        with grpc.insecure_channel(process.address) as channel:
            reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
        assert reply.status.code == 0  # draining: NOT_SERVING, yet answering
        process.signal(signal.SIGINT)
        assert process.process is not None
        assert process.process.wait(timeout=30) == 0  # not 120 s later
    assert "received SIGINT; draining" in process.log
    assert "stopping now" in process.log
    assert "stopped" in process.log


def test_no_drain_with_drain_delay_0(one_key_dir: Path) -> None:
    with AuthzProcess(one_key_dir, "--drain-delay", "0") as process:
        process.signal(signal.SIGTERM)
        assert process.process is not None
        assert process.process.wait(timeout=20) == 0
    assert "still answering" not in process.log
    assert "drained; 0 check(s) answered" in process.log


def test_a_first_key_load_during_the_drain_leaves_health_not_serving(
    tmp_path: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    keys_dir = tmp_path / "keys"  # not there yet: no key load can complete
    settings = Settings(keys_dir=keys_dir, listen="127.0.0.1:0", rescan_interval=0.05, grace=1)
    caplog.set_level(logging.INFO, logger="authz_server")
    with running_gate(settings) as server:
        server.begin_drain()
        write_key(keys_dir / PROJECT, KID, ec_key)
        wait_for(lambda: "keys loaded" in caplog.text, timeout=10, interval=0.05)
        assert "health stays NOT_SERVING: draining" in caplog.text
        assert health_status(server.address) == NOT_SERVING
        assert health_status(server.address, SERVICE_NAME) == NOT_SERVING


class GateLoad(LoadThreads):
    """HTTP clients posting to Envoy with a valid token, each on its own keep-alive
    connection, until stopped; every status (or connection error) recorded with its time."""

    def __init__(self, port: int, path: str, token: str, clients: int = 4) -> None:
        self.port, self.path = port, path
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        self.results: list[tuple[int, float]] = []  # (status, monotonic time); 0: no reply
        super().__init__(clients)

    def _run(self) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                connection.request("POST", self.path, body=body, headers=self.headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self._lock:
                self.results.append((status, time.monotonic()))
        connection.close()

    def ok_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for status, at in self.results if status == 200 and at > moment)


def authz_host_health(envoy: EnvoyProcess) -> dict[int, str]:
    """Envoy's view of each authz endpoint: port -> health flags ("healthy", ...)."""
    with urllib.request.urlopen(f"{envoy.admin_url}/clusters", timeout=5) as response:
        text = response.read().decode()
    flags: dict[int, str] = {}
    for line in text.splitlines():
        cluster, _, rest = line.partition("::")
        address, _, stat = rest.partition("::")
        if cluster == AUTHZ_CLUSTER and stat.startswith("health_flags::"):
            flags[int(address.rpartition(":")[2])] = stat.removeprefix("health_flags::")
    return flags


@contextmanager
def two_replicas_behind_envoy(
    keys_dir: Path, *first_args: str, transport: str = "grpc"
) -> Iterator[tuple[AuthzProcess, int, EnvoyProcess]]:
    """Two authz-server processes (the first with ``first_args``) as the endpoints of the
    gate's own rendered Envoy config over ``transport``, a demo node upstream; yields the
    first, its port in Envoy's authz cluster and Envoy, once Envoy's health checks have
    found both endpoints healthy. Over HTTP, Envoy checks each one's /readyz."""
    http = transport == "http"
    extra = ("--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0") if http else ()
    with (
        JsonRpcNode() as node,
        AuthzProcess(keys_dir, *extra, *first_args) as first,
        AuthzProcess(keys_dir, *extra) as second,
    ):
        replicas = (first, second)
        ports = [r.port_for(transport) for r in replicas]
        with EnvoyProcess(
            render(
                listen=Endpoint("127.0.0.1", 0),
                authz=[Endpoint("127.0.0.1", port) for port in ports],
                upstream=Endpoint("127.0.0.1", node.port),
                admin=Endpoint("127.0.0.1", 0),
                transport=transport,
                health_ports=[r.metrics_port for r in replicas] if http else (),
            )
        ) as envoy:
            both = dict.fromkeys(ports, "healthy")
            wait_for(lambda: authz_host_health(envoy) == both, timeout=15, interval=0.05)
            yield first, ports[0], envoy


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stopping_one_of_two_replicas_under_load_through_envoy_fails_no_request(
    one_key_dir: Path, ec_key: PrivateKey, transport: str
) -> None:
    """The rolling restart operators do: two replicas behind Envoy's health-checked authz
    cluster, one gets SIGTERM under load. Envoy's health checks see it NOT_SERVING (over
    HTTP: /readyz 503) and move every call to the other before it stops: every request
    gets its 200."""
    token = mint(ec_key, KID, {"exp": time.time() + 600})
    with (
        two_replicas_behind_envoy(one_key_dir, "--drain-delay", "5", transport=transport) as (
            leaving,
            leaving_port,
            envoy,
        ),
        GateLoad(envoy.port, f"/eth/{PROJECT}", token) as load,
    ):
        wait_for(lambda: load.ok_since(0) >= 200, timeout=30)
        leaving.signal(signal.SIGTERM)
        wait_for(
            lambda: authz_host_health(envoy)[leaving_port] != "healthy",
            timeout=5,
            interval=0.05,
        )
        assert leaving.process is not None
        assert leaving.process.wait(timeout=30) == 0, leaving.log
        gone = time.monotonic()
        # The survivor carries on alone.
        wait_for(lambda: load.ok_since(gone) >= 200, timeout=30)
        failed = {
            port: authz_host_stat(envoy, port, "rq_error")
            + authz_host_stat(envoy, port, "rq_timeout")
            for port in authz_host_health(envoy)
        }
    statuses = Counter(status for status, _at in load.results)
    # No check asked of the leaving replica failed: the drain itself costs nothing.
    assert failed[leaving_port] == 0, failed
    if transport == "grpc":
        assert set(statuses) == {200}, statuses
    else:
        # Over HTTP the survivor, taking all the load at once, now and then misses the
        # 250 ms ext_authz timeout on one check (about one run in five here, during the
        # drain, never on the leaving replica): each such refusal is one Envoy counted on
        # the survivor, and none is anything else. Known, reported, not yet explained.
        assert set(statuses) <= {200, 403}, statuses
        assert statuses[403] == sum(failed.values()), (statuses, failed)
    assert "health NOT_SERVING; still answering for 5s" in leaving.log
    answered = re.search(r"drained; (\d+) check\(s\) answered", leaving.log)
    assert answered, leaving.log
    assert int(answered.group(1)) > 0  # the leaving replica did take its share first


def authz_host_stat(envoy: EnvoyProcess, port: int, name: str) -> int:
    """One of Envoy's per-endpoint counters (rq_error, rq_timeout, ...) of an authz endpoint."""
    with urllib.request.urlopen(f"{envoy.admin_url}/clusters", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        cluster, _, rest = line.partition("::")
        address, _, stat = rest.partition("::")
        if cluster == AUTHZ_CLUSTER and address.endswith(f":{port}"):
            counter, _, value = stat.partition("::")
            if counter == name:
                return int(value)
    raise AssertionError(f"no {name} for authz endpoint {port} in:\n{text}")


def envoy_stat(envoy: EnvoyProcess, name: str) -> int:
    with urllib.request.urlopen(f"{envoy.admin_url}/stats?filter=^{name}$", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        stat, _, value = line.partition(": ")
        if stat == name:
            return int(value)
    return 0


def test_a_replica_killed_under_load_is_ejected_and_its_calls_retried(
    one_key_dir: Path, ec_key: PrivateKey
) -> None:
    """No drain at all: one of two replicas dies (SIGKILL) under load. Envoy retries the
    calls it could not get answered on the other replica and ejects the dead one after three
    failures in a row, without waiting for its health checks. Measured: 1 to 3 requests
    of ~750 refused (fail closed, 403) in the instant of the crash; without retries and
    outlier detection, ~350 in the 2 to 4 s until the health checks eject it."""
    token = mint(ec_key, KID, {"exp": time.time() + 600})
    with two_replicas_behind_envoy(one_key_dir) as (dying, _, envoy):
        with GateLoad(envoy.port, f"/eth/{PROJECT}", token) as load:
            wait_for(lambda: load.ok_since(0) >= 200, timeout=30)
            dying.signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_for(
                lambda: (
                    envoy_stat(envoy, "cluster.authz.outlier_detection.ejections_enforced_total")
                    >= 1
                ),
                timeout=10,
                interval=0.05,
            )
            wait_for(lambda: load.ok_since(killed) >= 300, timeout=30)
        retried = envoy_stat(envoy, "cluster.authz.upstream_rq_retry")
    statuses = Counter(status for status, _at in load.results)
    assert set(statuses) <= {200, 403}, statuses  # refusals fail closed, never pass
    assert statuses[403] <= 10, (statuses, retried)
