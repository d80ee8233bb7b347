"""The servers under test as subprocesses: ``authz-server serve`` and the trivial servicer.

Each runs in its own process (never in the load generator's), logs to a file, and is
ready once it has logged ``serving on HOST:PORT`` once per serving process. Memory and
CPU are read from ``/proc`` for the whole process tree (a ``--workers`` supervisor and
its children).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import grpc

from authz_server.devtools.envoy_process import terminate

from . import procfs
from .checks import CHECK_METHOD

__all__ = ["ServerProcess", "serve_options", "start_authz", "start_node", "start_trivial"]

_SERVING: Final = re.compile(r"serving on (\S+):(\d+)")
_POLL_S: Final = 0.002


@functools.cache
def serve_options() -> frozenset[str]:
    """The options of ``authz-server serve`` in this checkout (``--workers``, ...)."""
    result = subprocess.run(
        [sys.executable, "-m", "authz_server.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return frozenset(re.findall(r"--[a-z][a-z-]+", result.stdout))


@dataclass
class ServerProcess:
    """A running server: ``addresses`` of its serving processes (one, when they share a
    port), ``startup_s`` from spawn until every serving process logged that it serves."""

    name: str
    command: list[str]
    processes: int = 1
    timeout: float = 60.0
    ready: re.Pattern[str] = _SERVING  # the log line of a serving process; group 2 = port
    addresses: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    _log_dir: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="bench-server-")
    )

    @property
    def log_path(self) -> Path:
        return Path(self._log_dir.name) / "server.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        """The first serving address (the only one unless workers have ports of their own)."""
        return self.addresses[0]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        with self.log_path.open("wb") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = started + self.timeout
        offset, ready = 0, 0
        with self.log_path.open("rb") as log:
            while ready < self.processes:
                log.seek(offset)
                chunk = log.read()
                # Only whole lines: a line being written is read again next time.
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                for match in self.ready.finditer(complete.decode(errors="replace")):
                    ready += 1
                    address = f"127.0.0.1:{match.group(2)}"
                    if address not in self.addresses:
                        self.addresses.append(address)
                if ready >= self.processes:
                    break
                if self.process.poll() is not None or time.perf_counter() > deadline:
                    tail = self.log[-4000:]
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start:\n{tail}")
                time.sleep(_POLL_S)
        self.startup_s = time.perf_counter() - started
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout=15)

    def close(self) -> None:
        self.stop()
        self._log_dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- /proc readings of the whole tree --------------------------------------

    def tree(self) -> list[int]:
        """The server process and its descendants (a ``--workers`` supervisor's workers)."""
        return procfs.tree(self.pid)

    def memory(self) -> dict[str, int]:
        return procfs.memory(self.tree())

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.tree())


def start_authz(
    keys_dir: Path,
    *,
    name: str = "authz-server",
    workers: int = 1,
    cache_size: int | None = None,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
    thread_pool: bool = False,
) -> ServerProcess:
    """``authz-server serve`` on ports of the kernel's choosing; with ``thread_pool``, on
    the thread-pool gRPC server it used before (``bench.sync_server``)."""
    options = serve_options()
    module = "bench.sync_server" if thread_pool else "authz_server.cli"
    command = [sys.executable, "-m", module, "serve", "--keys-dir", str(keys_dir)]
    command += ["--listen", "127.0.0.1:0", *extra]
    if workers > 1:
        if "--workers" not in options:
            raise RuntimeError("this authz-server has no --workers option")
        command += ["--workers", str(workers)]
    if cache_size is not None and "--cache-size" in options:
        command += ["--cache-size", str(cache_size)]
    if "--drain-delay" in options:
        command += ["--drain-delay", "0"]  # nothing health-checks a bench server
    return ServerProcess(name, command, processes=workers, timeout=timeout).start()


def start_trivial(*, workers: int = 1, thread_pool: bool = False) -> ServerProcess:
    command = [sys.executable, "-m", "bench.trivial_server", "--listen", "127.0.0.1:0"]
    command += ["--workers", str(workers)]
    if thread_pool:
        command.append("--thread-pool")
    return ServerProcess("trivial servicer", command, processes=workers).start()


def start_node() -> ServerProcess:
    """The demo JSON-RPC node (``authz_server.devtools.demo_upstream``) in a process of its own."""
    command = [
        sys.executable,
        "-m",
        "authz_server.devtools.demo_upstream",
        "--listen",
        "127.0.0.1:0",
    ]
    return ServerProcess(
        "demo JSON-RPC node", command, ready=re.compile(r"listening on (\S+):(\d+)")
    ).start()


def check_once(address: str, request: bytes, timeout: float = 5.0) -> bytes:
    """One Check call with a pre-serialized request; the serialized response."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(CHECK_METHOD, None, None)
        response: bytes = call(request, timeout=timeout)
    return response
