"""Section f: a flood of bad signatures at one project, and what another project sees meanwhile.

The flooded project holds the dearest key the contract accepts: RSA-8192 with a 32-bit
public exponent (a failed check costs about 1.1 ms, 25 times RSA-2048's). h2load sends it
the same badly signed RS256 token over 8 connections x 8 streams, as fast as the service
answers: failures are never cached, so each one costs a check unless the project's budget
for failed checks (``--failed-check-budget``) is spent. Meanwhile a probe sends another
project's valid ES256 token about once a millisecond, each time a fresh one (so each is
verified, never answered from the cache), and records its latency. Three cases, one server
each: no flood (the baseline), the flood with the budget off (``0``), the flood with the
default budget.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.budget import DEFAULT_RATE
from authz_server.tokens import b64url, generate_private_key, mint, public_pem

from . import tools
from .checks import CHECK_METHOD, check_request, grpc_frame
from .context import Context
from .report import Goal, Section, Table, ms, rate
from .revocation import percentile
from .servers import ServerProcess, start_authz

__all__ = ["run"]

FLOODED: Final = "flooded-project"
QUIET: Final = "quiet-project"
_GRPC_HEADERS: Final = ("content-type: application/grpc", "te: trailers")
_PROBES: Final = 3000


def _costly_public_key(path: Path) -> None:
    """RSA-8192 with e = 2^32 - 1: the dearest failed check the contract lets in."""
    modulus = rsa.generate_private_key(public_exponent=65537, key_size=8192)
    public = rsa.RSAPublicNumbers(2**32 - 1, modulus.public_key().public_numbers().n)
    path.write_bytes(
        public.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _forged_rs256(kid: str) -> str:
    """An RS256 token with a signature of the key's full length (1,024 bytes), so that the
    check goes all the way through the modular exponentiation before it fails."""
    header = b64url(json.dumps({"alg": "RS256", "kid": kid}).encode())
    payload = b64url(b"{}")
    return f"{header}.{payload}.{b64url(bytes([1]) + os.urandom(1023))}"


def _answers(
    server: ServerProcess, requests: Sequence[bytes], *, until: float = math.inf
) -> tuple[list[float], list[str]]:
    """Each request once over one connection, paced at about 1 ms, stopping at ``until``
    (a perf_counter time): latencies (ms), verdicts."""
    latencies: list[float] = []
    verdicts: list[str] = []
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(CHECK_METHOD, None, None)
        next_at = time.perf_counter()
        for request in requests:
            began = time.perf_counter()
            if began >= until:
                break
            answer = external_auth_pb2.CheckResponse.FromString(call(request, timeout=5))
            latencies.append((time.perf_counter() - began) * 1000)
            verdicts.append("allow" if answer.status.code == 0 else answer.status.message)
            next_at += 0.001
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.perf_counter()
    return latencies, verdicts


def _flooded(
    server: ServerProcess, flood_body: Path, quiet_requests: Sequence[bytes]
) -> tuple[list[float], list[str], tools.LoadResult]:
    """The quiet project's answers while h2load floods the other project."""
    results: list[tools.LoadResult] = []
    seconds = math.ceil(len(quiet_requests) / 1000 * 1.5)

    def flood() -> None:
        results.append(
            tools.h2load(
                f"http://{server.address}{CHECK_METHOD}",
                duration=seconds,
                warmup=1,
                connections=8,
                streams=8,
                data=flood_body,
                headers=_GRPC_HEADERS,
            )
        )

    flooder = threading.Thread(target=flood, name="flood", daemon=True)
    flooder.start()
    time.sleep(1.0)  # the flood's warm-up: let it take hold before probing
    latencies, verdicts = _answers(server, quiet_requests, until=time.perf_counter() + seconds)
    flooder.join()
    return latencies, verdicts, results[0]


def run(ctx: Context, selected: Sequence[str] = ("f",)) -> list[Section]:
    section = Section("f", "A flood of bad signatures at one project; another project's latency")
    keys_dir = ctx.path("keys-f")
    (keys_dir / FLOODED).mkdir(parents=True)
    (keys_dir / QUIET).mkdir()
    _costly_public_key(keys_dir / FLOODED / "costly.pem")
    quiet_key = generate_private_key("ES256")
    (keys_dir / QUIET / "k1.pem").write_bytes(public_pem(quiet_key))

    flood_body = ctx.path("flood-f.bin")
    flood_body.write_bytes(grpc_frame(check_request(f"/eth/{FLOODED}", _forged_rs256("costly"))))
    probes = 600 if ctx.quick else _PROBES
    quiet_requests = [
        check_request(f"/eth/{QUIET}", mint(quiet_key, "k1", {"n": n})) for n in range(probes)
    ]
    cases = [
        ("no flood", None),
        ("flood, budget off (0)", "0"),
        (f"flood, budget {DEFAULT_RATE:g} (default)", None),
    ]
    table = Table(
        f"f. {probes} fresh ES256 tokens of the quiet project, one per ~1 ms, one connection; "
        "flood: h2load, 8 connections x 8 streams, one bad RS256 token at the RSA-8192 key",
        [
            "case",
            "quiet p50",
            "p99",
            "max",
            "quiet denied",
            "flood answers/s",
            "flood tokens checked",
        ],
    )
    p99s: dict[str, float] = {}
    for name, budget in cases:
        extra = [] if budget is None else ["--failed-check-budget", budget]
        with start_authz(keys_dir, name=f"authz-server ({name})", extra=extra) as server:
            if name == "no flood":
                latencies, verdicts = _answers(server, quiet_requests)
                flood_rate, checked = "-", "-"
            else:
                latencies, verdicts, result = _flooded(server, flood_body, quiet_requests)
                flood_rate = rate(result.rate)
                # Every denial is logged with its reason: checked and failed, or throttled.
                log = server.log
                failed = log.count(f"project={FLOODED} reason=bad_signature")
                throttled = log.count(f"project={FLOODED} reason=throttled")
                checked = f"{failed / max(1, failed + throttled):.0%}"
        p99s[name] = percentile(latencies, 0.99)
        table.add(
            name,
            ms(statistics.median(latencies)),
            ms(p99s[name]),
            ms(max(latencies)),
            sum(1 for verdict in verdicts if verdict != "allow"),
            flood_rate,
            checked,
        )
    section.tables.append(table)
    off, on = p99s[cases[1][0]], p99s[cases[2][0]]
    section.goals.append(
        Goal(
            "quiet project's p99 under the flood, default budget (Envoy's ext_authz timeout)",
            on,
            250.0,
            "<=",
            " ms",
        )
    )
    section.notes.append(
        f"quiet project's p99 under the flood with the budget / without: {on / off:.2f}"
    )
    section.notes.append(
        "flood tokens checked: the share of the flooded project's denials that went through "
        "a signature check (the rest were throttled without one), from the server's log"
    )
    return [section]
