"""Reading the small files operators drop into the keys directory (key files, settings
files): never blocking on a FIFO or a device put in a file's place, never reading more than
a bound, and saying in a short stable code why a file could not be read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileRefused", "read_small_file"]


class FileRefused(ValueError):
    """A file that cannot be read as a small regular file: ``code`` is ``cannot_open``,
    ``not_regular_file`` or ``cannot_read``; ``reason`` one line for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def read_small_file(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file at ``path`` (links followed), so a
    caller can tell a file over ``limit`` from one at it. :class:`FileNotFoundError` when
    there is none; :class:`FileRefused` when it cannot be opened or read, or is not a
    regular file (checked on the open file: it may have been swapped since a stat)."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must never hang the reload.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileRefused("cannot_open", f"cannot open ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRefused("not_regular_file", "not a regular file")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, remaining)):
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise FileRefused("cannot_read", f"cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    return b"".join(chunks)
