"""What each transport tells the gate about a request (``RequestFacts``): the same facts
from gRPC's CheckRequest and from the HTTP ext_authz request, and a client address no
client can choose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.cors import Preflight
from authz_server.devtools.requests import check_request
from authz_server.facts import RequestFacts, client_from_forwarded_for
from authz_server.gate import Gate
from authz_server.keystore import KeyStore
from authz_server.transports.grpc import AuthorizationService
from authz_server.transports.http import HttpGateServer
from authz_server.verifier import Decision, Policy
from tests.test_http_transport import Client, request

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"


class RecordingGate(Gate):
    """The real gate, keeping the facts each transport asked about."""

    def __init__(self, store: KeyStore) -> None:
        super().__init__(lambda: store.snapshot, Policy())
        self.asked: list[RequestFacts] = []

    def decide(self, facts: RequestFacts) -> Decision | Preflight:
        self.asked.append(facts)
        return super().decide(facts)


@pytest.fixture
def gate(keys_dir: Path) -> RecordingGate:
    store = KeyStore(keys_dir)
    store.reload()
    return RecordingGate(store)


@pytest.fixture
def http_client(gate: RecordingGate) -> Iterator[Client]:
    server = HttpGateServer(gate, "127.0.0.1:0", trusted_proxy_hops=0)
    server.start()
    client = Client(server.port)
    yield client
    client.close()
    server.stop(0)


PREFLIGHT_HEADERS = {
    "origin": "https://app.example.com",
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization,content-type",
    "x-request-id": "rid-1",
    "authorization": "Bearer not-a-jwt",
}
EXPECTED_PREFLIGHT = RequestFacts(
    project=PROJECT,
    authorization="Bearer not-a-jwt",
    request_id="rid-1",
    method="OPTIONS",
    origin="https://app.example.com",
    client_address="203.0.113.7",
    cors_request_method="POST",
    cors_request_headers="authorization,content-type",
)


def test_grpc_facts_come_from_the_check_request_and_its_source_address(
    gate: RecordingGate,
) -> None:
    service = AuthorizationService.for_gate(gate)
    service.check(
        check_request(
            f"/eth/{PROJECT}",
            method="OPTIONS",
            headers=PREFLIGHT_HEADERS,
            request_id="rid-1",
            client_address="203.0.113.7",
        )
    )
    assert gate.asked == [EXPECTED_PREFLIGHT]
    assert gate.asked[0].is_cors_preflight


def test_http_facts_come_from_the_request_and_envoys_forwarded_for_entry(
    gate: RecordingGate, http_client: Client
) -> None:
    headers = {**PREFLIGHT_HEADERS, "x-forwarded-for": "198.51.100.1, 203.0.113.7"}
    del headers["authorization"]
    response = http_client.ask(
        request(f"/eth/{PROJECT}", method="OPTIONS", token="not-a-jwt", headers=headers)
    )
    assert response.status == 204  # a genuine preflight: the gate answers it itself
    assert gate.asked == [EXPECTED_PREFLIGHT]


def test_a_grpc_request_without_a_source_has_no_client_address(gate: RecordingGate) -> None:
    AuthorizationService.for_gate(gate).check(check_request(f"/eth/{PROJECT}"))
    assert gate.asked[0].client_address is None
    assert gate.asked[0].origin is None
    assert gate.asked[0].method == "POST"
    assert not gate.asked[0].is_cors_preflight


def test_a_repeated_forwarded_for_header_keeps_envoys_entry_last(
    gate: RecordingGate, http_client: Client
) -> None:
    # Two headers joined in order, as Envoy joins them: the last entry is still the last.
    data = request(f"/eth/{PROJECT}").replace(
        b"\r\n\r\n",
        b"\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 203.0.113.9\r\n\r\n",
    )
    assert http_client.ask(data).status == 200
    assert gate.asked[0].client_address == "203.0.113.9"


def test_a_repeated_origin_header_is_kept_whole_so_it_matches_no_single_origin(
    gate: RecordingGate, http_client: Client
) -> None:
    data = request(f"/eth/{PROJECT}").replace(
        b"\r\n\r\n", b"\r\norigin: https://a.example\r\norigin: https://b.example\r\n\r\n"
    )
    assert http_client.ask(data).status == 200
    assert gate.asked[0].origin == "https://a.example,https://b.example"


def test_an_http_request_without_forwarded_for_has_no_client_address(
    gate: RecordingGate, http_client: Client
) -> None:
    assert http_client.ask(request(f"/eth/{PROJECT}", method="GET")).status == 200
    assert gate.asked[0].client_address is None
    assert gate.asked[0].method == "GET"


@pytest.mark.parametrize(
    ("forwarded_for", "hops", "client"),
    [
        ("203.0.113.7", 0, "203.0.113.7"),
        ("1.2.3.4, 203.0.113.7", 0, "203.0.113.7"),  # the client's own entry is ignored
        ("1.2.3.4,203.0.113.7", 0, "203.0.113.7"),
        ("1.2.3.4, 203.0.113.7, 10.0.0.2", 1, "203.0.113.7"),  # one proxy of the operator's
        ("203.0.113.7, 10.0.0.2", 1, "203.0.113.7"),
        ("10.0.0.2", 1, None),  # fewer entries than trusted hops: unknown
        ("2001:db8::1", 0, "2001:db8::1"),
        ("1.2.3.4, ", 0, None),  # an empty last entry is no address
        ("", 0, None),
        (None, 0, None),
        ("203.0.113.7", -1, None),
    ],
)
def test_the_client_is_the_entry_envoy_appended_minus_trusted_hops(
    forwarded_for: str | None, hops: int, client: str | None
) -> None:
    assert client_from_forwarded_for(forwarded_for, hops) == client


@pytest.mark.parametrize(
    ("method", "origin", "cors_method", "preflight"),
    [
        ("OPTIONS", "https://a.example", "POST", True),
        ("OPTIONS", None, "POST", False),
        ("OPTIONS", "https://a.example", None, False),
        ("POST", "https://a.example", "POST", False),
    ],
)
def test_a_cors_preflight_is_options_with_origin_and_requested_method(
    method: str, origin: str | None, cors_method: str | None, preflight: bool
) -> None:
    facts = RequestFacts(PROJECT, method=method, origin=origin, cors_request_method=cors_method)
    assert facts.is_cors_preflight is preflight


def test_http_trusted_proxy_hops_must_not_be_negative(gate: RecordingGate) -> None:
    with pytest.raises(ValueError, match="trusted_proxy_hops"):
        HttpGateServer(gate, "127.0.0.1:0", trusted_proxy_hops=-1)


def test_grpc_with_trusted_proxy_hops_takes_the_client_from_forwarded_for_as_http_does(
    gate: RecordingGate,
) -> None:
    """Behind the operator's own load balancer, the CheckRequest's source is that balancer:
    with --trusted-proxy-hops the client is the X-Forwarded-For entry that many left of the
    one Envoy appended, as over HTTP; without, the source address."""
    forwarded = {"x-forwarded-for": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
    asked = check_request(f"/eth/{PROJECT}", headers=forwarded, client_address="10.0.0.2")
    AuthorizationService.for_gate(gate, trusted_proxy_hops=1).check(asked)
    AuthorizationService.for_gate(gate).check(asked)
    assert [facts.client_address for facts in gate.asked] == ["203.0.113.7", "10.0.0.2"]
    with pytest.raises(ValueError, match="trusted_proxy_hops"):
        AuthorizationService.for_gate(gate, trusted_proxy_hops=-1)
