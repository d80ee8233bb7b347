"""Configuration, read one way: :class:`Settings`, addresses and ``AUTHZ_*`` variables.

Every command adds its options with :func:`add_option`, so an option ``--keys-dir`` can
always also come from ``AUTHZ_KEYS_DIR`` (the command line wins). The value parsers raise
``argparse.ArgumentTypeError`` with a message that names the bad value, so argparse turns
it into one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .budget import DEFAULT_RATE
from .cache import DEFAULT_MAX_ENTRIES
from .keys import is_valid_id

__all__ = [
    "DEFAULT_LISTEN",
    "THREADS_DEFAULT",
    "Endpoint",
    "Settings",
    "add_option",
    "env_value",
    "flag",
    "host_port",
    "non_negative_int",
    "positive_int",
    "positive_seconds",
    "route",
    "seconds",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# A service in a container or beside Envoy listens on every interface by default.
DEFAULT_LISTEN: Final = "0.0.0.0:9001"
# --threads sized the thread pool of the gRPC server before it became asynchronous; the
# option is still accepted, and ignored, so that existing command lines keep working.
THREADS_DEFAULT: Final = 16


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``authz-server serve`` runs with."""

    keys_dir: Path
    listen: str = DEFAULT_LISTEN
    audience_suffix: str = ""
    leeway: float = 0.0
    forward_jwt: bool = False
    rescan_interval: float = 1.0
    threads: int = THREADS_DEFAULT  # deprecated and ignored: no call holds a thread any more
    log_level: str = "INFO"
    grace: float = 5.0  # seconds the calls in flight get to finish once the server stops
    # Seconds between a stop signal and the server's stop, answering all along with health
    # NOT_SERVING, so that health-checking clients (Envoy, Kubernetes) move away first.
    drain_delay: float = 5.0
    cache_size: int = DEFAULT_MAX_ENTRIES
    # Seconds per second of failed signature checks allowed per project; 0: no limit.
    failed_check_budget: float = DEFAULT_RATE
    workers: int = 1
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    http_listen: str | None = None  # HOST:PORT of Envoy's HTTP ext_authz; None: gRPC only
    # Proxies of the operator's own in front of Envoy, for the HTTP transport's client
    # address (X-Forwarded-For); as Envoy's xff_num_trusted_hops.
    trusted_proxy_hops: int = 0
    # The gate's own denials carry the CORS headers for the request's Origin: for proxies
    # whose CORS filter runs after ext_authz (Istio). Off: Envoy's CORS filter adds them.
    cors_denials: bool = False
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host (DNS name or IP literal, IPv6 without brackets) and a TCP port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("an endpoint needs a host")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT`` (``[::1]:9001`` for IPv6); ValueError names what is wrong."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def consecutive(self, count: int) -> list[Endpoint]:
        """This endpoint and the ``count - 1`` after it (port 0: each its own port 0)."""
        if self.port and self.port + count - 1 > 65535:
            raise ValueError(f"{count} workers from port {self.port} run past port 65535")
        return [Endpoint(self.host, self.port + i if self.port else 0) for i in range(count)]


def env_value(name: str) -> str | None:
    """The ``AUTHZ_``-prefixed environment variable for option ``name``, if set and not
    empty (``AUTHZ_X=`` in a compose file or manifest means "not given")."""
    return os.environ.get("AUTHZ_" + name.upper().replace("-", "_")) or None


def add_option(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add ``--name`` whose default comes from ``AUTHZ_NAME`` when that is set (argparse
    applies ``type`` to a string default, so the variable is checked like the flag)."""
    dest = name.removeprefix("--").replace("-", "_")
    from_env = env_value(dest)
    help_text = str(kwargs.pop("help", ""))
    kwargs["help"] = f"{help_text} [env AUTHZ_{dest.upper()}]"
    if from_env is not None:
        kwargs["default"] = from_env
        kwargs.pop("required", None)
    parser.add_argument(name, **kwargs)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """Seconds that must pass between two things: 0 would mean never waiting."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def flag(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use true or false)")


def route(text: str) -> tuple[str, str]:
    prefix, sep, project = text.partition("=")
    if not sep or not prefix.startswith("/") or not project:
        raise argparse.ArgumentTypeError(
            f"expected PREFIX=PROJECT with PREFIX starting '/': {text!r}"
        )
    if not is_valid_id(project):
        # The gate would deny every request of that route with "invalid project id".
        raise argparse.ArgumentTypeError(
            f"invalid project id {project!r} in {text!r} (1 to 128 of A-Z a-z 0-9 _ -)"
        )
    return prefix, project


def host_port(text: str) -> str:
    try:
        Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
