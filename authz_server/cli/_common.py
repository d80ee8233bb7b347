"""Plumbing shared by the commands: the parser, failures as one line, output, common options.

Exit status: 0 on success; 1 when a command refuses or fails (and, for ``check``, when
the gate would deny); 2 for usage errors, for ``serve`` and ``envoy-config`` when their
configuration cannot be used (an output file that cannot be written, too), and for
``check`` when it cannot answer.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, NoReturn, TypeAlias

from ..config import add_option
from ..keydir import KeyDirError, write_atomically

__all__ = [
    "FORMATTER",
    "Command",
    "CommandError",
    "HelpFormatter",
    "Parser",
    "Subcommands",
    "existing_keys_dir",
    "guarded",
    "keys_dir_option",
    "make_directory",
    "read_limited",
    "write_err",
    "write_file",
    "write_out",
]

Command: TypeAlias = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"

# A value that starts with a minus sign but is no option: a duration in the past (-5m).
_SIGNED_VALUE: Final = re.compile(r"-\d[\w.]*")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description; keeps text with line breaks (the examples of
    each command's epilog) as written, as ``RawDescriptionHelpFormatter`` would; and ends
    each option's help with its default, when it has one worth showing."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # None, False, "" and [] mean "not given"; the help says what that does.
        shown = default not in (None, False, "", [], argparse.SUPPRESS)
        if shown and action.option_strings and "(default" not in text:
            text += " (default: %(default)s)"
        return text


FORMATTER: Final = HelpFormatter


class Parser(argparse.ArgumentParser):
    """The parser of every command: help pages show defaults, a usage error is one line
    (``authz-server keys add: error: ... (see authz-server keys add --help)``) and exit
    status 2, and options declared with :meth:`allow_negative_values` take ``-5m``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", FORMATTER)
        super().__init__(*args, **kwargs)
        self._signed_options: set[str] = set()

    def allow_negative_values(self, *option_strings: str) -> None:
        """Let ``--exp -5m`` mean ``--exp=-5m``: argparse would take ``-5m`` for an
        unknown option (it only knows plain negative numbers)."""
        self._signed_options.update(option_strings)

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._joined_signed_values(given), namespace)

    def _joined_signed_values(self, args: list[str]) -> list[str]:
        joined: list[str] = []
        index = 0
        while index < len(args):
            arg = args[index]
            if arg == "--":  # everything after it is a positional argument already
                return joined + args[index:]
            following = args[index + 1] if index + 1 < len(args) else ""
            if arg in self._signed_options and _SIGNED_VALUE.fullmatch(following):
                joined.append(f"{arg}={following}")
                index += 2
            else:
                joined.append(arg)
                index += 1
        return joined

    def error(self, message: str) -> NoReturn:
        """One line on stderr, then exit status 2: the whole usage would hide the reason."""
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


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


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write an output file atomically; failing, say which file and why in one line (the
    error of the rename names its temporary file, which the user never asked for)."""
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        write_atomically(path, data, mode=mode)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def make_directory(path: Path, *, mode: int) -> None:
    """``mkdir -p`` for an output directory, failing in one line that names it."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create directory {path}: {exc.strerror or exc}") from None


def write_out(text: str) -> None:
    """Output for the user or a script, on stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def write_err(text: str) -> None:
    """One line on stderr: ``authz-server: <text>``."""
    sys.stderr.write(f"authz-server: {text}\n")
