"""Section i: what sets the gRPC path's floor, and which server options move it.

The trivial always-OK servicer (the gRPC stack alone, no decision) runs in one process per
variant of the server; each variant changes one thing against the server the gate runs:

- ``uvloop`` is ``GateServer`` as it is: grpc.aio on uvloop, ``Check`` a coroutine.
- ``asyncio loop``: the same on asyncio's own event loop.
- ``sync handler``: ``Check`` a plain function, which grpc.aio runs in its thread pool.
- ``thread pool``: ``bench.sync_server.ThreadPoolGate``, the server before grpc.aio.

i1. h2load straight to the gRPC port (8 connections x 8 streams, closed loop), in
    interleaved rounds: requests/s as a ratio to the ``asyncio loop`` variant in the same
    round, and the server's CPU per call.
i2. Through Envoy (``--concurrency 2``, the rendered config of sections b and c), each
    variant behind an Envoy of its own, beside Envoy's native jwt_authn, in the same
    rounds: wrk -c 64 (ratio to jwt_authn), and the p50 at 1,000 requests/s sent two
    ways: by ``h2load --rps`` (bursts of 10 every 10 ms) and paced, one every
    millisecond (``tools.h2load_paced``).

``python -m bench.grpc_floor serve --variant NAME`` serves one variant (used by the
section; logs ``serving on HOST:PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import statistics
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final

import grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.devtools.envoy_config import Endpoint
from authz_server.devtools.envoy_process import EnvoyProcess, validate
from authz_server.transports import grpc as grpc_transport

from . import tools
from .checks import CHECK_METHOD, RPC_BODY, check_request, grpc_frame, jwks_of
from .context import Context
from .envoy_configs import gate_config
from .report import Goal, Section, Table, ms, rate, ratio
from .servers import ServerProcess
from .through_envoy import ENVOY_CONCURRENCY

__all__ = ["VARIANTS", "run"]

VARIANTS: Final = ("asyncio loop", "uvloop", "sync handler", "thread pool")
BASE: Final = "asyncio loop"
NATIVE: Final = "Envoy jwt_authn (native)"
WRK_CONNECTIONS: Final = 64
CONSTANT_RATE: Final = 1000
_GRPC_HEADERS: Final = ("content-type: application/grpc", "te: trailers")


@dataclass
class _Runs:
    direct: list[tuple[float, float]] = field(default_factory=list)  # req/s, CPU µs per call
    wrk: list[tuple[float, float]] = field(default_factory=list)  # req/s, CPU µs per call
    bursts: list[tools.LoadResult] = field(default_factory=list)
    paced: list[tools.LoadResult] = field(default_factory=list)


def _loaded(
    server: ServerProcess | None, load: Callable[[], tools.LoadResult]
) -> tuple[tools.LoadResult, float]:
    """The load's result and the server's CPU µs per request during it."""
    cpu = server.cpu_seconds() if server else 0.0
    result = load()
    used = (server.cpu_seconds() - cpu) if server else float("nan")
    return result, used / max(1, result.requests) * 1e6


def run(ctx: Context, selected: Sequence[str] = ("i",)) -> list[Section]:
    customer = ctx.customer
    token = customer.token("RS256")
    jwks = jwks_of([(customer.rsa, customer.rsa_kid), (customer.ec, customer.ec_kid)])
    check = ctx.path("i-check.grpc")
    check.write_bytes(grpc_frame(check_request(customer.path, token)))
    body = ctx.path("i-rpc.json")
    body.write_text(RPC_BODY)
    script = tools.wrk_post_script(ctx.path("i-post.lua"), body=RPC_BODY, token=token)
    headers = ("content-type: application/json", f"authorization: Bearer {token}")
    rounds = 1 if ctx.quick else 4
    seconds = 2.0 if ctx.quick else max(3.0, ctx.duration / 2)
    runs = {name: _Runs() for name in (*VARIANTS, NATIVE)}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                ServerProcess(
                    name, [sys.executable, "-m", "bench.grpc_floor", "serve", "--variant", name]
                ).start()
            )
            for name in VARIANTS
        }
        urls: dict[str, str] = {}
        for name in (*VARIANTS, NATIVE):
            if name == NATIVE:
                config = gate_config("jwt_authn", jwks=jwks)
            else:
                port = int(servers[name].address.rpartition(":")[2])
                config = gate_config("ext_authz", authz=[Endpoint("127.0.0.1", port)])
            validate(config)
            envoy = stack.enter_context(EnvoyProcess(config, concurrency=ENVOY_CONCURRENCY))
            urls[name] = envoy.url + customer.path
            tools.wrk(urls[name], script, duration=1, connections=WRK_CONNECTIONS)  # warm-up
        for _round in range(rounds):
            for name, server in servers.items():
                result, cpu = _loaded(
                    server,
                    functools.partial(
                        tools.h2load,
                        f"http://{server.address}{CHECK_METHOD}",
                        duration=seconds,
                        data=check,
                        headers=_GRPC_HEADERS,
                    ),
                )
                runs[name].direct.append((result.rate, cpu))
            for name, url in urls.items():
                result, cpu = _loaded(
                    servers.get(name),
                    functools.partial(
                        tools.wrk, url, script, duration=seconds, connections=WRK_CONNECTIONS
                    ),
                )
                runs[name].wrk.append((result.rate, cpu))
                runs[name].bursts.append(
                    tools.h2load(
                        url,
                        duration=seconds,
                        connections=1,
                        streams=64,
                        data=body,
                        headers=headers,
                        rps=CONSTANT_RATE,
                        log_file=ctx.path("i-bursts.tsv"),
                    )
                )
                runs[name].paced.append(
                    tools.h2load_paced(
                        url,
                        rate=CONSTANT_RATE,
                        duration=seconds,
                        script=ctx.path("i-paced.txt"),
                        data=body,
                        headers=headers,
                        log_file=ctx.path("i-paced.tsv"),
                    )
                )
    return [_section(runs, rounds, seconds)]


def _per_round(values: Sequence[float], bases: Sequence[float]) -> str:
    ratios = [ratio(v, b) for v, b in zip(values, bases, strict=True)]
    return f"{min(ratios):.2f} to {max(ratios):.2f}"


def _section(runs: dict[str, _Runs], rounds: int, seconds: float) -> Section:
    section = Section("i", "The gRPC path's floor: server options against each other")
    direct = Table(
        f"i1. trivial servicer, h2load straight to the gRPC port, 8 connections x 8 streams, "
        f"{seconds:g} s per run after 1 s warm-up, median of {rounds} interleaved round(s)",
        ["server", "req/s", f"vs {BASE}", "per round", "CPU µs/call"],
    )
    base = [r for r, _cpu in runs[BASE].direct]
    for name in VARIANTS:
        rates = [r for r, _cpu in runs[name].direct]
        direct.add(
            name,
            rate(statistics.median(rates)),
            f"{ratio(statistics.median(rates), statistics.median(base)):.2f}",
            _per_round(rates, base),
            f"{statistics.median(c for _r, c in runs[name].direct):.0f}",
        )
    section.tables.append(direct)
    envoy = Table(
        f"i2. through Envoy (--concurrency {ENVOY_CONCURRENCY}): wrk -c {WRK_CONNECTIONS} and "
        f"{CONSTANT_RATE:,} requests/s as h2load --rps bursts and paced, {seconds:g} s per "
        f"run, median of {rounds} interleaved round(s); the same RS256 token",
        [
            "case",
            "wrk req/s",
            "vs jwt_authn",
            "per round",
            "server CPU µs/req",
            "--rps p50 / p99 ms",
            "paced req/s",
            "paced p50 / p99 ms",
            "failed",
        ],
    )
    native = [r for r, _cpu in runs[NATIVE].wrk]
    for name in (NATIVE, *VARIANTS):
        each = runs[name]
        rates = [r for r, _cpu in each.wrk]
        cpu = statistics.median(c for _r, c in each.wrk)
        envoy.add(
            name if name == NATIVE else f"ext_authz, trivial servicer on {name}",
            rate(statistics.median(rates)),
            f"{ratio(statistics.median(rates), statistics.median(native)):.2f}",
            _per_round(rates, native),
            "" if name == NATIVE else f"{cpu:.0f}",
            f"{ms(statistics.median(r.p50_ms for r in each.bursts))} / "
            f"{ms(statistics.median(r.p99_ms for r in each.bursts))}",
            rate(statistics.median(r.rate for r in each.paced)),
            f"{ms(statistics.median(r.p50_ms for r in each.paced))} / "
            f"{ms(statistics.median(r.p99_ms for r in each.paced))}",
            sum(r.failures for r in (*each.bursts, *each.paced)),
        )
    section.tables.append(envoy)
    kept = runs["uvloop"]
    section.goals += [
        Goal(
            "i2: trivial servicer on the kept server (uvloop) vs jwt_authn, wrk",
            ratio(statistics.median(r for r, _c in kept.wrk), statistics.median(native)),
            0.35,
            ">=",
        ),
        Goal(
            "i2: p50 at a paced 1,000 req/s, kept server",
            statistics.median(r.p50_ms for r in kept.paced),
            2.0,
            "<=",
            unit=" ms",
        ),
        Goal(
            "i2: p50 at 1,000 req/s in h2load --rps bursts, kept server",
            statistics.median(r.p50_ms for r in kept.bursts),
            2.0,
            "<=",
            unit=" ms",
        ),
    ]
    section.notes += [
        "each variant is the trivial always-OK servicer in a process of its own; the "
        "ext_authz rows share the rendered Envoy config of b and c, each with its own Envoy",
        "h2load --rps starts 10 requests at once every 10 ms (its timer's tick); the paced "
        "run starts one every millisecond: a server that answers one call at a time makes "
        "the last of a burst wait for the nine before it",
        "load generators, Envoy and the servers share the machine's cores: 'CPU µs' is the "
        "server process's CPU time per request answered",
    ]
    return section


# -- the variants' server -----------------------------------------------------------------


def _sync_handler(
    service: grpc_transport.AuthorizationService,
) -> grpc.GenericRpcHandler[external_auth_pb2.CheckRequest, bytes]:
    return service.handler()


def serve(variant: str) -> int:
    from .sync_server import ThreadPoolGate
    from .trivial_server import TrivialService

    # Each variant changes one of GateServer's choices; the names are the module's own.
    if variant == "asyncio loop":
        grpc_transport._new_loop = asyncio.new_event_loop
    elif variant == "sync handler":
        grpc_transport._check_handler = _sync_handler
    server: grpc_transport.GateServer | ThreadPoolGate = (
        ThreadPoolGate(TrivialService(), "127.0.0.1:0")
        if variant == "thread pool"
        else grpc_transport.GateServer(TrivialService(), "127.0.0.1:0")
    )
    server.start()
    print(f"serving on {server.address}: {variant}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _n, _f: stop.set())
    while not stop.wait(0.2):
        pass
    server.stop(1.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="serve one variant of the trivial servicer")
    serving.add_argument("--variant", choices=VARIANTS, required=True)
    args = parser.parse_args(argv)
    return serve(args.variant)


if __name__ == "__main__":
    sys.exit(main())
