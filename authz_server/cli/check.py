"""``check``: what the gate would answer for a token, offline.

The answer comes from :func:`~authz_server.verifier.decide` on the keys a
:class:`~authz_server.keystore.KeyStore` loads, with the service's own denial body;
the decoded header and claims beside it are only for the reader.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Final

from ..config import add_option, seconds
from ..keydir import require_project_id
from ..keystore import KeyStore
from ..verifier import Allowed, Policy, bearer_token, decide, deny_body
from ._common import (
    FORMATTER,
    CommandError,
    Subcommands,
    existing_keys_dir,
    guarded,
    keys_dir_option,
    write_err,
    write_out,
)
from ._format import escaped, peek, shown_json, time_claim_lines, time_spec

__all__ = ["register"]

_MAX_TOKEN_INPUT: Final = 1 << 20


def register(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "check",
        help="say what the gate would answer for a token (offline)",
        description="Decide a token exactly as the running service would, from the keys "
        "directory, and show its decoded header and claims. Works offline. Exit status: "
        "0 allowed, 1 denied, 2 could not check.",
        epilog="examples:\n"
        "  authz-server check --keys-dir ./keys --project 2a84...6d2f eyJhbGciOi...\n"
        "  authz-server token --key private.pem --kid $kid | \\\n"
        "      authz-server check --keys-dir ./keys --project 2a84...6d2f -",
        formatter_class=FORMATTER,
    )
    keys_dir_option(parser)
    parser.add_argument("--project", required=True, help="the project id")
    parser.add_argument(
        "token",
        nargs="?",
        metavar="TOKEN",
        help="the JWT, or `Bearer <jwt>`; - or nothing reads it from stdin",
    )
    add_option(
        parser,
        "--audience-suffix",
        default="",
        help="as for serve: when set, `aud` must end with it",
    )
    add_option(
        parser,
        "--leeway",
        type=seconds,
        default="0",
        help="as for serve: clock skew allowed on exp/nbf, seconds",
    )
    parser.add_argument(
        "--now",
        type=time_spec,
        metavar="TIME",
        help="decide as at this time: a unix timestamp, or a duration from now like +1h",
    )
    parser.add_argument("--json", action="store_true", help="JSON for scripts")
    parser.set_defaults(func=guarded(_check, error_status=2), parser=parser)


def _check(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    token = _token_argument(args.token)
    policy = Policy(leeway=args.leeway, audience_suffix=args.audience_suffix)
    now = time.time() if args.now is None else float(args.now.at(time.time()))
    entry = KeyStore(keys_dir, quiet=True).reload([project]).projects.get(project)
    keys = None if entry is None else entry.keys
    decision = decide(token, keys, policy, now)
    header, claims = peek(token) if token else (None, None)

    if isinstance(decision, Allowed):
        answer = (
            f"allowed (kid {decision.kid})"
            if decision.kid is not None
            else f"allowed (project {project} has no keys: it does not use JWT)"
        )
        body = None
    else:
        answer = f"denied: {decision.reason.message}"
        body = deny_body(decision.reason, project)

    if args.json:
        report = {
            "project": project,
            "allowed": isinstance(decision, Allowed),
            "kid": decision.kid,
            "answer": answer,
            "status": 200 if body is None else 403,
            "body": None if body is None else json.loads(body),
            "header": None if header is None else header.value,
            "claims": None if claims is None else claims.value,
        }
        write_out(json.dumps(report, indent=2) + "\n")
    else:
        count = "no keys" if keys is None else f"{len(keys)} active key(s)"
        lines = [("project", f"{escaped(project)} ({count})")]
        if header is not None and claims is not None:
            lines.append(("header", header.problem or shown_json(header.value)))
            lines.append(("claims", claims.problem or shown_json(claims.value)))
            if isinstance(claims.value, dict):
                lines.extend((f"  {n}", text) for n, text in time_claim_lines(claims.value, now))
        else:
            lines.append(("token", "none"))
        lines.append(("answer", escaped(answer)))
        if body is not None:
            lines.append(("body", f"403 {body}"))
        write_out("".join(f"{label:<8}  {text}\n" for label, text in lines))
    for refusal in () if entry is None else entry.refused:
        path = escaped(str(keys_dir / project / refusal.name))
        write_err(f"warning: refused key file {path}: {escaped(refusal.reason)}")
    return 0 if isinstance(decision, Allowed) else 1


def _token_argument(given: str | None) -> str | None:
    if given is None or given == "-":
        if given is None and sys.stdin.isatty():
            raise CommandError("no token: give TOKEN, or - to read it from stdin")
        given = sys.stdin.read(_MAX_TOKEN_INPUT)
    text = given.strip()
    if text[:7].lower() == "bearer ":
        return bearer_token(text)
    return text or None
