"""The running service: key store, watcher and gRPC server, started and stopped together.

Both ``authz-server serve`` and ``make run`` use :func:`running_gate`, so the demo runs
exactly what operators run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cache import DEFAULT_MAX_ENTRIES
from .keystore import KeyStore
from .service import AuthorizationService, GateServer
from .verifier import Policy

__all__ = ["DEFAULT_LISTEN", "LOG_FORMAT", "ListenError", "Settings", "running_gate"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("authz_server")

# A service in a container or beside Envoy listens on every interface by default.
DEFAULT_LISTEN = "0.0.0.0:9001"


class ListenError(OSError):
    """The gRPC server could not bind its listen address."""


@dataclass(frozen=True, slots=True)
class Settings:
    keys_dir: Path
    listen: str = DEFAULT_LISTEN
    audience_suffix: str = ""
    leeway: float = 0.0
    forward_jwt: bool = False
    rescan_interval: float = 1.0
    threads: int = 16
    log_level: str = "INFO"
    grace: float = 5.0
    cache_size: int = DEFAULT_MAX_ENTRIES
    workers: int = 1


@contextmanager
def running_gate(settings: Settings) -> Iterator[GateServer]:
    """Load the keys, start the watcher and the server; drain and stop them on exit."""
    store = KeyStore(settings.keys_dir)
    snapshot = store.reload()
    service = AuthorizationService(
        lambda: store.snapshot,
        Policy(leeway=settings.leeway, audience_suffix=settings.audience_suffix),
        forward_jwt=settings.forward_jwt,
        cache_size=settings.cache_size,
    )
    try:
        server = GateServer(service, settings.listen, threads=settings.threads)
    except (OSError, RuntimeError) as exc:
        raise ListenError(f"cannot listen on {settings.listen}: {exc}") from None
    watcher_stop = threading.Event()
    watcher = threading.Thread(
        target=store.watch,
        args=(watcher_stop,),
        kwargs={"rescan_interval": settings.rescan_interval or 1.0},
        name="keys-watcher",
        daemon=True,
    )
    watcher.start()
    try:
        server.start()
        log.info(
            "serving on %s: keys dir %s, %d project(s) with %d key(s)",
            server.address,
            settings.keys_dir,
            len(snapshot.projects),
            snapshot.key_count,
        )
        yield server
    finally:
        server.stop(settings.grace)
        watcher_stop.set()
        watcher.join(timeout=settings.grace)
