"""Times in and out, tolerant token decoding and tables for the command-line tools.

Nothing here decides anything: ``check`` shows a token with these helpers and asks
:func:`~authz_server.verifier.decide` for the answer. The decoding below is lenient
on purpose, so that a token the gate calls malformed can still be looked at.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "Peek",
    "TimeSpec",
    "escaped",
    "peek",
    "shown_json",
    "span",
    "table",
    "time_claim_lines",
    "time_spec",
    "utc",
]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RELATIVE: Final = re.compile(r"([+-]?)(\d{1,9})([smhd])")
_ABSOLUTE: Final = re.compile(r"\d{1,12}")
# Before 2001-09-09: as a token time surely a duration written without its unit.
_EARLIEST_PLAUSIBLE: Final = 1_000_000_000
_MAX_SHOWN: Final = 2000


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """A time given on the command line: seconds from now, or a unix timestamp."""

    seconds: int
    relative: bool

    def at(self, now: float) -> int:
        return int(now) + self.seconds if self.relative else self.seconds


def time_spec(text: str) -> TimeSpec:
    """argparse type: ``30s``, ``10m``, ``-2h``, ``1d``, ``now`` or a unix timestamp."""
    text = text.strip()
    if text == "now":
        return TimeSpec(0, relative=True)
    relative = _RELATIVE.fullmatch(text)
    if relative:
        sign, amount, unit = relative.groups()
        seconds = int(amount) * _UNITS[unit]
        return TimeSpec(-seconds if sign == "-" else seconds, relative=True)
    if _ABSOLUTE.fullmatch(text):
        value = int(text)
        if value < _EARLIEST_PLAUSIBLE:
            raise argparse.ArgumentTypeError(
                f"{text} is a unix time in {utc(value)[:4]}; for a duration write {text}s"
            )
        return TimeSpec(value, relative=False)
    raise argparse.ArgumentTypeError(
        f"not a time: {text!r} (a duration like 30s, 10m, 2h, 1d, or a unix timestamp)"
    )


def utc(timestamp: float) -> str:
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "out of range"


def span(seconds: float) -> str:
    """A rough, human length of time: ``45 s``, ``9 min``, ``2 h 5 min``, ``3 d 4 h``."""
    whole = int(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def time_claim_lines(claims: Mapping[str, Any], now: float) -> list[tuple[str, str]]:
    """(claim, description) for each of exp, nbf and iat that is present."""
    lines = []
    for name, future, past in (
        ("exp", "expires in {}", "expired {} ago"),
        ("nbf", "valid in {}", "valid since {} ago"),
        ("iat", "issued in {}, in the future", "issued {} ago"),
    ):
        if name not in claims:
            continue
        value = claims[name]
        if type(value) not in (int, float) or not math.isfinite(value):
            lines.append((name, f"{shown_json(value)} (not a number)"))
            continue
        try:
            delta = value - now
        except OverflowError:  # an integer too large for a float
            lines.append((name, f"{value} (out of range)"))
            continue
        when = utc(value)
        if when == "out of range":
            lines.append((name, f"{value} (out of range)"))
            continue
        relation = (future if delta > 0 else past).format(span(delta))
        lines.append((name, f"{when} ({relation})"))
    return lines


@dataclass(frozen=True, slots=True)
class Peek:
    """One token segment decoded leniently: a JSON value, or why it is not one."""

    value: Any = None
    problem: str | None = None


def peek(token: str) -> tuple[Peek, Peek]:
    """The header and the claims of a token, decoded as far as they go."""
    parts = token.split(".")
    if len(parts) == 1:
        missing = Peek(problem=f"token has {len(parts)} part, expected 3 separated by dots")
        return _peek_segment(parts[0]), missing
    return _peek_segment(parts[0]), _peek_segment(parts[1])


def _peek_segment(segment: str) -> Peek:
    text = segment.strip().rstrip("=").replace("+", "-").replace("/", "_")
    if not text:
        return Peek(problem="empty")
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in text) or len(text) % 4 == 1:
        return Peek(problem="not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return Peek(problem="not base64url")
    try:
        return Peek(json.loads(raw.decode("utf-8")))
    except UnicodeDecodeError:
        return Peek(problem="not UTF-8")
    except (ValueError, RecursionError):
        return Peek(problem="not JSON")


def shown_json(value: Any) -> str:
    """JSON for a terminal: ASCII only, so no control character reaches it; cut short."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def escaped(text: str) -> str:
    """A file or key name made safe for one terminal line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines) + "\n"
