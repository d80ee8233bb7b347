"""The HTTP ext_authz server, called directly over real sockets on port 0: the contract's
answers as Envoy's ``http_service`` reads them, and what no client may do to the server."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml

from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.gate import Gate
from authz_server.keystore import KeyStore, Snapshot
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.http import MAX_HEAD_BYTES, HttpGateServer
from authz_server.verifier import TABLE_REASONS, Policy, Reason
from tests.authz_process import AuthzProcess
from tests.support import post as post_through
from tests.support import row_tokens, wait_for, write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
SUFFIX = "example.com"
ALIASES = {"x_jwt_kid", "x-jwt_kid", "x_jwt-kid", "x_authz_project", "x-authz_project"} | {
    "x_authz-project"
}
# Short, so that the slow-client tests take a second, not the production 10 s.
REQUEST_TIMEOUT = 0.5


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> object:
        return json.loads(self.body)


class _Reader:
    """Responses parsed off a socket with httptools' response parser."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.current = Response(0)

    def on_message_begin(self) -> None:
        self.current = Response(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)


def request(
    path: str,
    *,
    token: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    version: str = "1.1",
) -> bytes:
    """A request as Envoy's http_service sends it: the original method and path, no body."""
    lines = [f"{method} {path} HTTP/{version}", "host: authz", "content-length: 0"]
    if token is not None:
        lines.append(f"authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, count: int = 1) -> list[Response]:
        reader = _Reader()
        while len(reader.done) < count:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"closed after {len(reader.done)} of {count} responses")
            reader.parser.feed_data(data)
        return reader.done

    def ask(self, data: bytes) -> Response:
        self.send(data)
        return self.read()[0]

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (whatever it sent before)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def store(keys_dir: Path, ec_key: PrivateKey) -> KeyStore:
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    return store


def _server(store: KeyStore, **options: bool) -> HttpGateServer:
    gate = Gate(lambda: store.snapshot, Policy(audience_suffix=SUFFIX))
    server = HttpGateServer(
        gate, "127.0.0.1:0", request_timeout=REQUEST_TIMEOUT, idle_timeout=30, **options
    )
    server.start()
    return server


@pytest.fixture
def server(store: KeyStore) -> Iterator[HttpGateServer]:
    server = _server(store)
    yield server
    server.stop(0)


@pytest.fixture
def client(server: HttpGateServer) -> Iterator[Client]:
    client = Client(server.port)
    yield client
    client.close()


def _assert_denied(response: Response, reason: Reason, project: str = PROJECT) -> None:
    assert response.status == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": -32013, "message": reason.message, "project": project}
    assert "x-jwt-kid" not in response.headers
    assert "x-authz-project" not in response.headers


@pytest.mark.parametrize("reason", list(TABLE_REASONS), ids=lambda r: r.code)
def test_each_row_of_the_table_is_a_403_with_the_contracts_json_body(
    client: Client, ec_key: PrivateKey, other_ec_key: PrivateKey, reason: Reason
) -> None:
    if reason is Reason.INVALID_PROJECT_ID:
        _assert_denied(client.ask(request(f"/eth/{PROJECT};x")), reason, f"{PROJECT};x")
    else:
        token = row_tokens(ec_key, other_ec_key, KID)[reason]
        _assert_denied(client.ask(request(f"/eth/{PROJECT}", token=token)), reason)


def test_a_valid_token_is_allowed_with_the_kid_and_project_and_authorization_removed(
    client: Client, ec_key: PrivateKey
) -> None:
    response = client.ask(request(f"/eth/{PROJECT}?x=1", token=mint(ec_key, KID, {})))
    assert response.status == 200
    assert response.headers["x-jwt-kid"] == KID
    assert response.headers["x-authz-project"] == PROJECT
    removed = set(response.headers["x-envoy-auth-headers-to-remove"].split(", "))
    assert removed == ALIASES | {"authorization"}
    assert response.body == b""


def test_forward_jwt_keeps_authorization(store: KeyStore, ec_key: PrivateKey) -> None:
    server = _server(store, forward_jwt=True)
    client = Client(server.port)
    try:
        response = client.ask(request(f"/eth/{PROJECT}", token=mint(ec_key, KID, {})))
        assert response.status == 200
        assert "authorization" not in response.headers["x-envoy-auth-headers-to-remove"]
    finally:
        client.close()
        server.stop(0)


def test_a_project_without_keys_passes_with_its_project_and_no_client_kid(client: Client) -> None:
    response = client.ask(request("/eth/open-project", token="not-a-jwt"))
    assert response.status == 200
    assert response.headers["x-authz-project"] == "open-project"
    assert "x-jwt-kid" not in response.headers
    removed = set(response.headers["x-envoy-auth-headers-to-remove"].split(", "))
    assert removed == ALIASES | {"x-jwt-kid"}


def test_the_authorization_header_is_found_in_any_case(client: Client, ec_key: PrivateKey) -> None:
    raw = request(f"/eth/{PROJECT}", headers={"AUTHORIZATION": f"bearer  {mint(ec_key, KID, {})}"})
    assert client.ask(raw).status == 200


def test_an_internal_error_denies(keys_dir: Path) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("storage exploded")

    server = HttpGateServer(Gate(broken, Policy()), "127.0.0.1:0")
    server.start()
    client = Client(server.port)
    try:
        _assert_denied(client.ask(request(f"/eth/{PROJECT}")), Reason.INTERNAL_ERROR)
    finally:
        client.close()
        server.stop(0)


def test_a_head_request_gets_the_head_of_its_answer_and_no_body(client: Client) -> None:
    client.send(request(f"/eth/{PROJECT}", method="HEAD"))
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += client.sock.recv(1)
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"content-length: 0" not in head
    # Nothing of a body was left on the wire to be read as the next answer.
    assert client.ask(request("/eth/open-project")).status == 200


def test_one_connection_answers_many_requests(client: Client, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {})
    for _ in range(50):
        assert client.ask(request(f"/eth/{PROJECT}", token=token)).status == 200
        assert client.ask(request(f"/eth/{PROJECT}")).status == 403


def test_pipelined_requests_are_answered_in_order(client: Client, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {})
    paths = [f"/eth/{PROJECT}", "/eth/open-a", f"/eth/{PROJECT}", "/eth/bad;x", "/eth/open-b"]
    tokens = [None, None, token, None, None]
    client.send(b"".join(request(p, token=t) for p, t in zip(paths, tokens, strict=True)))
    answers = client.read(len(paths))
    assert [a.status for a in answers] == [403, 200, 200, 403, 200]
    assert answers[1].headers["x-authz-project"] == "open-a"
    assert answers[2].headers["x-authz-project"] == PROJECT
    assert answers[4].headers["x-authz-project"] == "open-b"


def test_requests_split_byte_by_byte_are_answered(client: Client) -> None:
    for byte in request("/eth/open-project"):
        client.send(bytes([byte]))
    assert client.read()[0].status == 200


def test_a_client_that_asks_to_close_is_answered_then_closed(client: Client) -> None:
    response = client.ask(request("/eth/open-project", headers={"connection": "close"}))
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert client.closed_by_server()


def test_http_1_0_without_keep_alive_is_closed_after_its_answer(client: Client) -> None:
    assert client.ask(request("/eth/open-project", version="1.0")).status == 200
    assert client.closed_by_server()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # TLS hello
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /eth/x HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST /eth/x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"POST /eth/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["tls", "version", "header-line", "two-lengths", "bad-chunk"],
)
def test_a_malformed_request_gets_400_and_its_connection_closed(
    server: HttpGateServer, client: Client, garbage: bytes
) -> None:
    response = client.ask(garbage)
    assert response.status == 400
    assert client.closed_by_server()
    other = Client(server.port)
    try:
        assert other.ask(request("/eth/open-project")).status == 200
    finally:
        other.close()


def test_an_upgrade_request_is_decided_as_any_and_its_connection_closed(client: Client) -> None:
    raw = request(f"/eth/{PROJECT}", headers={"connection": "upgrade", "upgrade": "websocket"})
    _assert_denied(client.ask(raw + b"\x81\x05hello"), Reason.MISSING_TOKEN)
    assert client.closed_by_server()


def test_an_answer_already_due_is_sent_before_a_malformed_request_closes(client: Client) -> None:
    client.send(request("/eth/open-project") + b"NOT HTTP AT ALL\r\n\r\n")
    first, second = client.read(2)
    assert (first.status, second.status) == (200, 400)
    assert client.closed_by_server()


@pytest.mark.parametrize("pieces", [1, 8], ids=["at-once", "in-pieces"])
def test_a_head_over_the_cap_gets_431_and_its_connection_closed(
    client: Client, pieces: int
) -> None:
    raw = request("/eth/open-project", headers={"x-big": "a" * MAX_HEAD_BYTES})
    step = len(raw) // pieces + 1
    try:
        for start in range(0, len(raw), step):
            client.send(raw[start : start + step])
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed once past the cap, before the rest was sent
    assert client.read()[0].status == 431
    assert client.closed_by_server()


def test_a_head_just_under_the_cap_is_answered(client: Client) -> None:
    raw = request("/eth/open-project", headers={"x-big": "a" * (MAX_HEAD_BYTES - 200)})
    assert client.ask(raw).status == 200


def test_a_client_that_never_finishes_its_head_is_closed_after_the_timeout(client: Client) -> None:
    client.send(b"POST /eth/open-project HTTP/1.1\r\nhost: authz\r\nx-slow: ")
    start = time.monotonic()
    assert client.closed_by_server(timeout=REQUEST_TIMEOUT * 6)
    assert time.monotonic() - start < REQUEST_TIMEOUT * 3


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(client: Client) -> None:
    assert client.closed_by_server(timeout=REQUEST_TIMEOUT * 6)


def test_a_slow_trickle_does_not_extend_the_deadline(client: Client) -> None:
    client.send(b"POST /eth/open-project HTTP/1.1\r\n")
    deadline = time.monotonic() + REQUEST_TIMEOUT * 6
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            client.send(b"x-a: b\r\n")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        closed = client.closed_by_server(timeout=REQUEST_TIMEOUT / 5)
    assert closed


def test_256_half_open_connections_do_not_stop_other_requests(
    store: KeyStore, ec_key: PrivateKey
) -> None:
    gate = Gate(lambda: store.snapshot, Policy())
    server = HttpGateServer(gate, "127.0.0.1:0", request_timeout=3.0)
    server.start()
    stalled = [Client(server.port) for _ in range(256)]
    try:
        for index, connection in enumerate(stalled):
            connection.send(f"POST /eth/p{index} HTTP/1.1\r\nhost: a\r\n".encode())
        token = mint(ec_key, KID, {})
        worker = Client(server.port)
        try:
            for _ in range(50):
                assert worker.ask(request(f"/eth/{PROJECT}", token=token)).status == 200
        finally:
            worker.close()
        assert not stalled[-1].closed_by_server(timeout=0.05)  # all still held meanwhile
        # ...and once their time is up, they are all closed.
        assert all(connection.closed_by_server(timeout=8) for connection in stalled)
    finally:
        for connection in stalled:
            connection.close()
        server.stop(0)


def test_denials_are_logged_with_the_request_id_and_never_the_token(
    client: Client, other_ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    token = mint(other_ec_key, KID, {})
    with caplog.at_level(logging.INFO, logger="authz_server.service"):
        raw = request(f"/eth/{PROJECT}", token=token, headers={"x-request-id": "req-7"})
        assert client.ask(raw).status == 403
    assert "reason=bad_signature" in caplog.text
    assert "request_id=req-7" in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_stop_closes_idle_connections_and_refuses_new_ones(store: KeyStore) -> None:
    server = _server(store)
    client = Client(server.port)
    try:
        assert client.ask(request("/eth/open-project")).status == 200
        server.stop(1.0)
        assert client.closed_by_server()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        client.close()
        server.stop(0)


def test_a_server_cannot_take_a_port_in_use(server: HttpGateServer, store: KeyStore) -> None:
    gate = Gate(lambda: store.snapshot, Policy())
    with pytest.raises(OSError, match="address already in use"):
        HttpGateServer(gate, f"127.0.0.1:{server.port}")


def test_serve_runs_both_listeners_from_authz_http_listen_and_stops_cleanly(
    store: KeyStore, keys_dir: Path, ec_key: PrivateKey
) -> None:
    with AuthzProcess(keys_dir, env={"AUTHZ_HTTP_LISTEN": "127.0.0.1:0"}) as authz:
        (line,) = [line for line in authz.lines if "serving on" in line]
        port = int(line.rpartition("HTTP ext_authz on ")[2].rpartition(":")[2])
        client = Client(port)
        try:
            response = client.ask(request(f"/eth/{PROJECT}", token=mint(ec_key, KID, {})))
            assert (response.status, response.headers["x-jwt-kid"]) == (200, KID)
            _assert_denied(client.ask(request(f"/eth/{PROJECT}")), Reason.MISSING_TOKEN)
            assert authz.stop() == 0
            assert client.closed_by_server()
        finally:
            client.close()
    assert "drained; 2 check(s) answered in all" in authz.log


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_metrics_listener_says_live_and_ready_and_not_ready_once_draining(
    store: KeyStore, keys_dir: Path
) -> None:
    args = ("--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
    with AuthzProcess(keys_dir, *args, "--drain-delay", "30") as authz:
        (line,) = [line for line in authz.lines if "serving on" in line]
        base = line.partition("metrics on ")[2].partition("/metrics")[0]
        port = int(line.rpartition("HTTP ext_authz on ")[2].rpartition(":")[2])
        assert (_get(base + "/healthz"), _get(base + "/readyz")) == (200, 200)
        assert _get(base + "/metrics") == 200
        authz.signal(signal.SIGTERM)
        wait_for(lambda: _get(base + "/readyz") == 503, timeout=5)
        assert _get(base + "/healthz") == 200
        client = Client(port)
        try:  # still answering while draining
            assert client.ask(request("/eth/open-project")).status == 200
        finally:
            client.close()


# -- the README's minimal Envoy config, run as it is ----------------------------------------


def readme_http_filter() -> dict[str, Any]:
    """The ext_authz filter of README's "The least an existing Envoy needs" block."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("The least an existing Envoy needs for the HTTP transport") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    block = section[start : section.index("\n```", start)]
    (http_filter,) = yaml.safe_load(block)
    assert isinstance(http_filter, dict)
    return http_filter


def test_the_readmes_minimal_envoy_config_works_as_written(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    """The block operators paste into their own Envoy: put in place of the rendered
    config's ext_authz filter, a valid token is allowed (the kid upstream, Authorization
    gone), none gets the 403 JSON, and a project's allowed_ips sees Envoy's client address."""
    write_key(keys_dir / PROJECT, KID, ec_key)
    # Any known address passes "anywhere" (an unknown one, had Envoy not forwarded
    # X-Forwarded-For, would not); none passes "fenced". Not 192.0.2.0/24 there: that test
    # net is this sandbox's own, and Envoy reports a loopback client by its machine's address.
    for project, allowed in (("anywhere", '"0.0.0.0/0", "::/0"'), ("fenced", '"198.51.100.0/24"')):
        (keys_dir / project).mkdir()
        (keys_dir / project / "settings.toml").write_text(f"allowed_ips = [{allowed}]\n")
    token = mint(ec_key, KID, {})
    with JsonRpcNode() as node, AuthzProcess(keys_dir, "--http-listen", "127.0.0.1:0") as authz:
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz.http_port),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
            transport="http",
        )
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        filters = manager["typed_config"]["http_filters"]
        (index,) = [i for i, f in enumerate(filters) if f["name"].endswith(".ext_authz")]
        filters[index] = readme_http_filter()
        with EnvoyProcess(config) as envoy:

            def post(project: str, token: str | None = None) -> tuple[int, str | None, bytes]:
                reply = post_through(envoy.port, f"/eth/{project}", token=token)
                return reply.status, reply.content_type, reply.body

            assert post(PROJECT, token)[0] == 200
            seen = node.requests[-1]
            assert seen["x-jwt-kid"] == KID
            assert seen["x-authz-project"] == PROJECT
            assert "authorization" not in seen
            status, content_type, body = post(PROJECT)
            assert (status, content_type) == (403, "application/json")
            assert json.loads(body)["message"] == Reason.MISSING_TOKEN.message
            assert post("anywhere")[0] == 200
            status, _content_type, body = post("fenced")
            assert status == 403
            assert json.loads(body)["message"] == "ip address not allowed"
