"""``--workers N``: N serving processes, so that checks use every core.

Worker ``i`` listens on ``PORT + i``, and Envoy lists every port as an endpoint of its
authz cluster. One shared SO_REUSEPORT port was measured first and rejected: the kernel
spreads *connections*, and Envoy multiplexes all its calls over one or two long-lived
HTTP/2 connections, so one worker took 100% of the calls (1,600 of 1,600 through Envoy,
with Envoy's concurrency 1 and 2). With one port per worker, Envoy balances the calls.

The supervisor forks the workers before any gRPC object exists (gRPC's threads do not
survive a fork). Each worker is a complete server (its own key store, watcher and
cache). A worker that dies is replaced on the same port; if they keep dying (5 times
within a minute), the supervisor stops and exits 1 so that the process manager sees it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._signals import StopSignals
from .config import Endpoint, Settings

__all__ = ["supervise", "worker_settings"]

log = logging.getLogger("authz_server.workers")

_RESTARTS_ALLOWED: Final = 5
_RESTART_WINDOW_S: Final = 60.0


def worker_settings(settings: Settings) -> list[Settings]:
    """Each worker's settings: worker i listens on PORT+i, and serves metrics (and HTTP
    ext_authz) on their PORT+i (with port 0, each gets a port of its own)."""
    count = settings.workers
    listens = Endpoint.parse(settings.listen).consecutive(count)

    def each(address: str | None) -> list[str | None]:
        if address is None:
            return [None] * count
        return [str(endpoint) for endpoint in Endpoint.parse(address).consecutive(count)]

    return [
        dataclasses.replace(settings, listen=str(listen), metrics_listen=metric, http_listen=http)
        for listen, metric, http in zip(
            listens, each(settings.metrics_listen), each(settings.http_listen), strict=True
        )
    ]


def supervise(settings: Settings, run_worker: Callable[[Settings], int]) -> int:
    """Run ``settings.workers`` forked copies of ``run_worker``; return the exit status."""
    workers = worker_settings(settings)
    addresses = [worker.listen for worker in workers]
    children: dict[int, int] = {}  # pid -> worker number
    restarts: deque[float] = deque()

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            status = 1
            try:
                status = run_worker(workers[number])
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = number

    with StopSignals(lambda name: log.info("received %s; stopping workers", name)) as stop:
        for first in range(settings.workers):
            spawn(first)
        log.info("supervising %d workers on %s", settings.workers, ", ".join(addresses))
        status = 0
        while not stop.event.is_set():
            stop.wait(timeout=0.5)
            for pid, code in _reap():
                if pid not in children or stop.event.is_set():
                    continue
                number = children.pop(pid)
                log.error("worker %d (pid %d) exited with status %s", number, pid, code)
                if code == 2:  # bad configuration, e.g. its port is taken: won't get better
                    status = 2
                    stop.set()
                    break
                now = time.monotonic()
                restarts.append(now)
                while restarts and now - restarts[0] > _RESTART_WINDOW_S:
                    restarts.popleft()
                if len(restarts) > _RESTARTS_ALLOWED:
                    log.error("workers keep exiting; stopping")
                    status = 1
                    stop.set()
                    break
                spawn(number)
        # Each worker drains (health NOT_SERVING, still answering), then stops with its grace.
        _stop_all(children, settings.drain_delay + settings.grace + 5.0, stop)
    return status


def _reap() -> list[tuple[int, int | None]]:
    reaped: list[tuple[int, int | None]] = []
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, os.waitstatus_to_exitcode(wait_status)))


def _stop_all(children: dict[int, int], patience: float, stop: StopSignals) -> None:
    """SIGTERM every worker and wait up to ``patience`` seconds for them; a further stop
    signal to the supervisor is passed on (it cuts the workers' drain short)."""
    for pid in children:
        _signal(pid, signal.SIGTERM)
    relayed = max(stop.received, 1)
    deadline = time.monotonic() + patience
    while children and time.monotonic() < deadline:
        for pid, _code in _reap():
            children.pop(pid, None)
        if children and stop.wait(0.05, count=relayed + 1):
            relayed = stop.received
            log.info("passing the signal on: workers stop now")
            for pid in children:
                _signal(pid, signal.SIGTERM)
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
