"""``--workers N``: N serving processes on one port, so that checks use every core.

The supervisor forks the workers before any gRPC object exists (gRPC's threads do not
survive a fork) and holds a bound, non-listening SO_REUSEPORT socket on the port, so
that port 0 resolves to one port for all and nobody else can take it. Each worker is a
complete server (its own key store, watcher and cache) listening with SO_REUSEPORT; the
kernel spreads incoming connections over them. A worker that dies is replaced; if they
keep dying (5 times within a minute), the supervisor stops and exits 1 so that the
process manager sees it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._signals import StopSignals
from .app import Settings

__all__ = ["supervise"]

log = logging.getLogger("authz_server.workers")

_RESTARTS_ALLOWED: Final = 5
_RESTART_WINDOW_S: Final = 60.0


def _reserve_port(listen: str) -> tuple[socket.socket, str]:
    host, _, port = listen.rpartition(":")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((bare, int(port)))
    except OSError:
        sock.close()
        raise
    return sock, f"{host}:{sock.getsockname()[1]}"


def supervise(settings: Settings, run_worker: Callable[[Settings], int]) -> int:
    """Run ``settings.workers`` forked copies of ``run_worker``; return the exit status."""
    try:
        reservation, listen = _reserve_port(settings.listen)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc.strerror)
        return 2
    worker_settings = dataclasses.replace(settings, listen=listen, reuse_port=True)
    children: dict[int, int] = {}  # pid -> worker number
    restarts: deque[float] = deque()

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            reservation.close()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            status = 1
            try:
                status = run_worker(worker_settings)
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = number

    with StopSignals(lambda name: log.info("received %s; stopping workers", name)) as stop:
        for first in range(settings.workers):
            spawn(first)
        log.info("supervising %d workers on %s", settings.workers, listen)
        status = 0
        while not stop.event.is_set():
            stop.wait(timeout=0.5)
            for pid, code in _reap():
                if pid not in children or stop.event.is_set():
                    continue
                number = children.pop(pid)
                log.error("worker %d (pid %d) exited with status %s", number, pid, code)
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
    _stop_all(children, settings.grace)
    reservation.close()
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


def _stop_all(children: dict[int, int], grace: float) -> None:
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 5.0
    while children and time.monotonic() < deadline:
        for pid, _code in _reap():
            children.pop(pid, None)
        if children:
            time.sleep(0.05)  # bounded by the deadline; children are draining
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
