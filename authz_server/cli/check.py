"""``check``: what the gate would answer for a token, offline.

The answer comes from a :class:`~authz_server.gate.Gate` on the keys and project settings
a :class:`~authz_server.keystore.KeyStore` loads (``--origin`` and ``--ip`` stand for the
request's), with the service's own denial body; the decoded header and claims beside it
are only for the reader.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from ..config import add_option, seconds
from ..cors import Preflight
from ..facts import RequestFacts
from ..gate import Gate
from ..keydir import project_names, require_project_id
from ..keys import is_valid_id
from ..keystore import KEY_SUFFIX, KeyStore, Snapshot
from ..verifier import Allowed, Decision, Policy, Reason, bearer_token, deny_body
from ._common import (
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

# The contract's messages are terse (and fixed); what each one means, in plain words.
_PLAIN_WORDS: Final[dict[Reason, str]] = {
    Reason.MISSING_TOKEN: "project {project} has keys, or is locked (require_jwt), so every "
    "request needs `Authorization: Bearer <JWT>`",
    Reason.MALFORMED: "the token is not three base64url parts of JSON objects, or a claim "
    "has the wrong type (see header and claims)",
    Reason.UNSUPPORTED_ALGORITHM: "the header's alg must be exactly RS256 or ES256",
    Reason.EMPTY_KEY_ID: "the header has no kid: put the key id that `keys add` printed there",
    Reason.UNKNOWN_KEY_ID: "kid {kid} is not a registered key of project {project}: the key "
    "was removed (revoked), never added, or added to another project",
    Reason.BAD_SIGNATURE: "the token was not signed with the private key of key {kid} (another "
    "key, or changed after signing), or its alg does not fit that key's type",
    Reason.EXPIRED: "its exp has passed (with the leeway): sign a new token",
    Reason.NOT_YET_VALID: "its nbf is still ahead (with the leeway): check the signer's clock",
    Reason.BAD_AUDIENCE: "no aud value ends with the audience suffix {suffix!r}",
    Reason.IP_NOT_ALLOWED: "project {project} takes requests only from the addresses in its "
    "settings (allowed_ips; see authz-server project show); give the client's with --ip",
    Reason.ORIGIN_NOT_ALLOWED: "project {project} takes requests only from the origins in its "
    "settings (allowed_origins; see authz-server project show); give the page's with --origin",
    Reason.INVALID_SETTINGS: "project {project}'s settings file never loaded, so every request "
    "is denied: authz-server project show says why",
    Reason.LIFETIME_TOO_LONG: "project {project} caps token lifetimes (max_token_lifetime): "
    "the token needs an exp, and exp - iat (or exp - now) within the cap",
}


def register(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "check",
        help="say what the gate would answer for a token (offline)",
        description="Decide a token exactly as the running service would, from the keys "
        "directory, and show its decoded header and claims. Works offline. Exit status: "
        "0 allowed, 1 denied, 2 could not check.",
        epilog="examples:\n"
        "  authz-server check --keys-dir ./keys \\\n"
        "      --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e eyJhbGciOi...\n"
        "  authz-server token --key ~/.authz-server/es256/private.pem --kid $kid | \\\n"
        "      authz-server check --keys-dir ./keys \\\n"
        "      --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e -",
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
    parser.add_argument(
        "--origin", help="the request's Origin header, for projects with allowed_origins"
    )
    parser.add_argument(
        "--ip", help="the client's address as Envoy sees it, for projects with allowed_ips"
    )
    parser.add_argument("--json", action="store_true", help="JSON for scripts")
    parser.allow_negative_values("--now")
    parser.set_defaults(func=guarded(_check, error_status=2), parser=parser)


def _check(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    token = _token_argument(args.token)
    policy = Policy(leeway=args.leeway, audience_suffix=args.audience_suffix)
    now = time.time() if args.now is None else float(args.now.at(time.time()))
    snapshot = KeyStore(keys_dir, quiet=True).reload([project])
    entry = snapshot.projects.get(project)
    keys = snapshot.keys_for(project)
    decision, report_only = _decided(snapshot, project, policy, now, token, args)
    header, claims = peek(token) if token else (None, None)

    would_deny = report_only and not isinstance(decision, Allowed)
    if would_deny:
        assert not isinstance(decision, Allowed)
        answer = f"allowed (report only; would be denied: {decision.reason.message})"
        body = None
    elif isinstance(decision, Allowed):
        answer = (
            f"allowed (kid {decision.kid})"
            if decision.kid is not None
            else f"allowed (project {project} has no keys: it does not use JWT)"
        )
        body = None
    else:
        answer = f"denied: {decision.reason.message}"
        body = deny_body(decision.reason, project)
    why = None
    if not isinstance(decision, Allowed):
        header_value = None if header is None else header.value
        why = _in_plain_words(decision.reason, project, header_value, args.audience_suffix)
        if decision.reason is Reason.UNKNOWN_KEY_ID:
            why = f"{why}{_elsewhere(keys_dir, project, header_value)}"

    if args.json:
        report = {
            "project": project,
            "allowed": isinstance(decision, Allowed) or would_deny,
            "would_deny": _reason_of(decision) if would_deny else None,
            "kid": decision.kid,
            "answer": answer,
            "why": why,
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
        if why is not None:
            lines.append(("why", escaped(why)))
        if body is not None:
            lines.append(("body", f"403 {body}"))
        write_out("".join(f"{label:<8}  {text}\n" for label, text in lines))
    for refusal in () if entry is None else entry.refused:
        path = escaped(str(keys_dir / project / refusal.name))
        write_err(f"warning: refused key file {path}: {escaped(refusal.reason)}")
    if entry is not None and entry.settings_refusal is not None:
        path = escaped(str(keys_dir / project / entry.settings_refusal.name))
        reason = escaped(entry.settings_refusal.reason)
        write_err(f"warning: refused settings file {path}: {reason}")
    return 0 if isinstance(decision, Allowed) or would_deny else 1


def _reason_of(decision: Decision) -> str | None:
    return None if isinstance(decision, Allowed) else decision.reason.message


def _decided(
    snapshot: Snapshot,
    project: str,
    policy: Policy,
    now: float,
    token: str | None,
    args: argparse.Namespace,
) -> tuple[Decision, bool]:
    """The gate's decision on this snapshot, and whether the project is report-only (its
    settings then judged as if enforced, so that the would-be denial can be shown)."""
    entry = snapshot.projects.get(project)
    settings = None if entry is None else entry.settings
    report_only = settings is not None and settings.report_only
    if entry is not None and settings is not None and report_only:
        enforced = dataclasses.replace(settings, report_only=False)
        entry = dataclasses.replace(entry, settings=enforced)
    # Complete: this project's directory was read whole (a partial reload is never marked so).
    judged = Snapshot(MappingProxyType({} if entry is None else {project: entry}), 1, True)
    gate = Gate(lambda: judged, policy, clock=lambda: now, cache_size=0, failed_check_budget=0)
    facts = RequestFacts(
        project,
        None if token is None else f"Bearer {token}",
        None,
        "POST",
        args.origin,
        args.ip,
    )
    decision = gate.decide(facts)
    assert not isinstance(decision, Preflight)  # a POST is never one
    return decision, report_only


def _in_plain_words(reason: Reason, project: str, header: Any, suffix: str) -> str | None:
    text = _PLAIN_WORDS.get(reason)
    if text is None:
        return None
    return text.format(project=project, kid=_kid_of(header), suffix=suffix)


def _kid_of(header: Any) -> str:
    kid = header.get("kid") if isinstance(header, dict) else None
    return shown_json(kid) if isinstance(kid, str) else "(none)"


def _elsewhere(keys_dir: Path, project: str, header: Any) -> str:
    """Which other projects of this keys directory have the token's kid, if any."""
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str) or not is_valid_id(kid):
        return ""
    others = [
        other
        for other in project_names(keys_dir)
        if other != project and (keys_dir / other / f"{kid}{KEY_SUFFIX}").is_file()
    ]
    return f" (here it is a key of project {', '.join(others)})" if others else ""


def _token_argument(given: str | None) -> str | None:
    if given is None or given == "-":
        if given is None and sys.stdin.isatty():
            raise CommandError("no token: give TOKEN, or - to read it from stdin")
        given = sys.stdin.read(_MAX_TOKEN_INPUT)
    text = given.strip()
    if text.lower() == "bearer":  # `Bearer ` and nothing after it: no token, as for the gate
        return None
    if text[:7].lower() == "bearer ":
        return bearer_token(text)
    return text or None
