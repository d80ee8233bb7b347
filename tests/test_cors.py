"""CORS for browser dapps: the policy, the rendered Envoy configs, and a real Envoy.

Pages call through Envoy's CORS filter, placed before ext_authz: their preflights are
answered at the edge without a token, and every answer (the node's, the gate's denial,
Envoy's own fail-closed reply) carries the CORS headers that let the page read it.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.cors import cors_origins, is_origin, preflight_headers
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render, rendered_files
from authz_server.devtools.envoy_process import EnvoyProcess, validate
from authz_server.devtools.requests import check_request
from authz_server.keystore import KeyStore
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Policy
from tests.authz_process import AuthzProcess, authz_server_binary
from tests.support import MISSING, TRANSPORTS, write_key

ROOT = Path(__file__).resolve().parent.parent
LOCKED = "locked-project"
OPEN = "open-project"
# A project whose settings allow calls from PAGE only (issue 14's allowed_origins).
PAGE_ONLY = "page-only-project"
ORIGIN_NOT_ALLOWED = "origin not allowed"
KID = "3f0c1b52-7a4e-4d57-9d8e-2b1f0c6a9e10"
PAGE = "https://app.example.com"
OTHER_PAGE = "https://elsewhere.example.org"
CORS_FILTER = "envoy.filters.http.cors"
# The policy, spelled out here rather than taken from the module under test.
ALLOWED_METHODS = "POST, GET, OPTIONS"
ALLOWED_HEADERS = "authorization, content-type"
MAX_AGE = "7200"
RPC = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}


def preflight_of(origin: str) -> dict[str, str]:
    """What a browser sends before a POST with a token and a JSON body."""
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }


# --- the policy ---------------------------------------------------------------------------------


def test_no_cors_origin_means_any_origin() -> None:
    assert cors_origins([]) == ("*",)
    assert cors_origins(["*"]) == ("*",)


def test_cors_origin_none_turns_cors_off() -> None:
    assert cors_origins(["none"]) == ()


def test_origins_are_kept_lower_case_in_order_without_repeats() -> None:
    origins = ["https://App.Example.com", "http://localhost:3000", "https://app.example.com"]
    assert cors_origins(origins) == ("https://app.example.com", "http://localhost:3000")


@pytest.mark.parametrize(
    "value",
    [
        "app.example.com",  # no scheme
        "https://app.example.com/",  # a path, even an empty one
        "https://app.example.com/dapp",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://*.example.com",
        "",
    ],
)
def test_a_value_that_is_not_an_origin_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        cors_origins([value])


@pytest.mark.parametrize("words", [["none", PAGE], ["*", PAGE], ["none", "*"]])
def test_none_and_any_stand_alone(words: list[str]) -> None:
    with pytest.raises(ValueError, match="stand alone"):
        cors_origins(words)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(PAGE, True, id="https"),
        pytest.param("http://localhost:3000", True, id="with-port"),
        pytest.param("http://[::1]:8080", True, id="ipv6"),
        pytest.param("https://App.Example.com", True, id="any-case"),
        pytest.param("null", True, id="opaque"),
        pytest.param(None, False, id="absent"),
        pytest.param("", False, id="empty"),
        pytest.param("https://app.example.com/x", False, id="with-path"),
        pytest.param("https://a.example\r\nx-jwt-kid: forged", False, id="crlf"),
        pytest.param("https://a.example, https://b.example", False, id="two-joined"),
        pytest.param("https://" + "a" * 600 + ".example", False, id="huge"),
    ],
)
def test_only_what_a_browser_could_send_is_an_origin(value: str | None, expected: bool) -> None:
    assert is_origin(value) is expected


def test_a_preflight_answer_allows_only_the_asking_origin() -> None:
    assert dict(preflight_headers(PAGE)) == {
        "access-control-allow-origin": PAGE,
        "access-control-allow-methods": ALLOWED_METHODS,
        "access-control-allow-headers": ALLOWED_HEADERS,
        "access-control-max-age": MAX_AGE,
        "vary": "origin",
    }


# --- the rendered configs -----------------------------------------------------------------------


def rendering(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "listen": Endpoint("127.0.0.1", 0),
        "authz": Endpoint("127.0.0.1", 9001),
        "upstream": Endpoint("127.0.0.1", 8545),
    }
    return render(**{**kwargs, **overrides})


def manager_of(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def cors_policy(config: dict[str, Any]) -> dict[str, Any] | None:
    (virtual_host,) = manager_of(config)["route_config"]["virtual_hosts"]
    policy: dict[str, Any] | None = virtual_host.get("typed_per_filter_config", {}).get(CORS_FILTER)
    return policy


def filter_names(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in manager_of(config)["http_filters"]]


@pytest.mark.parametrize("relative", sorted(rendered_files()))
def test_every_checked_in_config_answers_cors_before_ext_authz_for_any_origin(
    relative: str,
) -> None:
    config = yaml.safe_load((ROOT / relative).read_text(encoding="utf-8"))
    names = filter_names(config)
    assert names.index(CORS_FILTER) < names.index("envoy.filters.http.ext_authz")
    policy = cors_policy(config)
    assert policy is not None
    assert policy["allow_origin_string_match"] == [{"safe_regex": {"regex": ".*"}}]


def test_the_policy_allows_the_token_a_json_body_and_post_get_options() -> None:
    policy = cors_policy(rendering())
    assert policy == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
        "allow_methods": ALLOWED_METHODS,
        "allow_headers": ALLOWED_HEADERS,
        "max_age": MAX_AGE,
        "allow_credentials": False,
        "forward_not_matching_preflights": False,
    }


def test_listed_origins_are_matched_exactly_whatever_their_case() -> None:
    policy = cors_policy(rendering(cors_origins=[PAGE, "http://localhost:3000"]))
    assert policy is not None
    assert policy["allow_origin_string_match"] == [
        {"exact": PAGE, "ignore_case": True},
        {"exact": "http://localhost:3000", "ignore_case": True},
    ]


def test_no_origins_render_no_cors_filter_and_no_policy() -> None:
    config = rendering(cors_origins=[])
    assert CORS_FILTER not in filter_names(config)
    assert cors_policy(config) is None


def test_render_refuses_what_is_not_an_origin() -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        rendering(cors_origins=["https://app.example.com/dapp"])


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(rendering(cors_origins=[PAGE, "http://127.0.0.1:8000"]), id="grpc-list"),
        pytest.param(rendering(transport="http", cors_origins=[PAGE]), id="http-list"),
        pytest.param(rendering(cors_origins=[]), id="off"),
    ],
)
def test_every_cors_rendering_is_accepted_by_envoy_validate(config: dict[str, Any]) -> None:
    validate(config)


def run_envoy_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [authz_server_binary(), "envoy-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_envoy_config_command_takes_repeated_cors_origins() -> None:
    result = run_envoy_config("--cors-origin", PAGE, "--cors-origin", "http://localhost:3000")
    assert result.returncode == 0, result.stderr
    policy = cors_policy(yaml.safe_load(result.stdout))
    assert policy is not None
    assert [m["exact"] for m in policy["allow_origin_string_match"]] == [
        PAGE,
        "http://localhost:3000",
    ]


def test_the_envoy_config_command_turns_cors_off_with_none() -> None:
    result = run_envoy_config("--cors-origin", "none")
    assert result.returncode == 0, result.stderr
    assert CORS_FILTER not in result.stdout


def test_the_envoy_config_command_refuses_a_bad_origin_in_one_line() -> None:
    result = run_envoy_config("--cors-origin", "https://app.example.com/dapp")
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert "is not an origin" in error
    assert "Traceback" not in result.stderr


# --- a real Envoy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    header_list: tuple[tuple[str, str], ...] = ()

    def count(self, name: str) -> int:
        return sum(1 for key, _ in self.header_list if key == name)

    @property
    def allowed_origin(self) -> str | None:
        return self.headers.get("access-control-allow-origin")

    def json(self) -> Any:
        return json.loads(self.body)


def ask(port: int, method: str, path: str, headers: dict[str, str]) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = None if method == "OPTIONS" else json.dumps(RPC)
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        header_list = tuple((name.lower(), value) for name, value in response.getheaders())
        return Answer(response.status, dict(header_list), response.read(), header_list)
    finally:
        connection.close()


def call_from(origin: str, token: str | None = None) -> dict[str, str]:
    """What a page's fetch() sends for a JSON-RPC call."""
    headers = {"origin": origin, "content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


@dataclass
class Gateway:
    node: JsonRpcNode
    authz: AuthzProcess
    transport: str

    def envoy(
        self,
        origins: list[str],
        authz_port: int | None = None,
        *,
        authz: AuthzProcess | None = None,
        cors_after_ext_authz: bool = False,
    ) -> EnvoyProcess:
        authz = authz or self.authz
        if authz_port is None:
            authz_port = authz.port_for(self.transport)
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz_port),
            upstream=Endpoint("127.0.0.1", self.node.port),
            admin=Endpoint("127.0.0.1", 0),
            transport=self.transport,
            authz_timeout_s=0.2,
            cors_origins=origins,
        )
        if cors_after_ext_authz:
            # Istio's order: its CUSTOM policies' ext_authz runs before its CORS filter.
            filters = manager_of(config)["http_filters"]
            cors = filters.pop(next(i for i, f in enumerate(filters) if f["name"] == CORS_FILTER))
            filters.insert(filters.index(filters[-1]), cors)  # just before the router
        return EnvoyProcess(config)


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey
) -> Iterator[Gateway]:
    keys_dir = tmp_path_factory.mktemp("keys")
    write_key(keys_dir / LOCKED, KID, ec_key)
    write_key(keys_dir / PAGE_ONLY, KID, ec_key)
    (keys_dir / PAGE_ONLY / "settings.toml").write_text(f'allowed_origins = ["{PAGE}"]\n')
    with (
        JsonRpcNode() as node,
        AuthzProcess(keys_dir, "--http-listen", "127.0.0.1:0") as authz,
    ):
        yield Gateway(node, authz, request.param)


@pytest.fixture(scope="module")
def any_origin(gateway: Gateway) -> Iterator[EnvoyProcess]:
    with gateway.envoy(["*"]) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def one_origin(gateway: Gateway) -> Iterator[EnvoyProcess]:
    with gateway.envoy([PAGE]) as envoy:
        yield envoy


@pytest.mark.parametrize("project", [LOCKED, OPEN])
def test_envoy_answers_a_preflight_itself_without_a_token(
    gateway: Gateway, any_origin: EnvoyProcess, project: str
) -> None:
    seen_before = len(gateway.node.requests)
    answer = ask(any_origin.port, "OPTIONS", f"/eth/{project}", preflight_of(PAGE))
    assert answer.status == 200
    assert answer.allowed_origin == PAGE
    assert answer.headers["access-control-allow-methods"] == ALLOWED_METHODS
    assert answer.headers["access-control-allow-headers"] == ALLOWED_HEADERS
    assert answer.headers["access-control-max-age"] == MAX_AGE
    assert len(gateway.node.requests) == seen_before  # the node never saw it


def test_a_page_can_read_the_gates_denial(gateway: Gateway, any_origin: EnvoyProcess) -> None:
    answer = ask(any_origin.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
    assert answer.status == 403
    assert answer.allowed_origin == PAGE
    assert answer.json() == {"code": -32013, "message": MISSING, "project": LOCKED}


def test_a_page_can_read_the_nodes_answer_with_a_token_and_for_an_open_project(
    gateway: Gateway, any_origin: EnvoyProcess, ec_key: PrivateKey
) -> None:
    for project, token in ((LOCKED, mint(ec_key, KID, {})), (OPEN, None)):
        answer = ask(any_origin.port, "POST", f"/eth/{project}", call_from(PAGE, token))
        assert answer.status == 200, answer.body
        assert answer.allowed_origin == PAGE
        assert "result" in answer.json()


def test_a_non_preflight_options_still_needs_a_token(
    gateway: Gateway, any_origin: EnvoyProcess
) -> None:
    seen_before = len(gateway.node.requests)
    for headers in ({"origin": PAGE}, {}):
        answer = ask(any_origin.port, "OPTIONS", f"/eth/{LOCKED}", headers)
        assert answer.status == 403
        assert answer.json()["message"] == MISSING
    assert len(gateway.node.requests) == seen_before


def test_a_page_can_read_envoys_fail_closed_reply(gateway: Gateway) -> None:
    # An address nothing listens on: the gate cannot be asked.
    with JsonRpcNode() as placeholder:
        dead_port = placeholder.port
    with gateway.envoy(["*"], authz_port=dead_port) as envoy:
        answer = ask(envoy.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
    assert answer.status == 403
    assert answer.allowed_origin == PAGE
    assert answer.json() == {
        "code": -32013,
        "message": "authorization service unavailable",
        "project": LOCKED,
    }


def test_a_listed_origin_gets_the_same_as_under_any_origin(
    gateway: Gateway, one_origin: EnvoyProcess
) -> None:
    preflight = ask(one_origin.port, "OPTIONS", f"/eth/{LOCKED}", preflight_of(PAGE.upper()))
    assert preflight.status == 200
    assert preflight.allowed_origin == PAGE.upper()
    denial = ask(one_origin.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
    assert denial.allowed_origin == PAGE
    assert denial.json()["message"] == MISSING


def test_an_origin_not_listed_is_refused_at_the_edge(
    gateway: Gateway, one_origin: EnvoyProcess
) -> None:
    seen_before = len(gateway.node.requests)
    for project in (LOCKED, OPEN):
        preflight = ask(one_origin.port, "OPTIONS", f"/eth/{project}", preflight_of(OTHER_PAGE))
        # Answered by Envoy, without the header a browser needs to go on.
        assert preflight.allowed_origin is None
        assert not preflight.body
        simple = ask(one_origin.port, "POST", f"/eth/{project}", call_from(OTHER_PAGE))
        assert simple.allowed_origin is None
    assert len(gateway.node.requests) == seen_before + 1  # only the open project's POST


def test_with_cors_off_no_answer_carries_cors_headers(gateway: Gateway) -> None:
    with gateway.envoy([]) as envoy:
        for method, project in (("POST", LOCKED), ("POST", OPEN)):
            answer = ask(envoy.port, method, f"/eth/{project}", call_from(PAGE))
            assert answer.allowed_origin is None


# --- the gate, where no CORS filter answers ------------------------------------------------------


@pytest.fixture
def service(keys_dir: Path, ec_key: PrivateKey) -> AuthorizationService:
    write_key(keys_dir / LOCKED, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    return AuthorizationService(lambda: store.snapshot, Policy())


def preflight_answer(response: external_auth_pb2.CheckResponse) -> dict[str, str]:
    """The headers of the gate's own 204 answer (failing unless it is one)."""
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    assert denied.status.code == 204
    assert denied.body == ""
    return {option.header.key: option.header.value for option in denied.headers}


@pytest.mark.parametrize("project", [LOCKED, OPEN])
def test_the_gate_answers_a_genuine_preflight_itself_with_204_and_the_policy(
    service: AuthorizationService, project: str
) -> None:
    response = service.check(
        check_request(f"/eth/{project}", headers=preflight_of(PAGE), method="OPTIONS")
    )
    assert preflight_answer(response) == {
        "access-control-allow-origin": PAGE,
        "access-control-allow-methods": ALLOWED_METHODS,
        "access-control-allow-headers": ALLOWED_HEADERS,
        "access-control-max-age": MAX_AGE,
        "vary": "origin",
    }


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        pytest.param("OPTIONS", {"origin": PAGE}, id="no-request-method"),
        pytest.param("OPTIONS", {"access-control-request-method": "POST"}, id="no-origin"),
        pytest.param("OPTIONS", {}, id="bare-options"),
        pytest.param("OPTIONS", preflight_of(""), id="empty-origin"),
        pytest.param("OPTIONS", preflight_of(f"{PAGE}/dapp"), id="origin-with-a-path"),
        pytest.param("POST", preflight_of(PAGE), id="post-with-preflight-headers"),
        pytest.param("GET", preflight_of(PAGE), id="get-with-preflight-headers"),
    ],
)
def test_anything_less_than_a_genuine_preflight_needs_a_token(
    service: AuthorizationService, method: str, headers: dict[str, str]
) -> None:
    response = service.check(check_request(f"/eth/{LOCKED}", headers=headers, method=method))
    assert response.denied_response.status.code == 403
    assert json.loads(response.denied_response.body)["message"] == MISSING


def test_a_preflight_for_an_invalid_project_id_is_denied_like_any_request(
    service: AuthorizationService,
) -> None:
    response = service.check(
        check_request("/eth/not.a.project", headers=preflight_of(PAGE), method="OPTIONS")
    )
    assert response.denied_response.status.code == 403
    assert json.loads(response.denied_response.body)["message"] == "invalid project id"


def test_preflights_the_gate_answers_are_counted_apart(service: AuthorizationService) -> None:
    for _ in range(2):
        service.check(check_request(f"/eth/{LOCKED}", headers=preflight_of(PAGE), method="OPTIONS"))
    registry = service.metrics.registry
    labels = {"result": "preflight", "reason": "cors"}
    assert registry.get_sample_value("authz_decisions_total", labels) == 2
    denied = {"result": "deny", "reason": "missing_token"}
    assert registry.get_sample_value("authz_decisions_total", denied) == 0


def test_without_a_cors_filter_the_gate_answers_preflights_through_envoy(
    gateway: Gateway,
) -> None:
    seen_before = len(gateway.node.requests)
    with gateway.envoy([]) as envoy:
        for project in (LOCKED, OPEN):
            answer = ask(envoy.port, "OPTIONS", f"/eth/{project}", preflight_of(PAGE))
            assert answer.status == 204, answer.body
            assert answer.allowed_origin == PAGE
            assert answer.headers["access-control-allow-methods"] == ALLOWED_METHODS
            assert answer.headers["access-control-allow-headers"] == ALLOWED_HEADERS
            assert answer.headers["access-control-max-age"] == MAX_AGE
            assert not answer.body
        for headers in ({"origin": PAGE}, {"access-control-request-method": "POST"}):
            answer = ask(envoy.port, "OPTIONS", f"/eth/{LOCKED}", headers)
            assert answer.status == 403
            assert answer.json()["message"] == MISSING
    assert len(gateway.node.requests) == seen_before  # not one of them went upstream


# --- a project's own allowed origins (its settings.toml) ----------------------------------------


def test_a_projects_allowed_origins_refuse_other_pages_readably(
    gateway: Gateway, any_origin: EnvoyProcess, ec_key: PrivateKey
) -> None:
    token = mint(ec_key, KID, {})
    served = ask(any_origin.port, "POST", f"/eth/{PAGE_ONLY}", call_from(PAGE, token))
    assert served.status == 200, served.body
    assert served.allowed_origin == PAGE
    seen_before = len(gateway.node.requests)
    # The edge allows any origin, so Envoy answers the preflight; the real call is then
    # refused by the gate, with the CORS headers that let the page read why.
    preflight = ask(any_origin.port, "OPTIONS", f"/eth/{PAGE_ONLY}", preflight_of(OTHER_PAGE))
    assert preflight.allowed_origin == OTHER_PAGE
    refused = ask(any_origin.port, "POST", f"/eth/{PAGE_ONLY}", call_from(OTHER_PAGE, token))
    assert refused.status == 403
    assert refused.allowed_origin == OTHER_PAGE
    assert refused.json() == {"code": -32013, "message": ORIGIN_NOT_ALLOWED, "project": PAGE_ONLY}
    assert len(gateway.node.requests) == seen_before


def test_without_a_cors_filter_the_gates_preflight_answer_follows_the_projects_origins(
    gateway: Gateway,
) -> None:
    with gateway.envoy([]) as envoy:
        answered = ask(envoy.port, "OPTIONS", f"/eth/{PAGE_ONLY}", preflight_of(PAGE))
        assert answered.status == 204
        assert answered.allowed_origin == PAGE
        refused = ask(envoy.port, "OPTIONS", f"/eth/{PAGE_ONLY}", preflight_of(OTHER_PAGE))
        assert refused.status == 403
        assert refused.allowed_origin is None  # the browser stops here
        assert refused.json()["message"] == ORIGIN_NOT_ALLOWED


# --- a proxy whose CORS filter runs after ext_authz (Istio), and --cors-denials -----------------


@pytest.fixture(scope="module")
def cors_denials(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey
) -> Iterator[AuthzProcess]:
    """Another authz-server for the same projects, with AUTHZ_CORS_DENIALS=true."""
    keys_dir = tmp_path_factory.mktemp("keys")
    write_key(keys_dir / LOCKED, KID, ec_key)
    with AuthzProcess(
        keys_dir, "--http-listen", "127.0.0.1:0", env={"AUTHZ_CORS_DENIALS": "true"}
    ) as authz:
        yield authz


def test_behind_istios_order_the_gate_answers_preflights_but_its_denials_lack_cors(
    gateway: Gateway,
) -> None:
    with gateway.envoy(["*"], cors_after_ext_authz=True) as envoy:
        preflight = ask(envoy.port, "OPTIONS", f"/eth/{LOCKED}", preflight_of(PAGE))
        assert preflight.status == 204
        assert preflight.allowed_origin == PAGE
        denial = ask(envoy.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
        assert denial.status == 403
        assert denial.allowed_origin is None  # unreadable for the page: what the flag is for
        served = ask(envoy.port, "POST", f"/eth/{OPEN}", call_from(PAGE))
        assert served.allowed_origin == PAGE  # the node's answers pass the CORS filter


def test_with_cors_denials_istios_order_lets_pages_read_the_denial(
    gateway: Gateway, cors_denials: AuthzProcess
) -> None:
    with gateway.envoy(["*"], authz=cors_denials, cors_after_ext_authz=True) as envoy:
        denial = ask(envoy.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
        assert denial.status == 403
        assert denial.allowed_origin == PAGE
        assert denial.headers["vary"] == "origin"
        assert denial.json() == {"code": -32013, "message": MISSING, "project": LOCKED}
        other = ask(envoy.port, "POST", f"/eth/{LOCKED}", call_from(OTHER_PAGE))
        assert other.allowed_origin == OTHER_PAGE  # each page its own origin, none cached
        server = ask(envoy.port, "POST", f"/eth/{LOCKED}", {"content-type": "application/json"})
        assert server.status == 403
        assert server.allowed_origin is None  # no Origin, no CORS headers


def test_with_cors_denials_behind_the_rendered_order_the_header_is_not_doubled(
    gateway: Gateway, cors_denials: AuthzProcess
) -> None:
    with gateway.envoy(["*"], authz=cors_denials) as envoy:
        denial = ask(envoy.port, "POST", f"/eth/{LOCKED}", call_from(PAGE))
    assert denial.status == 403
    assert denial.count("access-control-allow-origin") == 1
    assert denial.allowed_origin == PAGE
