"""Parsers for command-line values, shared by every ``authz-server`` command.

Each raises ``argparse.ArgumentTypeError`` with a message that names the bad value,
so argparse turns it into one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import os

__all__ = [
    "env_value",
    "flag",
    "host_port",
    "non_negative_int",
    "positive_int",
    "route",
    "seconds",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_value(name: str) -> str | None:
    """The ``AUTHZ_``-prefixed environment variable for option ``name``, if set."""
    return os.environ.get("AUTHZ_" + name.upper().replace("-", "_"))


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
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
    return prefix, project


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text
