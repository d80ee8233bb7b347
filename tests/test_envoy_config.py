"""The rendered Envoy configs: what Envoy accepts, and what a real Envoy does with them."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server import cli
from authz_server.config import Settings
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import (
    HEALTH_INTERVAL_S,
    HEALTH_TIMEOUT_S,
    HEALTH_UNHEALTHY_THRESHOLD,
    LOCAL_CONFIG,
    LOCAL_PORTS,
    UNAVAILABLE_BODY,
    Endpoint,
    ProjectRoute,
    as_yaml,
    main,
    render,
    rendered_files,
)
from authz_server.devtools.envoy_process import EnvoyProcess, validate
from authz_server.tokens import PrivateKey, mint, public_pem
from authz_server.transports.grpc import SERVICE_NAME
from authz_server.verifier import Reason
from tests.authz_process import AuthzProcess
from tests.support import post

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_0 = Endpoint("127.0.0.1", 0)
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
UNAVAILABLE = {"code": -32013, "message": "authorization service unavailable"}
MAINNET = ProjectRoute("/v1/mainnet/", "demo-mainnet")
# Paths that may end in a project id go upstream; all others stop at Envoy, 403 as the gate
# answers them (spelled out here rather than taken from the module under test).
PROJECT_PATH_MATCH = {"safe_regex": {"regex": ".*/[A-Za-z0-9_-]+/?"}}
INVALID_PROJECT_ROUTE = {
    "name": "invalid-project-id",
    "match": {"prefix": "/"},
    "direct_response": {
        "status": 403,
        "body": {
            "inline_string": '{"code": -32013, "message": "invalid project id", "project": ""}'
        },
    },
    "response_headers_to_add": [
        {
            "header": {"key": "content-type", "value": "application/json"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ],
}
TYPED_FIELDS = ("typed_config", "typed_per_filter_config", "typed_extension_protocol_options")


def rendering(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "listen": LOOPBACK_0,
        "authz": Endpoint("127.0.0.1", 9001),
        "upstream": Endpoint("127.0.0.1", 8545),
    }
    return render(**{**kwargs, **overrides})


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    assert manager["name"] == "envoy.filters.network.http_connection_manager"
    typed: dict[str, Any] = manager["typed_config"]
    return typed


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (virtual_host,) = connection_manager(config)["route_config"]["virtual_hosts"]
    result: list[dict[str, Any]] = virtual_host["routes"]
    return result


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}


# --- what Envoy accepts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(rendering(), id="ip-literals"),
        pytest.param(rendering(admin=Endpoint("127.0.0.1", 9901)), id="with-admin"),
        pytest.param(
            rendering(authz=Endpoint("authz", 9001), upstream=Endpoint("node", 8545)),
            id="dns-names",
        ),
        pytest.param(
            rendering(authz=Endpoint("::1", 9001), upstream=Endpoint("::1", 8545)), id="ipv6"
        ),
        pytest.param(
            rendering(project_routes=[MAINNET, ProjectRoute("/v1/sepolia/", "demo-sepolia")]),
            id="project-routes",
        ),
        pytest.param(rendering(authz_timeout_s=2.5), id="long-timeout"),
        pytest.param(rendering(transport="http"), id="http"),
        pytest.param(
            rendering(transport="http", authz=[Endpoint("authz", 9002), Endpoint("authz", 9003)]),
            id="http-dns-workers",
        ),
        pytest.param(
            rendering(
                transport="http",
                authz=[Endpoint("authz", 9002), Endpoint("authz", 9003)],
                health_ports=[9090, 9091],
            ),
            id="http-readyz-checks",
        ),
    ],
)
def test_every_rendering_is_accepted_by_envoy_validate(config: dict[str, Any]) -> None:
    validate(config)


@pytest.mark.parametrize("relative", sorted(rendered_files()))
def test_every_checked_in_file_is_accepted_by_envoy_validate(relative: str) -> None:
    validate(yaml.safe_load((ROOT / relative).read_text(encoding="utf-8")))


@pytest.mark.parametrize("relative", sorted(rendered_files()))
def test_the_checked_in_files_equal_their_rendering(relative: str) -> None:
    path = ROOT / relative
    assert path.exists(), f"{relative} is missing: run `make envoy-config`"
    assert path.read_text(encoding="utf-8") == rendered_files()[relative], (
        f"{relative} is stale: run `make envoy-config`"
    )


def test_the_module_writes_the_checked_in_files_and_then_checks_them(tmp_path: Path) -> None:
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    for relative, text in rendered_files().items():
        assert (tmp_path / relative).read_text(encoding="utf-8") == text
    assert main(["--root", str(tmp_path), "--check"]) == 0


# --- what the config says ----------------------------------------------------------------------


def test_the_http_filters_are_cors_then_the_project_then_ext_authz_then_the_router() -> None:
    filters = connection_manager(rendering())["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]


def test_ext_authz_fails_closed_over_grpc_v3_with_the_configured_timeout() -> None:
    ext_authz = connection_manager(rendering(authz_timeout_s=0.4))["http_filters"][2]
    typed = ext_authz["typed_config"]
    assert typed["@type"] == EXT_AUTHZ_TYPE
    # Proto3 JSON leaves out fields at their default: absent means false.
    assert typed.get("failure_mode_allow", False) is False
    assert typed["transport_api_version"] == "V3"
    assert typed["grpc_service"]["envoy_grpc"] == {"cluster_name": "authz"}
    assert typed["grpc_service"]["timeout"] == "0.400s"
    assert "status_on_error" not in typed  # Envoy's default: 403


def test_a_project_route_names_its_project_in_the_context_extensions() -> None:
    first, by_path, catch_all = routes(rendering(project_routes=[MAINNET]))
    assert first["match"] == {"prefix": "/v1/mainnet/"}
    assert first["route"] == {"cluster": "upstream"}
    assert first["typed_per_filter_config"] == {
        "envoy.filters.http.header_to_metadata": {
            "@type": METADATA_TYPE,
            "request_rules": [
                {
                    "header": ":path",
                    "on_header_present": {
                        "metadata_namespace": "authz_server",
                        "key": "project",
                        "value": "demo-mainnet",
                    },
                }
            ],
        },
        "envoy.filters.http.ext_authz": {
            "@type": PER_ROUTE_TYPE,
            "check_settings": {"context_extensions": {"project": "demo-mainnet"}},
        },
    }
    assert by_path["match"] == PROJECT_PATH_MATCH
    assert "typed_per_filter_config" not in by_path
    assert catch_all == INVALID_PROJECT_ROUTE


def test_project_routes_keep_their_order_before_the_catch_all() -> None:
    given = [ProjectRoute("/a/b/", "ab"), ProjectRoute("/a/", "a")]
    assert [r["match"] for r in routes(rendering(project_routes=given))] == [
        {"prefix": "/a/b/"},
        {"prefix": "/a/"},
        PROJECT_PATH_MATCH,
        {"prefix": "/"},
    ]


def test_without_project_routes_the_path_names_the_project_and_other_paths_stop_at_envoy() -> None:
    by_path, catch_all = routes(rendering())
    assert by_path == {
        "name": "default",
        "match": PROJECT_PATH_MATCH,
        "route": {"cluster": "upstream"},
    }
    assert catch_all == INVALID_PROJECT_ROUTE


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/eth/2a8428f5a79b09aadff75a745397cf6d2f59d51e", True),
        ("/2a8428f5a79b09aadff75a745397cf6d2f59d51e/", True),
        ("/a/b/c_d-E", True),
        ("/eth/P1;x", False),
        ("/eth/P1%20", False),
        ("/eth/P1.", False),
        ("/eth/P1%3Fx", False),
        ("/", False),
        ("/eth/p\u00e9", False),
    ],
)
def test_the_path_route_forwards_only_paths_ending_in_a_possible_project_id(
    path: str, forwarded: bool
) -> None:
    """Envoy matches safe_regex against the whole path (RE2 here has Python's syntax for it)."""
    assert bool(re.fullmatch(PROJECT_PATH_MATCH["safe_regex"]["regex"], path)) is forwarded


def test_underscored_request_headers_are_dropped_at_the_edge() -> None:
    manager = connection_manager(rendering())
    assert manager["common_http_protocol_options"] == {
        "headers_with_underscores_action": "DROP_HEADER"
    }


def test_ip_literals_make_static_clusters_and_names_make_dns_clusters() -> None:
    by_ip = clusters(rendering(authz=Endpoint("10.0.0.5", 9001), upstream=Endpoint("::1", 1)))
    by_name = clusters(rendering(authz=Endpoint("authz", 9001), upstream=Endpoint("node", 1)))
    assert {name: c["type"] for name, c in by_ip.items()} == {
        "authz": "STATIC",
        "upstream": "STATIC",
    }
    assert {name: c["type"] for name, c in by_name.items()} == {
        "authz": "STRICT_DNS",
        "upstream": "STRICT_DNS",
    }


def test_the_authz_cluster_speaks_http2_and_the_upstream_http1() -> None:
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    found = clusters(rendering())
    authz = found["authz"]["typed_extension_protocol_options"][options]
    upstream = found["upstream"]["typed_extension_protocol_options"][options]
    assert authz["@type"] == f"type.googleapis.com/{options}"
    assert authz["explicit_http_config"] == {"http2_protocol_options": {}}
    assert upstream["explicit_http_config"] == {"http_protocol_options": {}}
    assert found["authz"]["connect_timeout"] == "1s"


def test_the_authz_cluster_is_health_checked_over_grpc_health_and_the_upstream_is_not() -> None:
    found = clusters(rendering(authz=[Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)]))
    (check,) = found["authz"]["health_checks"]
    # The name the service registers in grpc.health.v1: a rename on either side fails here.
    assert check["grpc_health_check"] == {"service_name": SERVICE_NAME}
    assert check["interval"] == "1s"
    assert check["timeout"] == "1s"
    assert check["unhealthy_threshold"] == 2
    assert check["healthy_threshold"] == 1
    assert "health_checks" not in found["upstream"]


def test_a_dead_authz_endpoint_is_ejected_and_its_checks_asked_again_elsewhere() -> None:
    config = rendering(authz=[Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)])
    authz = clusters(config)["authz"]
    # The proto's own field name (betterproto2 would spell it consecutive_5_xx).
    assert authz["outlier_detection"]["consecutive_5xx"] == 3
    assert authz["outlier_detection"]["max_ejection_percent"] == 50
    (threshold,) = authz["circuit_breakers"]["thresholds"]
    assert threshold["retry_budget"]["min_retry_concurrency"] >= 1
    (ext_authz,) = [
        f["typed_config"]
        for f in connection_manager(config)["http_filters"]
        if f["name"] == "envoy.filters.http.ext_authz"
    ]
    retry = ext_authz["grpc_service"]["retry_policy"]
    assert retry["num_retries"] == 1
    # Only failures that got no answer: a denial is an answer and is never retried.
    assert set(retry["retry_on"].split(",")) == {
        "connect-failure",
        "refused-stream",
        "reset",
        "unavailable",
    }
    (predicate,) = retry["retry_host_predicate"]
    assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert "outlier_detection" not in clusters(config)["upstream"]


def test_envoy_stops_sending_to_a_draining_server_well_inside_its_drain() -> None:
    """The longest Envoy takes to eject a server that answers NOT_SERVING (its checks are
    ``interval`` apart, each may take ``timeout``) is shorter than the default drain, so
    calls leave a stopping server while it still answers them."""
    settings = Settings(keys_dir=Path("."))
    ejection_s = HEALTH_UNHEALTHY_THRESHOLD * (HEALTH_INTERVAL_S + HEALTH_TIMEOUT_S)
    assert ejection_s < settings.drain_delay
    serve = cli.build_parser().parse_args(["serve", "--keys-dir", "."])
    assert serve.drain_delay == settings.drain_delay


def test_the_admin_interface_is_there_only_when_asked_for() -> None:
    assert "admin" not in rendering()
    with_admin = rendering(admin=Endpoint("127.0.0.1", 9901))
    assert with_admin["admin"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}
    }


def test_the_edge_normalises_paths_and_trusts_only_the_peer_address() -> None:
    manager = connection_manager(rendering())
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["use_remote_address"] is True


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Endpoint("", 1), id="empty-host"),
        pytest.param(lambda: Endpoint("h", 65536), id="port-too-big"),
        pytest.param(lambda: Endpoint("h", -1), id="negative-port"),
        pytest.param(lambda: ProjectRoute("v1/", "p"), id="relative-prefix"),
        pytest.param(lambda: ProjectRoute("/v1/", ""), id="empty-project"),
        pytest.param(lambda: ProjectRoute("/v1/", 'a"b'), id="project-not-an-id"),
        pytest.param(lambda: rendering(authz_timeout_s=0), id="zero-timeout"),
    ],
)
def test_nonsense_arguments_are_refused_before_envoy_sees_them(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages are for people
        make()


def test_every_typed_config_carries_its_type_url() -> None:
    config = rendering(project_routes=[MAINNET], admin=LOOPBACK_0)
    typed = list(_typed_configs(config))
    assert len(typed) >= 7
    for value in typed:
        assert value["@type"].startswith("type.googleapis.com/envoy."), value


def test_the_yaml_is_the_rendering_under_a_generated_by_header() -> None:
    kwargs: dict[str, Any] = {
        "listen": LOOPBACK_0,
        "authz": Endpoint("authz", 9001),
        "upstream": Endpoint("node", 8545),
        "project_routes": [MAINNET],
    }
    text = as_yaml(render(**kwargs))
    assert text.startswith("# Generated by `authz-server envoy-config`")
    assert yaml.safe_load(text) == render(**kwargs)
    assert as_yaml(render(**kwargs)) == text


def test_the_checked_in_config_is_the_compose_topology() -> None:
    config = yaml.safe_load(rendered_files()["envoy/envoy.yaml"])
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 10000}
    assert config["admin"]["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": 9901,
    }
    endpoints = {
        name: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        for name, cluster in clusters(config).items()
    }
    assert endpoints["authz"]["address"]["socket_address"] == {
        "address": "authz",
        "port_value": 9001,
    }
    assert endpoints["upstream"]["address"]["socket_address"] == {
        "address": "node",
        "port_value": 8545,
    }
    assert [r["match"] for r in routes(config)] == [PROJECT_PATH_MATCH, {"prefix": "/"}]


def test_make_runs_config_is_all_on_loopback_at_the_demo_ports() -> None:
    config = yaml.safe_load(rendered_files()[LOCAL_CONFIG])
    (listener,) = config["static_resources"]["listeners"]
    sockets = {
        "gate": listener["address"]["socket_address"],
        "admin": config["admin"]["address"]["socket_address"],
    }
    for role, name in (("authz", "authz"), ("node", "upstream")):
        endpoint = clusters(config)[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        sockets[role] = endpoint["endpoint"]["address"]["socket_address"]
    assert sockets == {
        role: {"address": "127.0.0.1", "port_value": port} for role, port in LOCAL_PORTS.items()
    }


def _typed_configs(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in (
                "typed_config",
                "typed_per_filter_config",
                "typed_extension_protocol_options",
            ):
                children = [child] if key == "typed_config" else list(child.values())
                yield from children
            yield from _typed_configs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _typed_configs(child)


# --- what a real Envoy does with it ------------------------------------------------------------


@contextlib.contextmanager
def dead_authz(kind: str) -> Iterator[Endpoint]:
    """An authz address that refuses connections, or accepts them and never answers."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        if kind == "refusing":
            sock.close()  # bound, then released: nothing listens there
        else:
            sock.listen(16)  # the kernel completes handshakes; nobody reads or writes
        yield Endpoint("127.0.0.1", port)
    finally:
        sock.close()


@pytest.fixture
def node() -> Iterator[JsonRpcNode]:
    with JsonRpcNode() as running:
        yield running


def test_envoys_fail_closed_body_speaks_like_a_service_not_ready_yet() -> None:
    body = json.loads(UNAVAILABLE_BODY)
    assert body == {**UNAVAILABLE, "project": "%DYNAMIC_METADATA(authz_server:project):128%"}
    assert UNAVAILABLE["message"] == Reason.NOT_READY.message


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("kind", ["refusing", "silent"])
def test_with_the_authz_service_down_envoy_fails_closed_with_403(
    node: JsonRpcNode, kind: str, transport: str
) -> None:
    with (
        dead_authz(kind) as authz,
        EnvoyProcess(
            render(
                listen=LOOPBACK_0,
                authz=authz,
                upstream=Endpoint("127.0.0.1", node.port),
                admin=LOOPBACK_0,
                project_routes=[MAINNET] if transport == "grpc" else [],
                authz_timeout_s=0.2,
                transport=transport,
            )
        ) as envoy,
    ):
        # The project the service would have named: the route's, else the path's last
        # segment when it is a project id; "" for any other path.
        long_id = "p" * 200
        for path, project in (
            ("/v1/mainnet/x", "demo-mainnet" if transport == "grpc" else "x"),
            ("/eth/some-project", "some-project"),
            ("/eth/Some_Project-2/?q=/a&b=%22", "Some_Project-2"),
            ("/eth/some.project", ""),
            ('/eth/a"b', ""),
            ("/", ""),
            (f"/eth/{long_id}", long_id[:128]),
        ):
            status, headers, body = post(envoy.port, path)
            assert status == 403, envoy.log
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == {**UNAVAILABLE, "project": project}, path
    assert node.requests == []


def http_ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    (_, _, ext_authz, _) = connection_manager(config)["http_filters"]
    typed: dict[str, Any] = ext_authz["typed_config"]
    assert "grpc_service" not in typed
    return typed


def test_the_http_transport_passes_the_token_and_takes_back_the_kid_and_project() -> None:
    typed = http_ext_authz(rendering(transport="http", authz_timeout_s=0.3))
    service = typed["http_service"]
    assert service["server_uri"] == {"uri": "http://authz", "cluster": "authz", "timeout": "0.300s"}
    assert service.get("path_prefix", "") == ""  # the original path, as it came
    assert {"exact": "authorization"} in typed["allowed_headers"]["patterns"]
    response = service["authorization_response"]
    assert response["allowed_upstream_headers"]["patterns"] == [
        {"exact": "x-jwt-kid"},
        {"exact": "x-authz-project"},
        {"prefix": "x-jwt-"},  # projects' claims_to_headers
    ]
    # The client address for IP allowlists: Envoy appends the peer's (use_remote_address).
    assert {"exact": "x-forwarded-for"} in typed["allowed_headers"]["patterns"]
    assert {"exact": "content-type"} in response["allowed_client_headers"]["patterns"]
    assert typed.get("failure_mode_allow", False) is False
    assert typed["transport_api_version"] == "V3"


def test_the_http_transport_speaks_http1_to_the_service_and_closes_idle_connections_first() -> None:
    authz = clusters(rendering(transport="http"))["authz"]
    options = authz["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    # Shorter than the service's own idle timeout (300 s): Envoy closes first.
    assert options["common_http_protocol_options"]["idle_timeout"] == "60s"
    assert "health_checks" not in authz  # grpc.health.v1 is not on the HTTP port
    assert authz["outlier_detection"]["consecutive_5xx"] == 3


def test_the_http_transport_health_checks_readyz_on_each_endpoints_own_port() -> None:
    """/readyz lives on the metrics listener: Envoy's checks go to the port given for each
    endpoint, while its calls keep going to the --http-listen port."""
    authz = clusters(
        rendering(
            transport="http",
            authz=[Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.1", 9003)],
            health_ports=[9090, 9091],
        )
    )["authz"]
    (check,) = authz["health_checks"]
    assert check["http_health_check"] == {"path": "/readyz"}
    assert (check["interval"], check["timeout"], check["unhealthy_threshold"]) == ("1s", "1s", 2)
    (locality,) = authz["load_assignment"]["endpoints"]
    assert [
        (
            e["endpoint"]["address"]["socket_address"]["port_value"],
            e["endpoint"]["health_check_config"],
        )
        for e in locality["lb_endpoints"]
    ] == [(9002, {"port_value": 9090}), (9003, {"port_value": 9091})]


def test_health_ports_must_match_the_endpoints_and_belong_to_the_http_transport() -> None:
    with pytest.raises(ValueError, match="1 health port"):
        rendering(
            transport="http",
            authz=[Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.1", 9003)],
            health_ports=[9090],
        )
    with pytest.raises(ValueError, match="HTTP transport"):
        rendering(health_ports=[9090])


def test_envoy_config_health_port_gives_each_worker_its_own() -> None:
    import subprocess
    import sys

    binary = str(Path(sys.executable).parent / "authz-server")
    result = subprocess.run(
        [
            binary,
            "envoy-config",
            "--transport",
            "http",
            "--authz",
            "127.0.0.1:9002",
            "--workers",
            "2",
            "--health-port",
            "9090",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (locality,) = clusters(yaml.safe_load(result.stdout))["authz"]["load_assignment"]["endpoints"]
    assert [e["endpoint"]["health_check_config"] for e in locality["lb_endpoints"]] == [
        {"port_value": 9090},
        {"port_value": 9091},
    ]


def test_the_http_transport_refuses_per_route_projects_and_unknown_transports() -> None:
    with pytest.raises(ValueError, match="per-route projects"):
        rendering(transport="http", project_routes=[MAINNET])
    with pytest.raises(ValueError, match="transport must be one of"):
        rendering(transport="thrift")


@pytest.fixture
def gate(tmp_path: Path, ec_key: PrivateKey) -> Iterator[tuple[AuthzProcess, str]]:
    """The real authz-server with one ES256 key for the project ``demo-mainnet``."""
    kid = str(uuid.uuid4())
    project_dir = tmp_path / "keys" / MAINNET.project
    project_dir.mkdir(parents=True)
    (project_dir / f"{kid}.pem").write_bytes(public_pem(ec_key))
    with AuthzProcess(tmp_path / "keys") as process:
        yield process, kid


def test_a_denial_reaches_the_client_with_the_services_own_body(
    node: JsonRpcNode, gate: tuple[AuthzProcess, str]
) -> None:
    process, _ = gate
    config = render(
        listen=LOOPBACK_0,
        authz=Endpoint("127.0.0.1", process.port),
        upstream=Endpoint("127.0.0.1", node.port),
        admin=LOOPBACK_0,
        project_routes=[MAINNET],
    )
    with EnvoyProcess(config) as envoy:
        status, headers, body = post(envoy.port, "/v1/mainnet/")
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "code": -32013,
        "message": "missing JWT token",
        "project": "demo-mainnet",
    }
    assert node.requests == []


def test_an_allowed_request_reaches_the_node_with_the_kid_and_without_the_token(
    node: JsonRpcNode, gate: tuple[AuthzProcess, str], ec_key: PrivateKey
) -> None:
    process, kid = gate
    config = render(
        listen=LOOPBACK_0,
        authz=Endpoint("127.0.0.1", process.port),
        upstream=Endpoint("127.0.0.1", node.port),
        admin=LOOPBACK_0,
        project_routes=[MAINNET],
    )
    token = mint(ec_key, kid)
    with EnvoyProcess(config) as envoy:
        status, _, body = post(envoy.port, "/v1/mainnet/", token=token)
    assert status == 200, body
    assert str(json.loads(body)["result"]).startswith("0x")  # the node's block number
    (seen,) = node.requests
    assert seen["x-jwt-kid"] == kid
    assert "authorization" not in seen


def test_several_authz_endpoints_are_balanced_by_least_request() -> None:
    config = render(
        listen=Endpoint("127.0.0.1", 0),
        authz=[Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)],
        upstream=Endpoint("127.0.0.1", 8545),
    )
    authz = next(c for c in config["static_resources"]["clusters"] if c["name"] == "authz")
    assert authz["lb_policy"] == "LEAST_REQUEST"
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in authz["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [9001, 9002]


def test_the_envoy_config_command_prints_a_valid_config_for_the_options_given(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    binary = str(Path(sys.executable).parent / "authz-server")
    out = tmp_path / "envoy.yaml"
    result = subprocess.run(
        [
            binary,
            "envoy-config",
            "--authz",
            "10.0.0.5:9001",
            "--workers",
            "2",
            "--upstream",
            "node:8545",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--route",
            "/v1/mainnet=proj-a",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(out.read_text())
    validate(config)
    assert out.read_text() == as_yaml(
        render(
            listen=Endpoint("127.0.0.1", 0),
            authz=[Endpoint("10.0.0.5", 9001), Endpoint("10.0.0.5", 9002)],
            upstream=Endpoint("node", 8545),
            admin=Endpoint("127.0.0.1", 0),
            project_routes=[ProjectRoute("/v1/mainnet", "proj-a")],
        )
    )
    bad = subprocess.run(
        [binary, "envoy-config", "--route", "no-slash=x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "PREFIX=PROJECT" in bad.stderr


def test_the_envoy_config_command_renders_the_http_transport_on_request() -> None:
    import subprocess
    import sys

    binary = str(Path(sys.executable).parent / "authz-server")
    command = [binary, "envoy-config", "--authz", "127.0.0.1:9101", "--upstream", "node:8545"]
    result = subprocess.run(
        [*command, "--transport", "http"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == as_yaml(
        rendering(
            authz=Endpoint("127.0.0.1", 9101),
            upstream=Endpoint("node", 8545),
            listen=Endpoint("0.0.0.0", 10000),
            admin=Endpoint("127.0.0.1", 9901),
            transport="http",
        )
    )
    routed = subprocess.run(
        [*command, "--transport", "http", "--route", "/v1=p"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert routed.returncode == 2
    assert "per-route projects" in routed.stderr
