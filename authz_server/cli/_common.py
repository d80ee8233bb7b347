"""Plumbing shared by the tooling commands: failures as one line, output, common options.

Exit status: 0 on success; 1 when a command refuses or fails (and, for ``check``, when
the gate would deny); 2 for usage errors, and for ``check`` when it cannot answer.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeAlias

from ..config import add_option
from ..keydir import KeyDirError

__all__ = [
    "FORMATTER",
    "Command",
    "CommandError",
    "HelpFormatter",
    "Subcommands",
    "existing_keys_dir",
    "guarded",
    "keys_dir_option",
    "read_limited",
    "write_err",
    "write_out",
]

Command: TypeAlias = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description; keeps text with line breaks (the examples of
    each command's epilog) as written, as ``RawDescriptionHelpFormatter`` would."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


FORMATTER: Final = HelpFormatter


class CommandError(Exception):
    """A command cannot do what was asked; ``str()`` is the one-line reason."""


def guarded(command: Command, *, error_status: int = 1) -> Command:
    """Turn an expected failure into one line on stderr and ``error_status``."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, KeyDirError) as exc:
            message = str(exc)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            message = f"{where}{exc.strerror or exc}"
        write_err(f"error: {message}")
        return error_status

    return run


def keys_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--keys-dir``, defaulting to ``AUTHZ_KEYS_DIR`` as for ``serve``."""
    add_option(
        parser,
        "--keys-dir",
        type=Path,
        required=True,
        help="directory of <project>/<kid>.pem keys",
    )


def existing_keys_dir(path: Path) -> Path:
    """The keys directory, which the tools never create: a typo must not go unnoticed."""
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise CommandError(f"keys directory {path} {what}")
    return path


def read_limited(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a file, or of stdin for ``-``."""
    if str(path) == "-":
        return sys.stdin.buffer.read(limit)
    with open(path, "rb") as file:
        return file.read(limit)


def write_out(text: str) -> None:
    """Output for the user or a script, on stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def write_err(text: str) -> None:
    """One line on stderr: ``authz-server: <text>``."""
    sys.stderr.write(f"authz-server: {text}\n")
