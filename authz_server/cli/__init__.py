"""``authz-server``: the command line.

One module per command family, each adding its commands to the parser here:
:mod:`.serve` (``serve``, ``health``, ``envoy-config``), :mod:`.customer` (``keygen``,
``token``), :mod:`.keys` (``keys add|list|remove|export``), :mod:`.project` (``project
show|set|lock|unlock``) and :mod:`.check` (``check``).
Each command sets ``func`` (arguments -> exit status) on its parser.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import __version__
from . import check, customer, keys, project, serve
from ._common import Parser

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(
        prog="authz-server",
        description="Envoy ext_authz service enforcing per-project RS256/ES256 JWTs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    customer.register_keygen(commands)
    keys.register(commands)
    project.register(commands)
    customer.register_token(commands)
    check.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
