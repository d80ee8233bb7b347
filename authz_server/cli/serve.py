"""``serve``, ``health`` and ``envoy-config``: command line → :class:`Settings` → running server.

Every option of ``serve`` can also come from an ``AUTHZ_``-prefixed environment variable
(``--keys-dir`` from ``AUTHZ_KEYS_DIR`` and so on); the command line wins.
Bad configuration exits with status 2 and one line on stderr, for ``serve`` and
``envoy-config`` alike (an ``--output`` that cannot be written too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .._signals import StopSignals
from ..budget import DEFAULT_RATE
from ..cache import DEFAULT_MAX_ENTRIES
from ..config import (
    DEFAULT_LISTEN,
    Endpoint,
    Settings,
    add_option,
    flag,
    host_port,
    non_negative_int,
    positive_int,
    positive_seconds,
    route,
    seconds,
)
from ..logging_setup import LOG_FORMATS, configure_logging
from ..mounts import missing_mount
from ..server import ListenError, running_gate
from ..transports.grpc import GateServer
from ._common import Subcommands, guarded, write_file

__all__ = ["register", "serve"]

log = logging.getLogger("authz_server")


def register(commands: Subcommands) -> None:
    """Add ``serve``, ``health`` and ``envoy-config``."""
    serve_cmd = commands.add_parser(
        "serve",
        help="run the gRPC authorization service",
        description="Run the ext_authz gRPC service (Authorization/Check and grpc.health.v1).",
        epilog="example: authz-server serve --keys-dir ./keys --listen 0.0.0.0:9001",
    )

    def option(name: str, **kwargs: object) -> None:
        add_option(serve_cmd, name, **kwargs)

    serve_cmd.set_defaults(func=_serve_command, parser=serve_cmd)
    option("--keys-dir", required=True, type=Path, help="directory of <project>/<kid>.pem keys")
    option(
        "--require-mount",
        nargs="?",
        const="true",
        default="false",
        type=flag,
        help=(
            "exit with status 2 unless the keys directory, or every project directory in it, "
            "is a mounted volume (so that a volume not mounted yet never opens every project)"
        ),
    )
    option("--listen", default=DEFAULT_LISTEN, type=host_port, help="gRPC HOST:PORT")
    option(
        "--http-listen",
        default=None,
        type=host_port,
        help=(
            "also serve Envoy's HTTP ext_authz (http_service) on HOST:PORT (default: off); "
            "the project is the path's last segment; worker i of --workers uses PORT+i"
        ),
    )
    option(
        "--trusted-proxy-hops",
        default="0",
        type=non_negative_int,
        help=(
            "proxies of yours in front of Envoy (as Envoy's xff_num_trusted_hops); with "
            "any, the client address for project IP allowlists is the X-Forwarded-For "
            "entry that many places left of the one Envoy appends, on both transports"
        ),
    )
    option("--audience-suffix", default="", help="when set, `aud` must end with it")
    option("--leeway", default="0", type=seconds, help="clock skew allowed on exp/nbf, seconds")
    option(
        "--forward-jwt",
        nargs="?",
        const="true",
        default="false",
        type=flag,
        help="keep the Authorization header on allowed requests",
    )
    option(
        "--cors-denials",
        nargs="?",
        const="true",
        default="false",
        type=flag,
        help=(
            "denials carry Access-Control-Allow-Origin for the request's Origin, so browser "
            "pages can read them behind a proxy whose CORS filter runs after ext_authz "
            "(Istio); leave off with envoy-config's configs, whose CORS filter does it"
        ),
    )
    option(
        "--rescan-interval",
        default="1",
        type=positive_seconds,
        help="full rescan of the keys directory at least this often, seconds (more than 0)",
    )
    option(
        "--grace",
        default="5",
        type=seconds,
        help="once stopping, seconds the calls in flight get to finish",
    )
    option(
        "--drain-delay",
        default="5",
        type=seconds,
        help=(
            "after SIGTERM/SIGINT, seconds of answering with health NOT_SERVING before the "
            "stop, so health-checking clients move away (a second signal stops at once)"
        ),
    )
    option(
        "--threads",
        default="16",
        type=positive_int,
        help="deprecated and ignored: the gRPC server is asynchronous, no call holds a thread",
    )
    option(
        "--workers",
        default="1",
        type=positive_int,
        help="serving processes, on ports PORT..PORT+N-1 (list them all in Envoy's cluster)",
    )
    option(
        "--cache-size",
        default=str(DEFAULT_MAX_ENTRIES),
        type=non_negative_int,
        help="verified tokens remembered (0: verify every request)",
    )
    option(
        "--failed-check-budget",
        default=str(DEFAULT_RATE),
        type=seconds,
        help=(
            "seconds per second that failed signature checks may take, per project; past it, "
            "the project's tokens that need a check are denied until it refills (0: no limit)"
        ),
    )
    option(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
    )
    option(
        "--log-format",
        default="text",
        type=str.lower,
        choices=list(LOG_FORMATS),
        help="text lines, or one JSON object per line",
    )
    option(
        "--metrics-listen",
        default=None,
        type=host_port,
        help="Prometheus metrics HOST:PORT (default: off); worker i of --workers uses PORT+i",
    )
    health_cmd = commands.add_parser(
        "health",
        help="ask a running service whether it is serving (exit 0) or not (exit 1)",
        description="Query grpc.health.v1 of a running authz-server; for probes and HEALTHCHECK.",
        epilog="example: authz-server health --address 127.0.0.1:9001",
    )
    health_cmd.add_argument(
        "--address", default="127.0.0.1:9001", type=host_port, help="the service's gRPC HOST:PORT"
    )
    health_cmd.add_argument("--service", default="", help="service name ('' = the server)")
    health_cmd.add_argument("--timeout", default=2.0, type=seconds, help="seconds")
    health_cmd.set_defaults(func=_health_command)
    envoy_cmd = commands.add_parser(
        "envoy-config",
        help="print an Envoy config (ext_authz to this service) as YAML",
        description=(
            "Render an Envoy bootstrap config from typed Envoy API objects: a listener whose "
            "ext_authz filter calls this service over gRPC (HTTP/2, failing closed), then the "
            "router to your JSON-RPC upstream."
        ),
        epilog=(
            "example: authz-server envoy-config --authz authz:9001 --workers 2 "
            "--upstream node:8545 --route /v1/mainnet=2a8428f5a79b09aadff75a745397cf6d2f59d51e"
        ),
    )
    envoy_cmd.add_argument(
        "--listen", default="0.0.0.0:10000", type=host_port, help="Envoy's listener"
    )
    envoy_cmd.add_argument("--authz", default="authz:9001", type=host_port, help="this service")
    envoy_cmd.add_argument(
        "--workers", default=1, type=positive_int, help="the service's --workers (ports PORT..)"
    )
    envoy_cmd.add_argument("--upstream", default="node:8545", type=host_port, help="the node")
    envoy_cmd.add_argument(
        "--admin",
        default="127.0.0.1:9901",
        type=_admin_address,
        help="Envoy admin HOST:PORT, or 'none'",
    )
    envoy_cmd.add_argument(
        "--route",
        action="append",
        default=[],
        type=route,
        metavar="PREFIX=PROJECT",
        help="requests under PREFIX belong to PROJECT (repeatable)",
    )
    envoy_cmd.add_argument(
        "--transport",
        default="grpc",
        choices=["grpc", "http"],
        help=(
            "how Envoy asks: gRPC Check on the service's --listen, or HTTP "
            "ext_authz on its --http-listen (then --authz names that address, and the "
            "project is always the path's last segment)"
        ),
    )
    envoy_cmd.add_argument(
        "--health-port",
        type=positive_int,
        metavar="PORT",
        help=(
            "with --transport http: the service's --metrics-listen port, where Envoy "
            "health-checks /readyz (worker i of --workers: PORT+i); default: no active check"
        ),
    )
    envoy_cmd.add_argument(
        "--authz-timeout", default=0.25, type=seconds, help="ext_authz call timeout, seconds"
    )
    envoy_cmd.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help=(
            "origin whose browser pages may call, as https://app.example.com (repeatable); "
            "default: any origin; 'none' renders no CORS filter"
        ),
    )
    envoy_cmd.add_argument(
        "--output", type=Path, metavar="FILE", help="write here instead of stdout (atomically)"
    )
    envoy_cmd.set_defaults(func=guarded(_envoy_config_command, error_status=2), parser=envoy_cmd)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; return the process exit status."""
    if settings.workers > 1:
        from ..workers import supervise

        return supervise(settings, _serve_one)
    return _serve_one(settings)


def _serve_one(settings: Settings) -> int:
    with StopSignals(_log_signal) as stop:
        try:
            with running_gate(settings) as server:
                stop.wait()
                _drain(server, settings.drain_delay, stop)
        except ListenError as exc:
            print(f"authz-server: error: {exc}", file=sys.stderr)
            return 2
    log.info("stopped")
    return 0


def _log_signal(name: str) -> None:
    log.info("received %s; draining", name, extra={"event": "signal", "signal": name})


def _drain(server: GateServer, delay: float, stop: StopSignals) -> None:
    """Health NOT_SERVING at once, then keep answering for ``delay`` seconds (a second
    signal cuts it short): long enough for Envoy's active health checks (and Kubernetes
    endpoints) to send every new call elsewhere, so that the stop finds none arriving."""
    if delay <= 0 or stop.wait(0, count=2):
        return
    server.begin_drain()
    log.info(
        "health NOT_SERVING; still answering for %gs while clients move away "
        "(signal again to stop now)",
        delay,
        extra={"event": "draining", "drain_delay": delay},
    )
    if stop.wait(delay, count=2):
        log.info("stopping now", extra={"event": "drain_cut_short"})


def _serve_command(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format, with_pid=args.workers > 1)
    keys_dir: Path = args.keys_dir
    if not keys_dir.is_dir():
        what = "is not a directory" if keys_dir.exists() else "does not exist"
        args.parser.error(f"keys directory {keys_dir} {what}")
    if not os.access(keys_dir, os.R_OK | os.X_OK):
        args.parser.error(f"keys directory {keys_dir} is not readable")
    if args.require_mount and (problem := missing_mount(keys_dir)) is not None:
        args.parser.error(problem)
    if args.workers > 1:
        try:
            Endpoint.parse(args.listen).consecutive(args.workers)
            for extra in (args.metrics_listen, args.http_listen):
                if extra is not None:
                    Endpoint.parse(extra).consecutive(args.workers)
        except ValueError as exc:
            args.parser.error(str(exc))
        metrics_listen = args.metrics_listen
        if metrics_listen and args.listen.endswith(":0") and not metrics_listen.endswith(":0"):
            # Every worker's gRPC port is 0 then: nothing tells them apart.
            args.parser.error("--workers with --listen port 0 needs --metrics-listen port 0")
    settings = Settings(
        keys_dir=keys_dir,
        listen=args.listen,
        audience_suffix=args.audience_suffix,
        leeway=args.leeway,
        forward_jwt=args.forward_jwt,
        cors_denials=args.cors_denials,
        rescan_interval=args.rescan_interval,
        threads=args.threads,
        grace=args.grace,
        drain_delay=args.drain_delay,
        log_level=args.log_level,
        cache_size=args.cache_size,
        failed_check_budget=args.failed_check_budget,
        workers=args.workers,
        metrics_listen=args.metrics_listen,
        http_listen=args.http_listen,
        trusted_proxy_hops=args.trusted_proxy_hops,
        log_format=args.log_format,
    )
    return serve(settings)


def _admin_address(text: str) -> str:
    """``--admin``: HOST:PORT, or ``none`` (any case) for no admin listener."""
    return "none" if text.lower() == "none" else host_port(text)


def _envoy_config_command(args: argparse.Namespace) -> int:
    from ..cors import cors_origins
    from ..devtools.envoy_config import ProjectRoute, as_yaml, render

    admin = None if args.admin == "none" else Endpoint.parse(args.admin)
    try:
        text = as_yaml(
            render(
                listen=Endpoint.parse(args.listen),
                authz=Endpoint.parse(args.authz).consecutive(args.workers),
                upstream=Endpoint.parse(args.upstream),
                admin=admin,
                project_routes=[ProjectRoute(prefix, project) for prefix, project in args.route],
                authz_timeout_s=args.authz_timeout,
                transport=args.transport,
                health_ports=(
                    []
                    if args.health_port is None
                    else [args.health_port + i for i in range(args.workers)]
                ),
                cors_origins=cors_origins(args.cors_origin),
            )
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.output is None:
        sys.stdout.write(text)
    else:
        # Envoy watching the file, or a reader at the wrong moment, sees one whole config.
        write_file(args.output, text.encode("utf-8"), mode=0o644)
    return 0


def _health_command(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
