"""Part of section a: what one Check costs inside the service, without gRPC around it.

Times ``AuthorizationService.check_serialized`` in this process, on a snapshot loaded
by the real ``KeyStore``, for the same cases as the load runs; and the request's protobuf
decoding, which gRPC does before the handler. Set against a whole call's cost on the
server (CPU time per request in a1), it shows how much of a call is the decision and how
much is the gRPC stack. A last pair of rows fills the verified-token cache to its default
size with distinct tokens, to show what a miss costs once entries must be evicted.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Final

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.keystore import KeyStore
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Policy

from .checks import check_request, decode_verdict, mint_distinct
from .context import Context
from .report import Table

__all__ = ["decision_costs"]

_REPEATS: Final = 2000


def _per_call_us(action: Callable[[], object], repeats: int = _REPEATS) -> float:
    """µs per call: the best of five batches (this VM's speed drifts; the best batch is
    the one least disturbed)."""
    for _ in range(200):
        action()
    batch = max(1, repeats // 5)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(batch):
            action()
        best = min(best, (time.perf_counter() - began) / batch)
    return best * 1e6


def _service(ctx: Context, cache_size: int | None) -> AuthorizationService:
    store = KeyStore(ctx.customer.keys_dir)
    store.reload()
    options: dict[str, object] = {}
    if (
        cache_size is not None
        and "cache_size" in inspect.signature(AuthorizationService).parameters
    ):
        options["cache_size"] = cache_size
    return AuthorizationService(lambda: store.snapshot, Policy(), **options)  # type: ignore[arg-type]


def _over(
    service: AuthorizationService, requests: Sequence[external_auth_pb2.CheckRequest]
) -> float:
    """µs per call, each request once (distinct tokens: every call a miss)."""
    began = time.perf_counter()
    for request in requests:
        service.check_serialized(request)
    return (time.perf_counter() - began) / len(requests) * 1e6


def decision_costs(ctx: Context) -> tuple[Table, list[str]]:
    customer = ctx.customer
    notes: list[str] = []
    table = Table(
        f"a3. in-process cost per Check, no gRPC (best of 5 batches of {_REPEATS // 5:,} calls; "
        "distinct-token rows: mean of one pass)",
        ["case", "µs per call"],
    )
    raw_rs = check_request(customer.path, customer.token("RS256"))
    raw_es = check_request(customer.path, customer.token("ES256"))
    parsed_rs = external_auth_pb2.CheckRequest.FromString(raw_rs)
    parsed_es = external_auth_pb2.CheckRequest.FromString(raw_es)
    table.add(
        "decode the CheckRequest (protobuf; done by gRPC before the handler)",
        f"{_per_call_us(lambda: external_auth_pb2.CheckRequest.FromString(raw_rs)):.1f}",
    )
    cached = _service(ctx, None)
    uncached = _service(ctx, 0)
    for service in (cached, uncached):
        for request in (parsed_rs, parsed_es):
            if decode_verdict(service.check_serialized(request)) != "allow":
                raise RuntimeError("the in-process service did not allow the bench token")
    table.add(
        "same token, default service (cache hit when the build has a cache)",
        f"{_per_call_us(lambda: cached.check_serialized(parsed_rs)):.1f}",
    )
    table.add(
        "RS256 verified (cache off)",
        f"{_per_call_us(lambda: uncached.check_serialized(parsed_rs)):.1f}",
    )
    table.add(
        "ES256 verified (cache off)",
        f"{_per_call_us(lambda: uncached.check_serialized(parsed_es)):.1f}",
    )
    try:
        from authz_server.cache import DEFAULT_MAX_ENTRIES
    except ImportError:
        notes.append("a3: this build has no verified-token cache; the fill/evict rows are skipped")
        return table, notes
    if ctx.quick:
        notes.append("a3: the cache fill/evict rows are skipped with --quick")
        return table, notes
    sample = 2000 if ctx.quick else 4000
    began = time.perf_counter()
    tokens = mint_distinct(customer.ec, customer.ec_kid, DEFAULT_MAX_ENTRIES + sample)
    requests = [
        external_auth_pb2.CheckRequest.FromString(check_request(customer.path, token))
        for token in tokens
    ]
    filling = _service(ctx, None)
    empty_cost = _over(filling, requests[:sample])
    _over(filling, requests[sample:DEFAULT_MAX_ENTRIES])  # now full
    full_cost = _over(filling, requests[DEFAULT_MAX_ENTRIES:])
    table.add(f"distinct ES256 tokens, cache far from full ({sample:,} calls)", f"{empty_cost:.1f}")
    table.add(
        f"distinct ES256 tokens, cache full at its default {DEFAULT_MAX_ENTRIES:,} entries "
        f"(each miss evicts; {sample:,} calls)",
        f"{full_cost:.1f}",
    )
    notes.append(
        f"a3: the cache-fill rows took {time.perf_counter() - began:.1f} s "
        f"({len(tokens):,} ES256 tokens minted and verified)"
    )
    return table, notes
