"""Strings from clients or from the file system, made safe for one log line."""

from __future__ import annotations

__all__ = ["printable"]


def printable(value: object, limit: int = 160) -> str:
    """``value`` as text with control characters escaped and its length capped, so that
    a path segment, a kid or a file name can never start a forged second log line."""
    text = str(value)
    shown = text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown + "..." if len(text) > limit else shown
