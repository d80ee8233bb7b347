"""The package's public names, pinned: each module's ``__all__`` says what it offers, and a
change to it is a change to this list, made on purpose (as httpx pins its own)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import authz_server

PUBLIC_NAMES = {
    "authz_server": ["__version__"],
    # The decision core.
    "authz_server.verifier": [
        "JSON_RPC_UNAUTHORIZED", "MAX_TOKEN_LENGTH", "Allowed", "Decision", "Denied", "Policy",
        "Reason", "bearer_token", "check_claims", "check_times", "decide", "deny_body",
        "project_id_denial",
    ],
    "authz_server.keys": [
        "MAX_KEY_FILE_BYTES", "MAX_RSA_BITS", "MAX_RSA_EXPONENT", "MIN_RSA_BITS", "Algorithm",
        "KeyRejected", "PublicKey", "VerifyKey", "has_roca_fingerprint", "is_valid_id",
        "parse_public_key",
    ],
    "authz_server.jwk": ["is_jwk", "jwk_to_pem", "public_jwk", "thumbprint"],
    "authz_server.tokens": [
        "PrivateKey", "algorithm_of", "b64url", "generate_private_key", "mint", "public_pem",
        "sign",
    ],
    "authz_server.keystore": [
        "MAX_KEYS_PER_PROJECT", "KeyStore", "ProjectKeys", "Snapshot", "is_candidate",
        "read_key_file", "scan_key_files", "scan_projects",
    ],
    "authz_server.keydir": [
        "LOCK_NAME", "KeyDirError", "KeyRow", "add_key", "edit_settings", "key_rows",
        "lock_settings", "project_names", "remove_key", "require_key_id", "require_project_id",
        "unlock_settings", "write_atomically",
    ],
    "authz_server.cache": ["DEFAULT_MAX_ENTRIES", "MAX_CACHED_TOKEN_LENGTH", "CachingVerifier"],
    "authz_server.budget": ["BURST_SECONDS", "DEFAULT_RATE", "FailedCheckBudget"],
    "authz_server.gate": [
        "AUTHZ_PROJECT_HEADER", "EncodedAnswers", "FORGED_ALIASES", "JWT_KID_HEADER", "Gate",
        "cors_denial_headers", "RequestFacts", "denial_body", "headers_to_remove",
        "project_from_path",
    ],
    "authz_server.cors": [
        "ALLOW_HEADERS", "ALLOW_METHODS", "ANY_ORIGIN", "MAX_AGE_S", "NO_CORS", "Preflight",
        "cors_origins", "is_origin", "preflight_headers",
    ],
    "authz_server.facts": ["RequestFacts", "client_from_forwarded_for"],
    "authz_server.smallfile": ["FileRefused", "read_small_file"],
    "authz_server.settings": [
        "INVALID_SETTINGS", "MAX_SETTINGS_BYTES", "NO_SETTINGS", "RESERVED_HEADERS",
        "SETTINGS_FILE", "ProjectSettings", "SettingsRejected", "client_ip", "parse_duration",
        "parse_settings", "read_settings_file", "render_settings",
    ],
    "authz_server.mounts": ["is_mount_point", "missing_mount", "read_mount_points"],
    # Running it.
    "authz_server.config": [
        "DEFAULT_LISTEN", "THREADS_DEFAULT", "Endpoint", "Settings", "add_option", "env_value",
        "flag", "host_port", "non_negative_int", "positive_int", "positive_seconds", "route",
        "seconds",
    ],
    "authz_server.server": ["LOG_FORMAT", "ListenError", "running_gate"],
    "authz_server.workers": ["supervise", "worker_settings"],
    "authz_server.metrics": [
        "CHECK_DURATION_BUCKETS", "CheckDurations", "CheckMetrics", "MetricsServer",
        "StateCollector", "service_registry",
    ],
    "authz_server.logging_setup": [
        "LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure_logging",
    ],
    "authz_server.logtext": ["printable"],
    "authz_server._signals": ["StopSignals"],
    "authz_server.transports": ["new_loop"],
    "authz_server.transports.grpc": [
        "AUTHZ_PROJECT_HEADER", "JWT_KID_HEADER", "SERVICE_NAME", "AuthorizationService",
        "GateServer", "project_of",
    ],
    "authz_server.transports.http": ["MAX_HEAD_BYTES", "HttpGateServer"],
    # The command line.
    "authz_server.cli": ["build_parser", "main"],
    "authz_server.cli.serve": ["register", "serve"],
    "authz_server.cli.keys": ["register"],
    "authz_server.cli.customer": [
        "DEFAULT_KEY_HOME", "DEFAULT_TOKEN_LIFETIME", "register_keygen", "register_token",
    ],
    "authz_server.cli.check": ["register"],
    "authz_server.cli.project": ["register"],
    # Development tools.
    "authz_server.devtools.demo": [
        "DEMO_PROJECT", "DemoKey", "ensure_demo_key", "envoy_config", "main",
    ],
    "authz_server.devtools.background": ["BackgroundHttpServer"],
    "authz_server.devtools.dapp": ["DappPage"],
    "authz_server.devtools.demo_upstream": ["JsonRpcNode", "main"],
    "authz_server.devtools.envoy_config": [
        "COMPOSE_CONFIG", "COMPOSE_HTTP_CONFIG", "LOCAL_CONFIG", "LOCAL_PORTS", "TRANSPORTS",
        "Endpoint", "ProjectRoute", "local_settings", "main", "as_yaml", "render",
        "rendered_files",
    ],
    "authz_server.devtools.envoy_process": [
        "EnvoyConfigError", "EnvoyProcess", "envoy_binary", "terminate", "validate",
    ],
    "authz_server.devtools.requests": ["check_request"],
}  # fmt: skip

# Packages that only hold others, and private helpers of the command line: nothing in them
# is offered to callers. (``__main__`` modules run something and are not imported.)
NOT_PUBLIC = {
    "authz_server.cli._common",
    "authz_server.cli._format",
    "authz_server.devtools",
}


def _modules() -> list[str]:
    found = ["authz_server"]
    for info in pkgutil.walk_packages(authz_server.__path__, "authz_server."):
        if "._proto" not in info.name and not info.name.endswith("__main__"):
            found.append(info.name)
    return sorted(found)


def test_every_module_is_pinned_or_said_to_be_not_public() -> None:
    assert set(_modules()) - {"authz_server.cli.__main__"} == (set(PUBLIC_NAMES) | NOT_PUBLIC) - {
        "authz_server.cli.__main__"
    }


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_each_module_offers_exactly_its_pinned_names(module: str) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(PUBLIC_NAMES[module])
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.__all__ names {name}, which is not there"
