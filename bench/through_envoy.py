"""Sections b and c: requests through a real Envoy, one config per case, the same load.

b. wrk (HTTP/1.1, a fixed number of connections, closed loop) POSTs a JSON-RPC body with
   the same RS256 token to each config: requests/s, p50, p99 and the ratio to Envoy's
   native jwt_authn filter.
c. h2load at a constant rate (``--rps``, one HTTP/2 connection, up to 64 requests in
   flight, so a slow answer does not hold back the next request): p50 and p99, and what
   each case adds to the no-authorization latency. ``--rps`` sends its requests in bursts
   (10 every 10 ms at 1,000/s), so the same rate is also measured paced, one request
   every millisecond (``tools.h2load_paced``): the latency of a call that finds the
   server idle, against that of the tenth of a burst.

Every config answers with Envoy's ``direct_response`` (see ``envoy_configs``), so the
figures are those of the authorization step, not of an upstream; one extra row in b runs
the no-authorization config in front of the demo JSON-RPC node to show why. Another runs
ext_authz against the trivial always-OK servicer: what the gRPC stack alone costs.

All cases are started side by side (each with its own Envoy and server, idle until its
turn) and loaded in interleaved rounds, medians reported, so that the machine's speed
drift hits every case alike.
"""

from __future__ import annotations

import functools
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final

from authz_server.devtools.envoy_config import Endpoint
from authz_server.devtools.envoy_process import EnvoyProcess, validate

from . import procfs, tools
from .checks import RPC_BODY, jwks_of
from .context import Context
from .envoy_configs import gate_config
from .report import Goal, Section, Table, ms, rate, ratio
from .servers import ServerProcess, start_authz, start_node, start_trivial

__all__ = ["ENVOY_CONCURRENCY", "run"]

# Envoy's default is one worker thread per core; this machine's cores are shared with
# the load generator and the authorization service, whatever the setting.
ENVOY_CONCURRENCY: Final = 2
WRK_CONNECTIONS: Final = 64
WRK_THREADS: Final = 2
CONSTANT_RATE: Final = 1000


@dataclass
class _Case:
    label: str
    mode: str
    workers: int = 0  # authz-server processes; 0: no authz-server
    trivial: bool = False  # the always-OK servicer instead of authz-server
    cache_size: int | None = None
    upstream_node: bool = False
    in_c: bool = True


@dataclass
class _Measured:
    case: _Case
    b: tools.LoadResult | None = None
    c: tools.LoadResult | None = None
    paced: tools.LoadResult | None = None
    envoy_cores: float = float("nan")
    authz_cores: float = float("nan")
    worker_split: str = ""


def _post(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=RPC_BODY.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _sanity(url: str, case: _Case, token: str) -> None:
    """The config does what its label says, before any figure is taken from it."""
    status, body = _post(url, token)
    if status != 200 or '"result"' not in body:
        raise RuntimeError(f"{case.label}: a valid token got {status} {body[:200]}")
    if case.mode != "noauth" and not case.trivial:
        status, body = _post(url, None)
        if status not in (401, 403):
            raise RuntimeError(f"{case.label}: no token got {status}, expected a denial")


def _cpu_during(
    action: Callable[[], tools.LoadResult], envoy_pid: int, authz: ServerProcess | None
) -> tuple[tools.LoadResult, float, float, list[float]]:
    """The result, Envoy's and the authz tree's cores, and each authz process's cores."""
    authz_pids = authz.tree() if authz is not None else []
    envoy0 = procfs.cpu_seconds([envoy_pid])
    each0 = [procfs.cpu_seconds([pid]) for pid in authz_pids]
    began = time.perf_counter()
    result = action()
    wall = time.perf_counter() - began
    each = [
        (procfs.cpu_seconds([pid]) - c0) / wall for pid, c0 in zip(authz_pids, each0, strict=True)
    ]
    envoy = (procfs.cpu_seconds([envoy_pid]) - envoy0) / wall
    return result, envoy, sum(each) if authz_pids else float("nan"), each


def _cases(ctx: Context) -> list[_Case]:
    cases = [_Case("no authorization", "noauth")]
    if not ctx.quick:  # shows why the configs answer by themselves; not needed every time
        cases.append(
            _Case(
                "no authorization, demo JSON-RPC node upstream",
                "noauth",
                upstream_node=True,
                in_c=False,
            )
        )
    cases += [
        _Case("Envoy jwt_authn (native, RS256 verified per request)", "jwt_authn"),
        _Case(
            "ext_authz to the trivial always-OK servicer (same gRPC stack)",
            "ext_authz",
            workers=1,
            trivial=True,
        ),
        _Case("authz-server, 1 process (same token: cache hits)", "ext_authz", workers=1),
    ]
    if ctx.has_cache and not ctx.quick:
        cases.append(
            _Case(
                "authz-server, 1 process, --cache-size 0 (verified per request)",
                "ext_authz",
                workers=1,
                cache_size=0,
            )
        )
    for workers in ctx.worker_counts[1:]:
        cases.append(
            _Case(f"authz-server, --workers {workers} (same token)", "ext_authz", workers=workers)
        )
    return cases


@dataclass
class _Running:
    case: _Case
    url: str
    envoy_pid: int
    authz: ServerProcess | None
    b_runs: list[tuple[tools.LoadResult, float, float, list[float]]] = field(default_factory=list)
    c_runs: list[tools.LoadResult] = field(default_factory=list)
    paced_runs: list[tools.LoadResult] = field(default_factory=list)


def _start(
    stack: ExitStack, ctx: Context, case: _Case, jwks: str, token: str, notes: list[str]
) -> _Running | None:
    """The case's servers and Envoy, checked; None when its --workers server cannot start."""
    authz: ServerProcess | None = None
    endpoints: list[Endpoint] = []
    if case.workers:
        try:
            authz = stack.enter_context(
                start_trivial(workers=case.workers)
                if case.trivial
                else start_authz(
                    ctx.customer.keys_dir, workers=case.workers, cache_size=case.cache_size
                )
            )
        except RuntimeError as exc:
            if case.workers == 1:
                raise
            notes.append(f"{case.label}: not measured ({str(exc).splitlines()[0]})")
            return None
        endpoints = [
            Endpoint("127.0.0.1", int(address.rpartition(":")[2])) for address in authz.addresses
        ]
    upstream = None
    if case.upstream_node:
        node = stack.enter_context(start_node())
        upstream = Endpoint("127.0.0.1", int(node.address.rpartition(":")[2]))
    config = gate_config(case.mode, authz=endpoints, upstream=upstream, jwks=jwks)
    validate(config)
    envoy = stack.enter_context(EnvoyProcess(config, concurrency=ENVOY_CONCURRENCY))
    assert envoy.process is not None
    url = envoy.url + ctx.customer.path
    _sanity(url, case, token)
    return _Running(case, url, envoy.process.pid, authz)


def run(ctx: Context, selected: Sequence[str] = ("b", "c")) -> list[Section]:
    """Start every case side by side (idle until measured), then load them in turns."""
    do_b, do_c = "b" in selected, "c" in selected
    customer = ctx.customer
    token = customer.token("RS256")
    jwks = jwks_of([(customer.rsa, customer.rsa_kid), (customer.ec, customer.ec_kid)])
    script = tools.wrk_post_script(ctx.path("post.lua"), body=RPC_BODY, token=token)
    body = ctx.path("rpc.json")
    body.write_text(RPC_BODY)
    notes: list[str] = []
    rounds = 1 if ctx.quick else 2
    seconds = ctx.duration / rounds
    with ExitStack() as stack:
        running = [
            started
            for case in _cases(ctx)
            if (do_b or case.in_c)
            and (started := _start(stack, ctx, case, jwks, token, notes)) is not None
        ]
        if do_b:
            for each in running:  # a short warm-up, not measured
                tools.wrk(each.url, script, duration=1, connections=WRK_CONNECTIONS)
            for _round in range(rounds):
                for each in running:
                    each.b_runs.append(
                        _cpu_during(
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
                    )
        if do_c:
            for _round in range(rounds):
                for each in running:
                    if not each.case.in_c:
                        continue
                    each.c_runs.append(
                        tools.h2load(
                            each.url,
                            duration=seconds,
                            warmup=1.0,
                            connections=1,
                            streams=64,
                            data=body,
                            headers=(
                                "content-type: application/json",
                                f"authorization: Bearer {token}",
                            ),
                            rps=CONSTANT_RATE,
                            log_file=ctx.path("h2load-c.tsv"),
                        )
                    )
                    each.paced_runs.append(
                        tools.h2load_paced(
                            each.url,
                            rate=CONSTANT_RATE,
                            duration=seconds,
                            script=ctx.path("paced-c.txt"),
                            data=body,
                            headers=(
                                "content-type: application/json",
                                f"authorization: Bearer {token}",
                            ),
                            log_file=ctx.path("h2load-paced.tsv"),
                        )
                    )
    measured = []
    for each in running:
        result = _Measured(each.case)
        if each.b_runs:
            result.b = tools.median_of([r[0] for r in each.b_runs])
            result.envoy_cores = statistics.median(r[1] for r in each.b_runs)
            result.authz_cores = statistics.median(r[2] for r in each.b_runs)
            split = each.b_runs[-1][3]
            if len(split) > 1:  # supervisor first, then the workers
                result.worker_split = " / ".join(f"{c:.2f}" for c in split)
        if each.c_runs:
            result.c = tools.median_of(each.c_runs)
        if each.paced_runs:
            result.paced = tools.median_of(each.paced_runs)
        measured.append(result)
    sections = []
    if do_b:
        sections.append(_section_b(ctx, measured, notes, rounds))
    if do_c:
        sections.append(_section_c(ctx, measured, notes if not do_b else [], rounds))
    return sections


def _section_b(ctx: Context, measured: list[_Measured], notes: list[str], rounds: int) -> Section:
    section = Section(
        "b", "End to end through Envoy: requests/s against the native jwt_authn filter"
    )
    table = Table(
        f"b. wrk -t {WRK_THREADS} -c {WRK_CONNECTIONS} --latency, {ctx.duration / rounds:g} s "
        f"per run, median of {rounds} interleaved round(s) after a 1 s warm-up; POST with the "
        f"same RS256 token; Envoy --concurrency {ENVOY_CONCURRENCY}",
        [
            "case",
            "req/s",
            "vs jwt_authn",
            "p50 ms",
            "p99 ms",
            "Envoy cores",
            "authz cores",
            "failed",
        ],
    )
    native = next(
        (m.b.rate for m in measured if m.case.mode == "jwt_authn" and m.b is not None),
        float("nan"),
    )
    for m in measured:
        if m.b is None:
            continue
        table.add(
            m.case.label,
            rate(m.b.rate),
            f"{ratio(m.b.rate, native):.2f}",
            ms(m.b.p50_ms),
            ms(m.b.p99_ms),
            f"{m.envoy_cores:.2f}",
            "" if m.case.workers == 0 else f"{m.authz_cores:.2f}",
            m.b.failures,
        )
        if m.case.mode == "ext_authz" and m.case.cache_size is None and not m.case.trivial:
            section.goals.append(
                Goal(f"b: {m.case.label} vs jwt_authn", ratio(m.b.rate, native), 0.35, ">=")
            )
        if m.worker_split:
            section.notes.append(
                f"{m.case.label}: CPU cores per process (supervisor first): {m.worker_split}"
            )
    section.tables.append(table)
    trivial = next((m.b for m in measured if m.case.trivial and m.b is not None), None)
    ours = next(
        (
            m.b
            for m in measured
            if m.case.mode == "ext_authz"
            and not m.case.trivial
            and m.case.workers == 1
            and m.case.cache_size is None
            and m.b is not None
        ),
        None,
    )
    if trivial is not None and ours is not None:
        section.notes.insert(
            0,
            f"reading: a servicer that does nothing, on the same gRPC stack, reaches "
            f"{ratio(trivial.rate, native):.2f} of jwt_authn here; authz-server (1 process, "
            f"cached token) reaches {ratio(ours.rate, trivial.rate):.2f} of that servicer. "
            "The stack, not the decision, sets the ceiling of b",
        )
    section.notes += notes
    section.notes += [
        "every config answers with Envoy's direct_response after a buffer filter (a fixed "
        "JSON-RPC result; no upstream), so the difference between rows is the authorization "
        "step"
        + (
            "; the 'demo JSON-RPC node upstream' row shows what the Python demo node would "
            "cap instead"
            if any(m.case.upstream_node for m in measured)
            else ""
        ),
        "the three configs share the gate's rendered HTTP connection manager; jwt_authn has "
        "the same two public keys inline as a JWKS, forward: false, and its requirement "
        "on the route; the JWT cache of jwt_authn is off (its default)",
        f"wrk, Envoy ({ENVOY_CONCURRENCY} worker threads) and authz-server share the "
        f"machine's {ctx.cores} cores: the authz rows pay for the extra process in the "
        "same CPU budget ('cores' columns: CPU time per second of the run)",
        "ext_authz talks HTTP/2 to authz-server: one connection per Envoy worker thread "
        "and authz endpoint",
        "the 'trivial always-OK servicer' row is the ceiling of any servicer on this gRPC "
        "stack (bench/trivial_server.py): the gap between it and jwt_authn is the stack's, "
        "the gap between it and authz-server is the decision's",
    ]
    return section


def _section_c(ctx: Context, measured: list[_Measured], notes: list[str], rounds: int) -> Section:
    section = Section(
        "c", f"Added latency at a constant {CONSTANT_RATE:,} requests/s through Envoy"
    )
    table = Table(
        f"c. h2load --rps {CONSTANT_RATE} over one HTTP/2 connection (up to 64 in flight), "
        f"{ctx.duration / rounds:g} s per run after 1 s warm-up, median of {rounds} interleaved "
        "round(s); latency from h2load's per-request log",
        ["case", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "failed"],
    )
    base = next((m.c for m in measured if m.case.mode == "noauth" and m.c is not None), None)
    for m in measured:
        if m.c is None:
            continue
        added50 = m.c.p50_ms - base.p50_ms if base else float("nan")
        added99 = m.c.p99_ms - base.p99_ms if base else float("nan")
        table.add(
            m.case.label,
            rate(m.c.rate),
            ms(m.c.p50_ms),
            ms(m.c.p99_ms),
            "" if m.case.mode == "noauth" else ms(added50),
            "" if m.case.mode == "noauth" else ms(added99),
            m.c.failures,
        )
        if m.case.mode == "ext_authz" and not m.case.trivial:
            section.goals.append(
                Goal(f"c: added p99, {m.case.label}", added99, 2.0, "<=", unit=" ms")
            )
    section.tables.append(table)
    paced = Table(
        f"c (paced). The same rate one request at a time, every {1000 / CONSTANT_RATE:g} ms "
        f"(h2load timing script), {ctx.duration / rounds:g} s per run after a pilot, in the "
        "same rounds",
        ["case", "req/s", "p50 ms", "p99 ms", "p50 vs --rps", "added p50 ms", "failed"],
    )
    paced_base = next(
        (m.paced for m in measured if m.case.mode == "noauth" and m.paced is not None), None
    )
    for m in measured:
        if m.paced is None:
            continue
        added = m.paced.p50_ms - paced_base.p50_ms if paced_base else float("nan")
        paced.add(
            m.case.label,
            rate(m.paced.rate),
            ms(m.paced.p50_ms),
            ms(m.paced.p99_ms),
            f"{ratio(m.paced.p50_ms, m.c.p50_ms):.2f}" if m.c else "",
            "" if m.case.mode == "noauth" else ms(added),
            m.paced.failures,
        )
        if m.case.mode == "ext_authz" and not m.case.trivial and m.case.workers == 1:
            section.goals.append(
                Goal(f"c: p50 paced, {m.case.label}", m.paced.p50_ms, 2.0, "<=", unit=" ms")
            )
    if paced.rows:
        section.tables.append(paced)
    trivial_c = next((m.c for m in measured if m.case.trivial and m.c is not None), None)
    if trivial_c is not None and base is not None:
        section.notes.insert(
            0,
            f"reading: the trivial always-OK servicer alone adds "
            f"{trivial_c.p50_ms - base.p50_ms:.2f} ms at p50 and "
            f"{trivial_c.p99_ms - base.p99_ms:.2f} ms at p99: that much of every ext_authz row "
            "is the gRPC stack's, whatever the service decides",
        )
    section.notes += notes
    section.notes += [
        "open loop up to 64 requests in flight: h2load starts requests on its timer, "
        "whether or not earlier ones have been answered; latency is from each request's "
        "start to the end of its response",
        "same configs, Envoy settings and token as b; the trivial servicer's row is what "
        "the gRPC stack alone adds",
    ]
    return section
