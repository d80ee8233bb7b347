"""``project show|set|lock|unlock``: a project's security settings (``settings.toml``).

Thin commands around :mod:`authz_server.settings` (what a file may say) and
:func:`authz_server.keydir.edit_settings` (the locked, atomic write): a value the server
would refuse is refused here with the same reason, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..keydir import edit_settings, lock_settings, require_project_id, unlock_settings
from ..keystore import KeyStore
from ..settings import SETTINGS_FILE, ProjectSettings
from ._common import (
    CommandError,
    Subcommands,
    existing_keys_dir,
    guarded,
    keys_dir_option,
    write_err,
    write_out,
)
from ._format import escaped

__all__ = ["register"]

_EXAMPLE_PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"


def register(commands: Subcommands) -> None:
    """Add ``project show|set|lock|unlock``."""
    project = commands.add_parser(
        "project",
        help="show and change a project's security settings (settings.toml)",
        description="Manage KEYS_DIR/<project>/settings.toml: require a JWT, allow origins "
        "and client addresses, cap token lifetimes, report-only rollout. A running server "
        "picks up every change within a second.",
        epilog="examples:\n"
        f"  authz-server project show --keys-dir ./keys {_EXAMPLE_PROJECT}\n"
        f"  authz-server project set --keys-dir ./keys {_EXAMPLE_PROJECT} \\\n"
        "      'allowed_origins=[\"https://app.example.com\"]' max_token_lifetime=1h\n"
        f"  authz-server project lock --keys-dir ./keys {_EXAMPLE_PROJECT}",
    )
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")

    show = _parser(
        actions,
        "show",
        help="the settings in force, and why the file is refused if it is",
        description="Print the project's settings as the server loads them now, and the "
        "reason when its settings file is refused.",
    )
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    show.set_defaults(func=guarded(_show))

    change = _parser(
        actions,
        "set",
        help="set settings: KEY=VALUE (a TOML value, or plain text); KEY= removes one",
        description="Change settings. Each VALUE is a TOML value (true, 30, "
        "'[\"203.0.113.0/24\"]', '{sub=\"x-jwt-sub\"}') or else taken as text (1h, "
        "https://app.example.com); `KEY=` removes the setting. Refused as a whole, "
        "with the reason, when the server would refuse the result. The file is rewritten "
        "from its values: comments in it are not kept.",
        epilog="examples:\n"
        f"  authz-server project set --keys-dir ./keys {_EXAMPLE_PROJECT} \\\n"
        "      'allowed_ips=[\"203.0.113.0/24\"]' max_token_lifetime=15m\n"
        f"  authz-server project set --keys-dir ./keys {_EXAMPLE_PROJECT} report_only=",
    )
    change.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    change.set_defaults(func=guarded(_set))

    lock = _parser(
        actions,
        "lock",
        help="require a JWT, even with no keys (require_jwt = true)",
        description="Set require_jwt = true: every request needs a valid JWT, even when "
        "the project has no keys (then every request is denied).",
    )
    lock.set_defaults(func=guarded(_lock))

    unlock = _parser(
        actions,
        "unlock",
        help="no longer require a JWT when the project has no keys",
        description="Remove require_jwt: a project without keys lets its requests "
        "through again (a project with keys still needs a JWT).",
    )
    unlock.set_defaults(func=guarded(_unlock))


def _parser(actions: Subcommands, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, **kwargs)
    keys_dir_option(parser)
    parser.add_argument("project", metavar="PROJECT", help="the project id")
    parser.set_defaults(parser=parser)
    return parser


def _show(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    entry = KeyStore(keys_dir, quiet=True).reload([project]).projects.get(project)
    settings = None if entry is None else entry.settings
    refusal = None if entry is None else entry.settings_refusal
    path = keys_dir / project / SETTINGS_FILE
    if settings is None or settings.invalid:
        state = (
            "none (defaults)"
            if settings is None
            else "none loaded: a server starting now denies every request; a running one "
            "keeps the last settings that loaded (see its log)"
        )
    else:
        state = "in force" if refusal is None else "last good kept (the file is refused)"
    values = {} if settings is None or settings.invalid else _settings_values(settings)
    if args.json:
        report = {
            "project": project,
            "file": str(path),
            "state": state,
            "refused": None
            if refusal is None
            else {"code": refusal.code, "reason": refusal.reason},
            "keys": 0 if entry is None else len(entry.keys),
            "uses_jwt": entry is not None and entry.uses_jwt,
            "settings": values,
        }
        write_out(json.dumps(report, indent=2) + "\n")
    else:
        lines = [("project", escaped(project)), ("file", escaped(str(path))), ("state", state)]
        if refusal is not None:
            lines.append(("refused", escaped(f"{refusal.reason} ({refusal.code})")))
        lines += [(key, escaped(json.dumps(value))) for key, value in values.items()]
        width = max(len(label) for label, _text in lines)
        write_out("".join(f"{label:<{width}}  {text}\n" for label, text in lines))
    return 0 if refusal is None else 1


def _settings_values(settings: ProjectSettings) -> dict[str, Any]:
    """The settings that differ from the defaults, as plain values (seconds as numbers)."""
    values: dict[str, Any] = {}
    if settings.require_jwt:
        values["require_jwt"] = True
    if settings.allowed_origins is not None:
        values["allowed_origins"] = list(settings.allowed_origins)
    if settings.allow_missing_origin:
        values["allow_missing_origin"] = True
    if settings.allowed_ips is not None:
        values["allowed_ips"] = [str(network) for network in settings.allowed_ips]
    if settings.max_token_lifetime is not None:
        values["max_token_lifetime"] = settings.max_token_lifetime
    if settings.audience_suffix is not None:
        values["audience_suffix"] = settings.audience_suffix
    if settings.leeway is not None:
        values["leeway"] = settings.leeway
    if settings.claims_to_headers:
        values["claims_to_headers"] = dict(settings.claims_to_headers)
    if settings.report_only:
        values["report_only"] = True
    return values


def _assignment(text: str) -> tuple[str, Any]:
    key, equals, raw = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise CommandError(f"expected KEY=VALUE, got {text!r}")
    if raw == "":
        return key, None
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw  # plain text: 1h, https://app.example.com
    return key, value


def _set(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    changes = [_assignment(text) for text in args.assignments]

    def apply(values: dict[str, Any]) -> None:
        for key, value in changes:
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value

    return _edit(keys_dir, project, apply)


def _lock(args: argparse.Namespace) -> int:
    return _edit(existing_keys_dir(args.keys_dir), require_project_id(args.project), lock_settings)


def _unlock(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    return _edit(keys_dir, require_project_id(args.project), unlock_settings)


def _edit(keys_dir: Path, project: str, edit: Callable[[dict[str, Any]], None]) -> int:
    """Apply ``edit`` to the project's settings (locked, atomic) and show the result."""
    _report(project, edit_settings(keys_dir, project, edit))
    return 0


def _report(project: str, settings: ProjectSettings) -> None:
    values = _settings_values(settings)
    shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
    write_out(f"project {project}: {shown or 'default settings'}\n")
    if settings.report_only:
        write_err(f"project {project} is report-only: its settings deny nothing, they count")
