"""Section h: the HTTP ext_authz transport against native jwt_authn and the gRPC transport.

Every case is its own Envoy (the configs of sections b and c: ``direct_response`` after a
buffer filter, Envoy --concurrency 2) and its own authz-server, all started side by side
and loaded in interleaved rounds, medians reported:

h1. wrk (HTTP/1.1, 64 connections, closed loop) POSTs the same RS256 token: requests/s
    and the ratio to jwt_authn, for the HTTP transport (``serve --http-listen``, Envoy's
    ``http_service``) and the gRPC one, with the token cached and with ``--cache-size 0``
    (the signature verified on every request; the stand-in for distinct tokens that
    section a uses too).
h2. the paced h2load of section c (one request a millisecond, 1,000 req/s, one HTTP/2
    connection): p50, p99 and p999 of HTTP, jwt_authn and gRPC.
h3. CPU per request: the authz-server process tree's CPU seconds (supervisor and
    workers, from /proc) during the h1 runs, over the requests answered; 1 process and
    ``--workers 2`` (each worker serves HTTP on a port of its own; Envoy lists them all).
h4. the stalled-client guarantee of both listeners, side by side: h2's paced load
    through Envoy while 256 stalled clients hold the authz-server's own port (HTTP: 256
    connections that send half a request head, then nothing; gRPC: 256 Check streams
    opened over 8 HTTP/2 connections and never finished), against the same load
    without them.
"""

from __future__ import annotations

import functools
import re
import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final

from authz_server.devtools.envoy_config import Endpoint
from authz_server.devtools.envoy_process import EnvoyProcess, validate
from tests.half_open import HalfOpenConnections
from tests.raw_http2 import StalledStreams

from . import tools
from .checks import RPC_BODY, jwks_of
from .context import Context
from .envoy_configs import gate_config
from .report import Goal, Section, Table, ms, rate, ratio
from .servers import ServerProcess, serve_options
from .through_envoy import ENVOY_CONCURRENCY, WRK_CONNECTIONS, WRK_THREADS, _cpu_during, _post

__all__ = ["run"]

PACED_RATE: Final = 1000
STALLED: Final = 256
_STALLED_GRPC_CONNECTIONS: Final = 8  # 32 unfinished Check streams on each
_HTTP_SERVING: Final = re.compile(r"HTTP ext_authz on (\S+):(\d+)")


@dataclass
class _Case:
    label: str
    mode: str  # jwt_authn or ext_authz
    transport: str = "grpc"
    workers: int = 1
    cache_size: int | None = None
    paced: bool = False  # also in h2


@dataclass
class _Running:
    case: _Case
    url: str
    envoy_pid: int
    authz: ServerProcess | None
    wrk: list[tuple[tools.LoadResult, float, float, float]] = field(default_factory=list)
    paced: list[tools.LoadResult] = field(default_factory=list)
    stalled: list[tools.LoadResult] = field(default_factory=list)
    held_to_the_end: list[int] = field(default_factory=list)


def _cases(ctx: Context) -> list[_Case]:
    cases = [_Case("Envoy jwt_authn (native)", "jwt_authn", workers=0, paced=True)]
    for transport in ("http", "grpc"):
        cases.append(_Case(f"{transport}, 1 process", "ext_authz", transport, paced=True))
        if ctx.has_cache:
            cases.append(
                _Case(f"{transport}, 1 process, --cache-size 0", "ext_authz", transport, 1, 0)
            )
        for workers in ctx.worker_counts[1:]:
            cases.append(
                _Case(f"{transport}, --workers {workers}", "ext_authz", transport, workers)
            )
    return cases


def _start_server(ctx: Context, case: _Case) -> ServerProcess:
    command = [sys.executable, "-m", "authz_server.cli", "serve"]
    command += ["--keys-dir", str(ctx.customer.keys_dir), "--listen", "127.0.0.1:0"]
    ready = None
    if case.transport == "http":
        command += ["--http-listen", "127.0.0.1:0"]
        ready = _HTTP_SERVING
    if case.workers > 1:
        command += ["--workers", str(case.workers)]
    if case.cache_size is not None:
        command += ["--cache-size", str(case.cache_size)]
    if "--drain-delay" in serve_options():
        command += ["--drain-delay", "0"]
    server = ServerProcess(f"authz-server ({case.label})", command, processes=case.workers)
    if ready is not None:
        server.ready = ready
    return server.start()


def _start(stack: ExitStack, ctx: Context, case: _Case, jwks: str, token: str) -> _Running:
    authz = None
    endpoints: list[Endpoint] = []
    if case.mode == "ext_authz":
        authz = stack.enter_context(_start_server(ctx, case))
        endpoints = [Endpoint("127.0.0.1", int(a.rpartition(":")[2])) for a in authz.addresses]
    config = gate_config(case.mode, authz=endpoints, jwks=jwks, transport=case.transport)
    validate(config)
    envoy = stack.enter_context(EnvoyProcess(config, concurrency=ENVOY_CONCURRENCY))
    assert envoy.process is not None
    url = envoy.url + ctx.customer.path
    status, body = _post(url, token)
    if status != 200 or '"result"' not in body:
        raise RuntimeError(f"{case.label}: a valid token got {status} {body[:200]}")
    status, body = _post(url, None)
    if status not in (401, 403):
        raise RuntimeError(f"{case.label}: no token got {status}, expected a denial")
    return _Running(case, url, envoy.process.pid, authz)


def _under_stalled_clients(each: _Running, paced: functools.partial[tools.LoadResult]) -> None:
    """h4: ``paced`` through Envoy while the authz-server's own port is held by stalled
    clients: half-open HTTP connections (HTTP transport) or unfinished Check streams
    (gRPC), 256 of them; how many were still held when the load ended."""
    assert each.authz is not None
    host, _, port = each.authz.address.rpartition(":")
    if each.case.transport == "http":
        with HalfOpenConnections(host, int(port), STALLED) as half_open:
            each.stalled.append(paced(each.url))
            each.held_to_the_end.append(half_open.still_open())
    else:
        per_connection = STALLED // _STALLED_GRPC_CONNECTIONS
        with StalledStreams(
            host, int(port), connections=_STALLED_GRPC_CONNECTIONS, streams=per_connection
        ) as streams:
            if not streams.held():
                raise RuntimeError(f"{each.case.label}: the stalled streams were not all held")
            each.stalled.append(paced(each.url))
            each.held_to_the_end.append(streams.open_streams if streams.held() else 0)


def run(ctx: Context, selected: Sequence[str] = ("h",)) -> list[Section]:
    del selected
    token = ctx.customer.token("RS256")
    customer = ctx.customer
    jwks = jwks_of([(customer.rsa, customer.rsa_kid), (customer.ec, customer.ec_kid)])
    script = tools.wrk_post_script(ctx.path("post-h.lua"), body=RPC_BODY, token=token)
    body = ctx.path("rpc-h.json")
    body.write_text(RPC_BODY)
    headers = ("content-type: application/json", f"authorization: Bearer {token}")
    rounds = 1 if ctx.quick else 2
    seconds = ctx.duration / rounds
    paced = functools.partial(
        tools.h2load_paced,
        rate=PACED_RATE,
        duration=seconds,
        script=ctx.path("paced-h.txt"),
        data=body,
        headers=headers,
        log_file=ctx.path("paced-h.tsv"),
    )
    with ExitStack() as stack:
        running = [_start(stack, ctx, case, jwks, token) for case in _cases(ctx)]
        for each in running:
            tools.wrk(each.url, script, duration=1, connections=WRK_CONNECTIONS)
        for _round in range(rounds):
            for each in running:
                result, envoy, authz, _split = _cpu_during(
                    functools.partial(
                        tools.wrk,
                        each.url,
                        script,
                        duration=seconds,
                        connections=WRK_CONNECTIONS,
                        threads=WRK_THREADS,
                    ),
                    each.envoy_pid,
                    each.authz,
                )
                each.wrk.append((result, authz, result.rate, envoy))
            for each in running:
                if each.case.paced:
                    each.paced.append(paced(each.url))
            for each in running:
                if each.case.paced and each.authz is not None:
                    _under_stalled_clients(each, paced)
    return [_section(ctx, running, rounds, seconds)]


def _section(ctx: Context, running: list[_Running], rounds: int, seconds: float) -> Section:
    section = Section("h", "The HTTP ext_authz transport through Envoy, against jwt_authn and gRPC")
    wrk_table = Table(
        f"h1/h3. wrk -t {WRK_THREADS} -c {WRK_CONNECTIONS}, {seconds:g} s per run, median of "
        f"{rounds} interleaved round(s) after a 1 s warm-up; POST, same RS256 token; Envoy "
        f"--concurrency {ENVOY_CONCURRENCY}, direct_response",
        [
            "case",
            "req/s",
            "vs jwt_authn",
            "p99 ms",
            "Envoy cores",
            "Envoy CPU µs/req",
            "authz cores",
            "authz CPU µs/req",
            "failed",
        ],
    )
    medians = {id(r): tools.median_of([w[0] for w in r.wrk]) for r in running}
    native = next(medians[id(r)].rate for r in running if r.case.mode == "jwt_authn")
    by_label: dict[str, float] = {}
    for each in running:
        m = medians[id(each)]
        cores = statistics.median(w[1] for w in each.wrk) if each.authz else float("nan")
        per_request = statistics.median(w[1] / w[2] * 1e6 for w in each.wrk if w[2] > 0)
        envoy_cores = statistics.median(w[3] for w in each.wrk)
        envoy_per_request = statistics.median(w[3] / w[2] * 1e6 for w in each.wrk if w[2] > 0)
        by_label[each.case.label] = m.rate
        wrk_table.add(
            each.case.label,
            rate(m.rate),
            f"{ratio(m.rate, native):.2f}",
            ms(m.p99_ms),
            f"{envoy_cores:.2f}",
            f"{envoy_per_request:.0f}",
            "" if each.authz is None else f"{cores:.2f}",
            "" if each.authz is None else f"{per_request:.0f}",
            m.failures,
        )
    section.tables.append(wrk_table)
    http_cached = by_label.get("http, 1 process", float("nan"))
    http_verified = by_label.get("http, 1 process, --cache-size 0", float("nan"))
    section.goals.append(
        Goal("h1: HTTP, cached token, vs jwt_authn", ratio(http_cached, native), 0.7, ">=")
    )
    if ctx.has_cache:
        section.goals.append(
            Goal(
                "h1: HTTP, verified per request (--cache-size 0), vs jwt_authn",
                ratio(http_verified, native),
                0.5,
                ">=",
            )
        )
    section.notes.append(
        f"h1: HTTP against gRPC, 1 process, cached token: "
        f"{ratio(http_cached, by_label.get('grpc, 1 process', float('nan'))):.2f}x the req/s"
    )
    paced_table = Table(
        f"h2. paced h2load, {PACED_RATE:,} req/s, a request a millisecond, one HTTP/2 connection, "
        f"{seconds:g} s per run, median of {rounds} round(s); h4: the same with {STALLED} "
        "stalled clients held on the authz-server's port (HTTP: half-open connections; "
        "gRPC: unfinished Check streams over 8 connections)",
        ["case", "achieved req/s", "p50 ms", "p99 ms", "p999 ms", "failed"],
    )
    jwt_p99 = float("nan")
    http_p99 = float("nan")
    for each in running:
        for label, runs in (
            (each.case.label, each.paced),
            (f"{each.case.label}, {STALLED} stalled clients held", each.stalled),
        ):
            if not runs:
                continue
            m = tools.median_of(runs)
            paced_table.add(
                label, rate(m.rate), ms(m.p50_ms), ms(m.p99_ms), ms(m.p999_ms), m.failures
            )
            if runs is each.paced and each.case.mode == "jwt_authn":
                jwt_p99 = m.p99_ms
            elif runs is each.paced and each.case.transport == "http":
                http_p99 = m.p99_ms
    section.tables.append(paced_table)
    for each in running:
        if each.held_to_the_end:
            held = " / ".join(str(n) for n in each.held_to_the_end)
            section.notes.append(
                f"h4, {each.case.label}: of the {STALLED} stalled clients, {held} (per round) "
                "were still held when the load ended (the HTTP listener closes a request not "
                "complete within 10 s; the gRPC server keeps a stream until its keepalive or "
                "age limits)"
            )
    section.goals.append(
        Goal("h2: HTTP p99 minus jwt_authn p99 at 1,000 req/s", http_p99 - jwt_p99, 1.5, "<=", "ms")
    )
    section.notes.append(
        f"h2/h4 runs of {PACED_RATE:,} req/s start one request every millisecond; "
        "h4's stalled clients go straight to the authz-server's own port, not through Envoy",
    )
    section.notes.append(
        "h3: authz CPU µs/req is the authz-server tree's CPU (supervisor and workers) over "
        "the requests wrk completed in the same run; Envoy's own CPU is not in it"
    )
    return section
