"""The running service: key store, watcher and gRPC server, started and stopped together.

Both ``authz-server serve`` and ``make run`` use :func:`running_gate`, so the demo runs
exactly what operators run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .config import THREADS_DEFAULT, Settings
from .gate import Gate
from .keystore import KeyStore
from .logging_setup import TEXT_FORMAT
from .metrics import CheckMetrics, MetricsServer, StateCollector
from .transports.grpc import AuthorizationService, GateServer
from .transports.http import HttpGateServer
from .verifier import Policy

__all__ = ["LOG_FORMAT", "ListenError", "running_gate"]

LOG_FORMAT = TEXT_FORMAT

log = logging.getLogger("authz_server")


class ListenError(OSError):
    """The gRPC server could not bind its listen address."""


@contextmanager
def running_gate(settings: Settings) -> Iterator[GateServer]:
    """Load the keys, start the watcher, the server and the metrics endpoint; drain and
    stop them on exit. Health says SERVING only once a whole scan of the keys directory
    has completed (at once, unless the directory was unreadable at start)."""
    store = KeyStore(settings.keys_dir)
    snapshot = store.reload()
    metrics = CheckMetrics()
    gate = Gate(
        lambda: store.snapshot,
        Policy(leeway=settings.leeway, audience_suffix=settings.audience_suffix),
        cache_size=settings.cache_size,
        failed_check_budget=settings.failed_check_budget,
        metrics=metrics,
        cors_denials=settings.cors_denials,
        forward_jwt=settings.forward_jwt,
    )
    service = AuthorizationService.for_gate(
        gate, forward_jwt=settings.forward_jwt, trusted_proxy_hops=settings.trusted_proxy_hops
    )
    metrics.registry.register(StateCollector(store, gate.verifier))
    if settings.threads != THREADS_DEFAULT:
        log.warning(
            "--threads (AUTHZ_THREADS) is deprecated and ignored: the gRPC server is "
            "asynchronous and no call holds a thread",
            extra={"event": "deprecated_option", "option": "threads"},
        )
    try:
        server = GateServer(service, settings.listen)
    except (OSError, RuntimeError) as exc:
        raise ListenError(f"cannot listen on {settings.listen}: {exc}") from None
    http_server = None
    if settings.http_listen is not None:
        try:
            http_server = HttpGateServer(
                gate,
                settings.http_listen,
                forward_jwt=settings.forward_jwt,
                trusted_proxy_hops=settings.trusted_proxy_hops,
            )
        except OSError as exc:
            server.stop(0)
            raise ListenError(f"cannot listen on {settings.http_listen}: {exc}") from None
    metrics_server = None
    if settings.metrics_listen is not None:
        try:
            metrics_server = MetricsServer(
                metrics.registry,
                settings.metrics_listen,
                ready=lambda: store.loaded.is_set() and not server.draining,
            )
        except OSError as exc:
            server.stop(0)
            if http_server is not None:
                http_server.stop(0)
            raise ListenError(f"cannot listen on {settings.metrics_listen}: {exc}") from None
    stopping = threading.Event()
    watcher = threading.Thread(
        target=store.watch,
        args=(stopping,),
        kwargs={"rescan_interval": settings.rescan_interval or 1.0},
        name="keys-watcher",
        daemon=True,
    )
    watcher.start()
    ready = threading.Thread(
        target=_serving_once_loaded,
        args=(store, server, stopping),
        name="health-ready",
        daemon=True,
    )
    try:
        server.start(serving=store.loaded.is_set())
        if http_server is not None:
            http_server.start()
        if not store.loaded.is_set():
            log.warning(
                "keys directory %s not loaded yet; health NOT_SERVING until it is",
                settings.keys_dir,
                extra={"event": "not_ready", "keys_dir": str(settings.keys_dir)},
            )
            ready.start()
        metrics_address = None if metrics_server is None else metrics_server.address
        http_address = None if http_server is None else http_server.address
        log.info(
            "serving on %s: keys dir %s, %d project(s) with %d key(s), metrics %s, "
            "HTTP ext_authz %s",
            server.address,
            settings.keys_dir,
            len(snapshot.projects),
            snapshot.key_count,
            "off" if metrics_address is None else f"on http://{metrics_address}/metrics",
            "off" if http_address is None else f"on {http_address}",
            extra={
                "event": "serving",
                "listen": server.address,
                "keys_dir": str(settings.keys_dir),
                "projects": len(snapshot.projects),
                "keys": snapshot.key_count,
                "metrics": metrics_address,
                "http_listen": http_address,
            },
        )
        yield server
    finally:
        stopping.set()  # first: the readiness thread must not flip health back on
        if ready.is_alive():
            ready.join(timeout=1.0)
        if http_server is not None:
            http_server.stop(settings.grace)
        server.stop(settings.grace)
        answered = metrics.answered()
        log.info(
            "drained; %d check(s) answered in all",
            answered,
            extra={"event": "drained", "answered": answered},
        )
        if metrics_server is not None:
            metrics_server.stop()
        watcher.join(timeout=settings.grace)


def _serving_once_loaded(store: KeyStore, server: GateServer, stopping: threading.Event) -> None:
    while not stopping.is_set():
        if store.loaded.wait(0.05):
            if stopping.is_set():
                return
            if server.set_serving(True):
                log.info("keys loaded; health SERVING", extra={"event": "ready"})
            else:
                log.info(
                    "keys loaded; health stays NOT_SERVING: draining", extra={"event": "ready"}
                )
            return
