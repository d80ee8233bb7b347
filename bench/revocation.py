"""Section d: a key file deleted while requests flow; how long until its tokens are denied.

The bench customer's project has an RS256 and an ES256 key. The RS256 key file is deleted
(the ES256 key stays, so the project remains locked: a project left with no key would be
open, by contract) while a client polls Check with an RS256 token about once a millisecond
over a few connections. Measured from just before ``unlink`` to the first denial on any
connection, and until every connection (every worker process) denies. Between tries the
file is put back and the token is allowed everywhere again; a random pause then shifts
the next deletion against the service's one-second rescan.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from .checks import Customer, check_request
from .context import Context
from .probe import Prober
from .report import Goal, Section, Table, ms
from .servers import start_authz

__all__ = ["percentile", "run"]

_TIMEOUT_S = 3.0


def percentile(values: Sequence[float], q: float) -> float:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    return finite[min(len(finite) - 1, math.ceil(q * len(finite)) - 1)]


def _replace(path: Path, data: bytes) -> None:
    """Put a key file in place in one step, as an operator's tooling would."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def run(ctx: Context, selected: Sequence[str] = ("d",)) -> list[Section]:
    section = Section("d", "Revocation: a key file deleted under load, until the first denial")
    customer = Customer.create(ctx.path("keys-d"))
    key_path = customer.key_path("RS256")
    pem = key_path.read_bytes()
    request = check_request(customer.path, customer.token("RS256"))
    table = Table(
        f"d. {ctx.tries} tries per server; ms from unlink; Check polled about every 1 ms",
        [
            "processes",
            "first denial p50",
            "p99",
            "max",
            "all connections deny p50",
            "p99",
            "max",
            "restore p50",
            "timeouts",
        ],
    )
    rng = random.Random(2024)  # noqa: S311 - timing jitter, not security
    for workers in ctx.worker_counts:
        try:
            server = start_authz(customer.keys_dir, workers=workers)
        except RuntimeError as exc:
            if workers == 1:
                raise
            section.notes.append(f"{workers} workers: not measured ({str(exc).splitlines()[0]})")
            continue
        with server:
            prober = Prober(server.addresses, per_address=4 if len(server.addresses) == 1 else 2)
            first: list[float] = []
            everywhere: list[float] = []
            restore: list[float] = []
            try:
                for _ in range(ctx.tries):
                    prober.keep_probing(request, rng.uniform(0.1, 0.4))
                    since = time.perf_counter()
                    key_path.unlink()
                    earliest, last = prober.wait_for(
                        request, allowed=False, since=since, timeout=_TIMEOUT_S
                    )
                    first.append(earliest * 1000)
                    everywhere.append(last * 1000)
                    since = time.perf_counter()
                    _replace(key_path, pem)
                    _early, back = prober.wait_for(
                        request, allowed=True, since=since, timeout=_TIMEOUT_S * 2
                    )
                    restore.append(back * 1000)
                    if math.isnan(back):
                        raise RuntimeError("the restored key was not accepted again in 6 s")
            finally:
                prober.close()
                if not key_path.exists():
                    _replace(key_path, pem)
        timeouts = sum(1 for v in everywhere if math.isnan(v))
        table.add(
            workers,
            ms(percentile(first, 0.5)),
            ms(percentile(first, 0.99)),
            ms(max(first)),
            ms(percentile(everywhere, 0.5)),
            ms(percentile(everywhere, 0.99)),
            ms(max(everywhere)),
            ms(statistics.median(restore)),
            timeouts,
        )
        # Unanswered tries count as failures against the goal, not as missing data.
        worst = math.inf if timeouts else percentile(everywhere, 0.99)
        label = "1 process" if workers == 1 else f"{workers} worker processes"
        section.goals.append(
            Goal(f"d: revocation p99 (every connection denies), {label}", worst, 250, "<=", " ms")
        )
    section.tables.append(table)
    section.notes += [
        "the polling client is the load: about 1,000 Check calls/s with a valid RS256 token "
        "(a cache hit until the key goes), straight to the gRPC service (Envoy keeps no "
        "authorization state, so it adds nothing to this time)",
        "'restore' is the time for the re-added key file to be accepted again everywhere",
        f"a try with no denial within {_TIMEOUT_S:g} s counts as a timeout",
    ]
    return [section]
