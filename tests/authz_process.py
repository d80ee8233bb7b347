"""Run ``authz-server`` as a real process: ``serve`` on port 0 (learning its address), or
any one command to its end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType

from authz_server.devtools.envoy_process import terminate

_SERVING = re.compile(r"serving on (\S+):(\d+):")
# The same `serving on` line names the HTTP ext_authz listener, when there is one.
_HTTP_LISTEN = re.compile(r"HTTP ext_authz on (\S+):(\d+)")
_METRICS_LISTEN = re.compile(r"metrics on http://\S+:(\d+)/metrics")


def authz_server_binary() -> str:
    path = Path(sys.executable).parent / "authz-server"
    if not path.exists():
        raise RuntimeError(f"authz-server is not installed next to {sys.executable}")
    return str(path)


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``authz-server ARGS`` to its end, through the installed console script."""
    return subprocess.run(
        [authz_server_binary(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


class AuthzProcess:
    """``authz-server serve`` in a subprocess; ``.address`` once it serves."""

    def __init__(
        self,
        keys_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.command = [
            authz_server_binary(),
            "serve",
            "--keys-dir",
            str(keys_dir),
            "--listen",
            "127.0.0.1:0",
            # Tests stop servers all the time; the ones about draining pass their own.
            "--drain-delay",
            "0",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.lines: deque[str] = deque(maxlen=2000)
        self.address = ""
        self.port = 0
        self.http_port = 0  # --http-listen's port, when serving HTTP ext_authz
        self.metrics_port = 0  # --metrics-listen's port (/metrics, /healthz, /readyz)
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> AuthzProcess:
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.timeout
        while not self._ready.wait(0.02):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("authz-server did not start:\n" + self.log)
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _SERVING.search(line)
            if match and not self._ready.is_set():
                self.port = int(match.group(2))
                self.address = f"127.0.0.1:{self.port}"
                if http := _HTTP_LISTEN.search(line):
                    self.http_port = int(http.group(2))
                if metrics := _METRICS_LISTEN.search(line):
                    self.metrics_port = int(metrics.group(1))
                self._ready.set()

    def port_for(self, transport: str) -> int:
        """The port Envoy asks over ``transport`` ("grpc" or "http")."""
        if transport == "grpc":
            return self.port
        if not self.http_port:
            raise AssertionError("no HTTP ext_authz listener (--http-listen):\n" + self.log)
        return self.http_port

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        terminate(self.process, timeout)
        self._reader.join(timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def __enter__(self) -> AuthzProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
