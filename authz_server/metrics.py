"""Prometheus metrics: per-decision counters and check latency, plus the key store's and
the token cache's state, served in the text format on ``--metrics-listen``.

Every series lives in the service's own :class:`CollectorRegistry` (never the global
one), beside the standard ``process_*``, ``python_info`` and ``python_gc_*`` series that
dashboards built for other exporters expect (:func:`service_registry`). No ``*_created``
series: a counter's creation time is the process's start, which ``process_start_time_seconds``
already gives, and each one doubles a scrape's series. Labels come only from bounded sets
(the decision and a :class:`Reason` code): never a project id, a kid or a token. The
labelled children are created up front, so a check does one dictionary-free ``inc()`` and
one ``observe()``.

The key store and the cache keep plain integer counters; :class:`StateCollector`
reads them at scrape time, so neither module imports ``prometheus_client``.
"""

from __future__ import annotations

import collections
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .config import Endpoint
from .verifier import Reason

if TYPE_CHECKING:
    from .cache import CachingVerifier
    from .keystore import KeyStore

__all__ = [
    "CHECK_DURATION_BUCKETS",
    "CheckDurations",
    "CheckMetrics",
    "MetricsServer",
    "StateCollector",
    "service_registry",
]

# prometheus_client's own switch, for the whole process (it has no per-registry one).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# A cached check takes tens of microseconds, a signature verification about 0.1-1 ms;
# anything past 50 ms is a stall worth seeing in the +Inf bucket.
CHECK_DURATION_BUCKETS: Final = (
    0.00002,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
)

ALLOW: Final = "allow"
DENY: Final = "deny"
VALID: Final = "valid"  # allowed: a verified token for a project with keys
NO_JWT: Final = "no_jwt"  # allowed: a project without keys
PREFLIGHT: Final = "preflight"  # a CORS preflight the gate answered itself
CORS: Final = "cors"


def service_registry() -> CollectorRegistry:
    """A registry of the service's own with the standard collectors: process (CPU, memory,
    file descriptors, start time; Linux), platform (``python_info``) and garbage collection."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class CheckDurations(Collector):
    """``authz_check_duration_seconds``: a histogram whose ``observe`` is one bisect and
    two in-place additions, about a tenth of ``prometheus_client.Histogram`` (which takes
    a lock per bucket and per sum, +1.4 µs on a 5 µs check).

    Lock-free under the GIL: two threads may, very rarely, lose one increment between
    them. A latency distribution does not care; ``_count`` is the sum of the buckets, so
    the exposition stays self-consistent.
    """

    name: Final = "authz_check_duration_seconds"

    def __init__(self, buckets: Iterable[float] = CHECK_DURATION_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterable[Metric]:
        counts = list(self.counts)
        total = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            total += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), total))
        yield HistogramMetricFamily(
            self.name,
            "Time to answer one Check call, in the handler (excludes gRPC transport).",
            buckets=buckets,
            sum_value=self.sum,
        )


class CheckMetrics:
    """The hot-path series: one counter child per (result, reason), one histogram; in
    ``registry``, else a new :func:`service_registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry()
        self.decisions = Counter(
            "authz_decisions",
            "Check decisions by result and reason (reason: a denial code, 'valid' or 'no_jwt'; "
            "result 'preflight': a CORS preflight the gate answered itself).",
            ["result", "reason"],
            registry=self.registry,
        )
        self.allowed_valid = self.decisions.labels(ALLOW, VALID)
        self.allowed_no_jwt = self.decisions.labels(ALLOW, NO_JWT)
        self.denied = {reason: self.decisions.labels(DENY, reason.code) for reason in Reason}
        self.preflights = self.decisions.labels(PREFLIGHT, CORS)
        # Report-only projects (settings.toml): the requests their settings would deny,
        # which passed; not counted in authz_decisions' denials.
        self.would_deny_counter = Counter(
            "authz_would_deny",
            "Requests of report-only projects that their settings would deny, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.would_deny = {reason: self.would_deny_counter.labels(reason.code) for reason in Reason}
        self.duration = CheckDurations()
        self.registry.register(self.duration)

    def answered(self) -> int:
        """Check calls answered so far (every decision, allow or deny)."""
        return int(
            sum(
                sample.value
                for family in self.decisions.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            )
        )


class StateCollector(Collector):
    """Key store and cache state, read from their plain attributes at scrape time."""

    def __init__(
        self,
        store: KeyStore,
        verifier: CachingVerifier,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._verifier = verifier
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        store = self._store
        snapshot = store.snapshot
        yield GaugeMetricFamily(
            "authz_keys_loaded", "Active verification keys, all projects.", snapshot.key_count
        )
        yield GaugeMetricFamily(
            "authz_projects_with_keys",
            "Projects with key files (JWT required).",
            snapshot.projects_with_keys,
        )
        yield CounterMetricFamily(
            "authz_keys_refused",
            "Key files refused when a project was (re)read.",
            store.keys_refused,
        )
        refused = GaugeMetricFamily(
            "authz_key_files_refused",
            "Key files refused in the current key set, by reason code (e.g. rsa_size).",
            labels=["reason"],
        )
        by_code = collections.Counter(
            r.code for keys in snapshot.projects.values() for r in keys.refused
        )
        for code, count in sorted(by_code.items()):
            refused.add_metric([code], count)
        yield refused
        yield CounterMetricFamily(
            "authz_settings_refused",
            "Project settings files refused when a project was (re)read.",
            store.settings_refused,
        )
        settings = GaugeMetricFamily(
            "authz_project_settings_refused",
            "Projects whose settings file is refused right now (last good settings kept, or "
            "every request denied if none ever loaded), by reason code (e.g. not_toml).",
            labels=["reason"],
        )
        by_settings_code = collections.Counter(
            keys.settings_refusal.code
            for keys in snapshot.projects.values()
            if keys.settings_refusal is not None
        )
        for code, count in sorted(by_settings_code.items()):
            settings.add_metric([code], count)
        yield settings
        yield CounterMetricFamily(
            "authz_reloads", "Key directory scans completed.", store.reloads_completed
        )
        yield CounterMetricFamily(
            "authz_reload_failures",
            "Key directory scans that failed (the last good key set stayed).",
            store.reload_failures,
        )
        yield GaugeMetricFamily(
            "authz_unmounted_volumes",
            "Volumes (KEYS_DIR, or project directories mounted on their own) found unmounted "
            "right now; the keys they held stay in force until they are mounted again.",
            store.unmounted_volumes,
        )
        yield CounterMetricFamily(
            "authz_unmounts",
            "Unmounts of the keys volume or of a project's volume detected.",
            store.unmounts_detected,
        )
        last = store.last_reload
        yield GaugeMetricFamily(
            "authz_seconds_since_last_reload",
            "Seconds since the last completed key directory scan (NaN before the first).",
            math.nan if last is None else max(0.0, self._clock() - last),
        )
        yield CounterMetricFamily(
            "authz_cache_hits",
            "Checks answered from the verified-token cache.",
            self._verifier.hits,
        )
        yield CounterMetricFamily(
            "authz_cache_misses",
            "Checks of a token for a project with keys not found in the cache.",
            self._verifier.misses,
        )


class MetricsServer:
    """``GET /metrics`` (any path) in the Prometheus text format, on its own thread;
    ``/healthz`` (the process answers) and ``/readyz`` (``ready()``: keys loaded, not
    draining) for probes of an HTTP ext_authz deployment, on this address that no client
    path can reach."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        import socket
        import threading
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        endpoint = Endpoint.parse(listen)
        self.endpoint = endpoint
        metrics_app = make_wsgi_app(registry)
        family = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)[0][0]

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = family

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/healthz", "/readyz"):
                ok = path == "/healthz" or ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [b"ok\n" if ok else b"not ready\n"]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        server: WSGIServer = make_server(
            endpoint.host, endpoint.port, app, Server, handler_class=QuietHandler
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        return str(Endpoint(self.endpoint.host, self.port))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
