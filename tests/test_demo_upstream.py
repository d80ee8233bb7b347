"""The demo JSON-RPC node: what it answers, and what it remembers of each request."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from authz_server.devtools.demo_upstream import JsonRpcNode


@pytest.fixture
def node() -> Iterator[JsonRpcNode]:
    with JsonRpcNode() as running:
        yield running


def post(
    node: JsonRpcNode, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        raw = body.encode() if isinstance(body, str) else body
        connection.request(
            "POST", "/", body=raw, headers={"content-type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def call(method: str, call_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": []}


def test_eth_chain_id_is_mainnet(node: JsonRpcNode) -> None:
    assert post(node, json.dumps(call("eth_chainId"))) == (
        200,
        {"jsonrpc": "2.0", "id": 1, "result": "0x1"},
    )


def test_net_version_is_mainnet(node: JsonRpcNode) -> None:
    assert post(node, json.dumps(call("net_version", "a"))) == (
        200,
        {"jsonrpc": "2.0", "id": "a", "result": "1"},
    )


def test_eth_block_number_is_hex_and_grows_with_every_call(node: JsonRpcNode) -> None:
    numbers = [post(node, json.dumps(call("eth_blockNumber")))[1]["result"] for _ in range(3)]
    assert all(number.startswith("0x") for number in numbers)
    as_ints = [int(number, 16) for number in numbers]
    assert as_ints == sorted(set(as_ints))


def test_a_batch_gets_one_reply_per_call_in_order(node: JsonRpcNode) -> None:
    batch = [call("eth_chainId", 1), call("net_version", 2), call("eth_nope", 3)]
    status, replies = post(node, json.dumps(batch))
    assert status == 200
    assert [reply["id"] for reply in replies] == [1, 2, 3]
    assert replies[0]["result"] == "0x1"
    assert replies[1]["result"] == "1"
    assert replies[2]["error"]["code"] == -32601


def test_an_unknown_method_is_method_not_found(node: JsonRpcNode) -> None:
    assert post(node, json.dumps(call("eth_sendRawTransaction", 7))) == (
        200,
        {"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "Method not found"}},
    )


def test_a_body_that_is_not_json_is_a_parse_error(node: JsonRpcNode) -> None:
    assert post(node, '{"jsonrpc": "2.0", "method"') == (
        200,
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}},
    )


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param({"jsonrpc": "1.0", "id": 1, "method": "eth_chainId"}, id="wrong-version"),
        pytest.param({"jsonrpc": "2.0", "id": 1}, id="no-method"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": 5}, id="method-not-a-string"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "x", "params": 3}, id="bad-params"),
        pytest.param({"jsonrpc": "2.0", "id": [1], "method": "eth_chainId"}, id="bad-id"),
        pytest.param([], id="empty-batch"),
        pytest.param(42, id="not-an-object"),
    ],
)
def test_a_malformed_request_is_an_invalid_request(node: JsonRpcNode, request_body: Any) -> None:
    status, reply = post(node, json.dumps(request_body))
    assert status == 200
    assert reply["error"] == {"code": -32600, "message": "Invalid Request"}


def test_each_malformed_member_of_a_batch_gets_its_own_invalid_request(node: JsonRpcNode) -> None:
    status, replies = post(node, json.dumps([1, call("eth_chainId", 2)]))
    assert status == 200
    assert replies[0] == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "Invalid Request"},
    }
    assert replies[1]["result"] == "0x1"


def test_notifications_get_no_reply(node: JsonRpcNode) -> None:
    notification = {"jsonrpc": "2.0", "method": "eth_chainId"}
    assert post(node, json.dumps(notification)) == (204, None)
    assert post(node, json.dumps([notification, notification])) == (204, None)


def test_it_records_the_lower_cased_headers_of_each_request(node: JsonRpcNode) -> None:
    post(node, json.dumps(call("eth_chainId")), {"X-Jwt-Kid": "k1", "Authorization": "Bearer t"})
    post(node, json.dumps(call("net_version")), {"X-Other": "2"})
    first, second = node.requests
    assert first["x-jwt-kid"] == "k1"
    assert first["authorization"] == "Bearer t"
    assert first["content-type"] == "application/json"
    assert second["x-other"] == "2"
    assert "x-jwt-kid" not in second


def test_it_keeps_only_the_latest_requests() -> None:
    with JsonRpcNode(history=2) as node:
        for number in range(3):
            post(node, json.dumps(call("eth_chainId")), {"x-n": str(number)})
        assert [headers["x-n"] for headers in node.requests] == ["1", "2"]


def test_get_is_not_allowed(node: JsonRpcNode) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 405
    assert response.getheader("allow") == "POST"


def test_it_stops_and_its_port_is_closed_after_the_context() -> None:
    with JsonRpcNode() as other:
        port = other.port
        assert port > 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises(ConnectionRefusedError):
        connection.connect()


def test_the_module_serves_until_sigterm_and_says_where_it_listens() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "authz_server.devtools.demo_upstream", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("demo JSON-RPC node listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/", body=json.dumps(call("eth_chainId")))
        assert json.loads(connection.getresponse().read())["result"] == "0x1"
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_a_client_resetting_its_connection_leaves_no_traceback(
    node: JsonRpcNode, capsys: pytest.CaptureFixture[str]
) -> None:
    server = node._server
    assert server is not None
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        server.handle_error(None, ("10.0.0.7", 41000))
    assert capsys.readouterr().err == ""
    # Anything else is still a bug worth its traceback.
    try:
        raise ValueError("unexpected")
    except ValueError:
        server.handle_error(None, ("10.0.0.7", 41000))
    assert "Traceback" in capsys.readouterr().err
