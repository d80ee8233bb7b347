"""Section g: the asyncio gRPC server against the thread-pool server it replaced.

The gate serves gRPC with grpc.aio on an event-loop thread, where a call waiting for its
request costs a coroutine; it used to serve with ``grpc.server`` and 16 worker threads,
where such a call held a thread, and 16 stalled calls stopped everything. The old server
is ``bench.sync_server.ThreadPoolGate``, run behind the same ``running_gate`` (key store,
watcher, metrics) and the same CLI, so that only the gRPC server differs:

g1. h2load straight to the gRPC port (as in a1), every case on both servers, in interleaved
    rounds, medians reported: what the asyncio server costs in throughput and CPU.
g2. wrk through Envoy (as in b), ext_authz to one server or the other.
g3. h2load at a constant 1,000 requests/s through Envoy (as in c): the latency at a load
    both servers carry, in ``--rps`` bursts and paced (``tools.h2load_paced``).
g4. The wrk run of g2 again, in the same rounds, while ``bench.stall`` holds 256 stalled
    Check calls (8 HTTP/2 connections x 32 calls that never send their request) on the gRPC
    port. After each run, with the calls still held, one direct Check with a 1 s deadline
    shows whether the server itself still answers.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from authz_server.devtools.envoy_config import Endpoint
from authz_server.devtools.envoy_process import EnvoyProcess, terminate

from . import tools
from .checks import CHECK_METHOD, RPC_BODY, check_request, grpc_frame
from .context import Context
from .envoy_configs import gate_config
from .report import Goal, Section, Table, ms, rate, ratio
from .servers import ServerProcess, check_once, start_authz, start_trivial
from .through_envoy import ENVOY_CONCURRENCY

__all__ = ["run"]

STACKS: Final = ("thread pool", "asyncio")
_GRPC_HEADERS: Final = ("content-type: application/grpc", "te: trailers")
WRK_CONNECTIONS: Final = 64
STALL_CONNECTIONS: Final = 8
STALL_CALLS: Final = 32  # per connection: 256 in all
CONSTANT_RATE: Final = 1000


@dataclass
class _Run:
    rate: float
    p50_ms: float
    p99_ms: float
    cores: float
    failures: int
    ok_rate: float = float("nan")  # answered with 200 per second (g4)


def _median(runs: Sequence[_Run]) -> _Run:
    return _Run(
        statistics.median(r.rate for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.cores for r in runs),
        sum(r.failures for r in runs),
        statistics.median(r.ok_rate for r in runs),
    )


def _spread(old: Sequence[_Run], new: Sequence[_Run]) -> str:
    """The asyncio / thread pool ratio of each interleaved round: lowest to highest."""
    ratios = [ratio(n.rate, o.rate) for o, n in zip(old, new, strict=True)]
    return f"{min(ratios):.2f} to {max(ratios):.2f}"


def _measured(server: ServerProcess, load: Callable[[], tools.LoadResult]) -> _Run:
    cpu, began = server.cpu_seconds(), time.perf_counter()
    result = load()
    cores = (server.cpu_seconds() - cpu) / (time.perf_counter() - began)
    ok = max(0, result.requests - result.failures) / result.seconds if result.seconds else 0.0
    return _Run(result.rate, result.p50_ms, result.p99_ms, cores, result.failures, ok)


@dataclass
class _Pair:
    """One case on both servers: the label, a server per stack and what was measured."""

    label: str
    servers: dict[str, ServerProcess]
    body: str = "rs256"
    urls: dict[str, str] = field(default_factory=dict)  # through Envoy (g2 to g4)
    runs: dict[str, list[_Run]] = field(default_factory=dict)


def _post(url: str, token: str) -> int:
    request = urllib.request.Request(
        url,
        data=RPC_BODY.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _direct_check(address: str, request: bytes) -> tuple[str, float]:
    """One Check with a 1 s deadline: "answered" or the gRPC error, and the seconds taken."""
    began = time.perf_counter()
    try:
        check_once(address, request, timeout=1.0)
    except grpc.RpcError as exc:
        return str(exc.code().name), time.perf_counter() - began
    return "answered", time.perf_counter() - began


def _directs(outcomes: Sequence[tuple[str, float]]) -> str:
    counts = Counter(outcome for outcome, _seconds in outcomes)
    slowest = max(seconds for _outcome, seconds in outcomes)
    shown = ", ".join(f"{outcome} x{count}" for outcome, count in counts.items())
    return f"{shown} (slowest {slowest * 1000:.1f} ms)"


class _Stall:
    """``bench.stall`` against ``address`` until the ``with`` block ends."""

    def __init__(self, address: str) -> None:
        self.command = [sys.executable, "-m", "bench.stall", "--target", address]
        self.command += ["--connections", str(STALL_CONNECTIONS), "--calls", str(STALL_CALLS)]
        self.process: subprocess.Popen[str] | None = None
        self.announced = ""

    def __enter__(self) -> _Stall:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.announced = self.process.stdout.readline().strip()
        if not self.announced.startswith("holding"):
            terminate(self.process)
            raise RuntimeError(f"bench.stall did not start: {self.announced!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            terminate(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()


def run(ctx: Context, selected: Sequence[str] = ("g",)) -> list[Section]:
    section = Section("g", "The asyncio gRPC server against the thread-pool server it replaced")
    customer = ctx.customer
    token = customer.token("RS256")
    bodies: dict[str, Path] = {}
    for alg in ("RS256", "ES256"):
        bodies[alg.lower()] = ctx.path(f"g-check-{alg}.grpc")
        signed = customer.token(alg)
        bodies[alg.lower()].write_bytes(grpc_frame(check_request(customer.path, signed)))
    request = check_request(customer.path, token)
    script = tools.wrk_post_script(ctx.path("g-post.lua"), body=RPC_BODY, token=token)
    h2_seconds = 2.0 if ctx.quick else max(2.0, ctx.duration * 0.3)
    # More rounds than b and c: this VM's throughput through Envoy drifts from run to run.
    wrk_rounds = 1 if ctx.quick else 4
    wrk_seconds = ctx.duration / (1 if ctx.quick else 2)
    keys = customer.keys_dir
    with ExitStack() as stack:

        def both(start: Callable[[bool], ServerProcess]) -> dict[str, ServerProcess]:
            return {
                stack_name: stack.enter_context(start(stack_name == "thread pool"))
                for stack_name in STACKS
            }

        trivial = _Pair("trivial servicer", both(lambda pool: start_trivial(thread_pool=pool)))
        cached = _Pair(
            "same RS256 token (cache hits)", both(lambda pool: start_authz(keys, thread_pool=pool))
        )
        uncached = both(lambda pool: start_authz(keys, cache_size=0, thread_pool=pool))
        pairs = [
            trivial,
            cached,
            _Pair("RS256, verified every request (--cache-size 0)", uncached),
            _Pair("ES256, verified every request (--cache-size 0)", uncached, body="es256"),
        ]
        # g1: straight to the gRPC port, interleaved rounds.
        for _round in range(ctx.rounds):
            for pair in pairs:
                for name, server in pair.servers.items():
                    pair.runs.setdefault(f"g1 {name}", []).append(
                        _measured(
                            server,
                            lambda server=server, pair=pair: tools.h2load(
                                f"http://{server.address}{CHECK_METHOD}",
                                duration=h2_seconds,
                                warmup=1.0,
                                connections=8,
                                streams=8,
                                data=bodies[pair.body],
                                headers=_GRPC_HEADERS,
                                log_file=ctx.path("g-h2load.tsv"),
                            ),
                        )
                    )
        # g2 to g4: through Envoy, one Envoy per server.
        for pair in (trivial, cached):
            for name, server in pair.servers.items():
                port = int(server.address.rpartition(":")[2])
                config = gate_config("ext_authz", authz=[Endpoint("127.0.0.1", port)])
                envoy = stack.enter_context(EnvoyProcess(config, concurrency=ENVOY_CONCURRENCY))
                pair.urls[name] = envoy.url + customer.path
                status = _post(pair.urls[name], token)
                if status != 200:
                    raise RuntimeError(f"{pair.label} on the {name} server: got {status}")
        for pair in (trivial, cached):
            for url in pair.urls.values():  # a short warm-up, not measured
                tools.wrk(url, script, duration=1, connections=WRK_CONNECTIONS)
        # g2 and g4 in the same rounds, so that a run under attack has its calm twin.
        directs: dict[str, list[tuple[str, float]]] = {name: [] for name in STACKS}
        for _round in range(wrk_rounds):
            for pair in (trivial, cached):
                for name, server in pair.servers.items():
                    pair.runs.setdefault(f"g2 {name}", []).append(
                        _measured(
                            server,
                            lambda url=pair.urls[name]: tools.wrk(
                                url, script, duration=wrk_seconds, connections=WRK_CONNECTIONS
                            ),
                        )
                    )
            for name, server in cached.servers.items():
                with _Stall(server.address):
                    cached.runs.setdefault(f"g4 {name}", []).append(
                        _measured(
                            server,
                            lambda url=cached.urls[name]: tools.wrk(
                                url, script, duration=wrk_seconds, connections=WRK_CONNECTIONS
                            ),
                        )
                    )
                    # After the load, not before: by then every stalled call has reached
                    # the server (bench.stall announces them once sent, not once received).
                    directs[name].append(_direct_check(server.address, request))
                after, _seconds = _direct_check(server.address, request)
                if after != "answered":
                    section.notes.append(f"g4, {name} server, once the calls let go: {after}")
        body = ctx.path("g-rpc.json")
        body.write_text(RPC_BODY)
        for _round in range(wrk_rounds):
            for pair in (trivial, cached):
                for name, server in pair.servers.items():
                    pair.runs.setdefault(f"g3 {name}", []).append(
                        _measured(
                            server,
                            lambda url=pair.urls[name]: tools.h2load(
                                url,
                                duration=wrk_seconds,
                                warmup=1.0,
                                connections=1,
                                streams=64,
                                data=body,
                                headers=(
                                    "content-type: application/json",
                                    f"authorization: Bearer {token}",
                                ),
                                rps=CONSTANT_RATE,
                                log_file=ctx.path("g-h2load-c.tsv"),
                            ),
                        )
                    )
                    # The same rate paced, one request a millisecond: --rps sends bursts.
                    pair.runs.setdefault(f"g3 paced {name}", []).append(
                        _measured(
                            server,
                            lambda url=pair.urls[name]: tools.h2load_paced(
                                url,
                                rate=CONSTANT_RATE,
                                duration=wrk_seconds,
                                script=ctx.path("g-paced.txt"),
                                data=body,
                                headers=(
                                    "content-type: application/json",
                                    f"authorization: Bearer {token}",
                                ),
                                log_file=ctx.path("g-paced.tsv"),
                            ),
                        )
                    )
    _report(ctx, section, pairs, directs, h2_seconds, wrk_rounds, wrk_seconds)
    return [section]


def _report(
    ctx: Context,
    section: Section,
    pairs: list[_Pair],
    directs: dict[str, list[tuple[str, float]]],
    h2_seconds: float,
    wrk_rounds: int,
    wrk_seconds: float,
) -> None:
    g1 = Table(
        f"g1. h2load straight to the gRPC port, {h2_seconds:g} s per run after 1 s warm-up, "
        f"8 connections x 8 streams, median of {ctx.rounds} interleaved round(s)",
        [
            "case",
            "thread pool req/s",
            "asyncio req/s",
            "asyncio / thread pool",
            "per round",
            "thread pool p50 / p99 ms",
            "asyncio p50 / p99 ms",
            "thread pool CPU µs/req",
            "asyncio CPU µs/req",
            "failed",
        ],
    )
    for pair in pairs:
        olds, news = pair.runs["g1 thread pool"], pair.runs["g1 asyncio"]
        old, new = _median(olds), _median(news)
        g1.add(
            pair.label,
            rate(old.rate),
            rate(new.rate),
            f"{ratio(new.rate, old.rate):.2f}",
            _spread(olds, news),
            f"{ms(old.p50_ms)} / {ms(old.p99_ms)}",
            f"{ms(new.p50_ms)} / {ms(new.p99_ms)}",
            f"{old.cores / old.rate * 1e6:.0f}" if old.rate else "n/a",
            f"{new.cores / new.rate * 1e6:.0f}" if new.rate else "n/a",
            old.failures + new.failures,
        )
        section.goals.append(
            Goal(f"g1: asyncio / thread pool, {pair.label}", ratio(new.rate, old.rate), 0.9, ">=")
        )
    g2 = Table(
        f"g2. wrk -c {WRK_CONNECTIONS} through Envoy (--concurrency {ENVOY_CONCURRENCY}), "
        f"{wrk_seconds:g} s per run, median of {wrk_rounds} interleaved round(s) after a 1 s "
        "warm-up; POST with the same RS256 token",
        [
            "case",
            "thread pool req/s",
            "asyncio req/s",
            "asyncio / thread pool",
            "per round",
            "thread pool p50 / p99 ms",
            "asyncio p50 / p99 ms",
            "failed",
        ],
    )
    for pair in pairs:
        if "g2 asyncio" not in pair.runs:
            continue
        olds, news = pair.runs["g2 thread pool"], pair.runs["g2 asyncio"]
        old, new = _median(olds), _median(news)
        g2.add(
            pair.label,
            rate(old.rate),
            rate(new.rate),
            f"{ratio(new.rate, old.rate):.2f}",
            _spread(olds, news),
            f"{ms(old.p50_ms)} / {ms(old.p99_ms)}",
            f"{ms(new.p50_ms)} / {ms(new.p99_ms)}",
            old.failures + new.failures,
        )
    g3 = Table(
        f"g3. h2load --rps {CONSTANT_RATE} through Envoy over one HTTP/2 connection (up to 64 "
        f"in flight), {wrk_seconds:g} s per run after 1 s warm-up, median of {wrk_rounds} "
        "interleaved round(s); then the same rate paced, one request every millisecond "
        "(--rps sends bursts of 10 every 10 ms; section i)",
        [
            "case",
            "thread pool p50 / p99 ms",
            "asyncio p50 / p99 ms",
            "paced: thread pool p50 / p99 ms",
            "paced: asyncio p50 / p99 ms",
            "failed",
        ],
    )
    for pair in pairs:
        if "g3 asyncio" not in pair.runs:
            continue
        old, new = _median(pair.runs["g3 thread pool"]), _median(pair.runs["g3 asyncio"])
        paced_old = _median(pair.runs["g3 paced thread pool"])
        paced_new = _median(pair.runs["g3 paced asyncio"])
        g3.add(
            pair.label,
            f"{ms(old.p50_ms)} / {ms(old.p99_ms)}",
            f"{ms(new.p50_ms)} / {ms(new.p99_ms)}",
            f"{ms(paced_old.p50_ms)} / {ms(paced_old.p99_ms)}",
            f"{ms(paced_new.p50_ms)} / {ms(paced_new.p99_ms)}",
            old.failures + new.failures + paced_old.failures + paced_new.failures,
        )
    g4 = Table(
        f"g4. the g2 load with the same token, {wrk_seconds:g} s per run, while "
        f"{STALL_CONNECTIONS * STALL_CALLS} stalled Check calls ({STALL_CONNECTIONS} connections "
        f"x {STALL_CALLS}) are held on the gRPC port; median of {wrk_rounds} round(s), each "
        "interleaved with the g2 runs",
        [
            "server",
            "a direct Check (1 s deadline) after each run, attack still on",
            "responses/s",
            "200 responses/s",
            "not 200",
            "p50 / p99 ms",
            "200s/s vs the same server without the attack",
        ],
    )
    cached = pairs[1]
    attacked = {name: _median(cached.runs[f"g4 {name}"]) for name in STACKS}
    for name, measured in attacked.items():
        calm = _median(cached.runs[f"g2 {name}"])
        g4.add(
            name,
            _directs(directs[name]),
            rate(measured.rate),
            rate(measured.ok_rate),
            measured.failures,
            f"{ms(measured.p50_ms)} / {ms(measured.p99_ms)}",
            f"{ratio(measured.ok_rate, calm.ok_rate):.2f}",
        )
    section.goals.append(
        Goal(
            "g4: asyncio, 200s/s under 256 stalled calls vs without them",
            ratio(attacked["asyncio"].ok_rate, _median(cached.runs["g2 asyncio"]).ok_rate),
            0.9,
            ">=",
        )
    )
    section.tables += [g1, g2, g3, g4]
    section.notes.insert(
        0,
        "reading: under the attack the thread-pool server let "
        f"{rate(attacked['thread pool'].ok_rate)} requests/s through (the rest got Envoy's 403 "
        "once its 0.25 s ext_authz timeout passed), the asyncio server "
        f"{rate(attacked['asyncio'].ok_rate)}; without it, the asyncio server's throughput is "
        "the ratios of g1 (straight to the port) and g2 (through Envoy), its latency at a "
        "steady 1,000 requests/s that of g3",
    )
    section.notes.append(
        "each server runs in its own process; the thread-pool servers are the same CLI and "
        "running_gate with bench.sync_server.ThreadPoolGate (16 threads) in place of GateServer"
    )
    section.notes.append(
        f"load generators, Envoy, bench.stall and the servers share the machine's {ctx.cores} "
        "cores; 'per round' is the spread of the ratio over the interleaved rounds"
    )
