"""Operator and customer tooling on the command line: ``keygen``, ``keys add|list|remove|
export``, ``token`` and ``check``.

Thin commands around the service's own parts, never a second copy of them: keys are
judged by :func:`~authz_server.keys.parse_public_key`, directories are read by the
:class:`~authz_server.keystore.KeyStore`, tokens are signed by
:func:`~authz_server.tokens.mint` and answered by :func:`~authz_server.verifier.decide`.

This module holds ``keys``; :mod:`.customer` holds ``keygen`` and ``token``, :mod:`.check`
holds ``check``. Errors are one line on stderr, ``authz-server: error: ...``; exit
statuses are in :mod:`._common`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..jwk import is_jwk, jwk_to_pem, public_jwk
from ..keydir import (
    KeyRow,
    add_key,
    key_rows,
    project_names,
    remove_key,
    require_key_id,
    require_project_id,
)
from ..keys import MAX_KEY_FILE_BYTES, KeyRejected, VerifyKey, parse_public_key
from ..keystore import MAX_KEYS_PER_PROJECT, KeyStore
from ..settings import SETTINGS_FILE, ProjectSettings, SettingsRejected, read_settings_file
from ._common import (
    CommandError,
    Subcommands,
    existing_keys_dir,
    guarded,
    keys_dir_option,
    read_limited,
    write_err,
    write_out,
)
from ._format import escaped, table

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add ``keys add|list|remove|export``."""
    keys = commands.add_parser(
        "keys",
        help="register, list, remove and export a project's public keys",
        description="Manage KEYS_DIR/<project>/<kid>.pem. A running server picks up "
        "every change within a second.",
        epilog="examples:\n"
        "  authz-server keys add --keys-dir ./keys --project PROJECT \\\n"
        "      ~/.authz-server/es256/public.pem\n"
        "  authz-server keys list --keys-dir ./keys",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    add = _keys_parser(
        actions,
        "add",
        help="register a public key (PEM or JWK) and print its key id",
        description="Check a public key with the server's rules, store it under a new "
        f"UUID key id and print the id. At most {MAX_KEYS_PER_PROJECT} keys per project. "
        "The file may be a PEM public key or a public JWK (RFC 7517) JSON file.",
        epilog="example:\n"
        "  kid=$(authz-server keys add --keys-dir ./keys \\\n"
        "        --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e \\\n"
        "        --name 'billing service' ~/.authz-server/es256/public.pem)",
    )
    add.add_argument("--name", help="a name to recognise the key by in `keys list`")
    add.add_argument("file", type=Path, metavar="PUBLIC_KEY", help="the key file, or - for stdin")
    add.set_defaults(func=guarded(_keys_add))

    listing = _keys_parser(
        actions,
        "list",
        help="list keys, including refused files and why",
        description="Every key file with its id, name, algorithm, size or curve, when it "
        "was added, its RFC 7638 JWK thumbprint, and whether the server uses it or "
        "refuses it (and why).",
        epilog="examples:\n"
        "  authz-server keys list --keys-dir ./keys\n"
        "  authz-server keys list --keys-dir ./keys --json \\\n"
        "      --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e",
        project_required=False,
    )
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    listing.set_defaults(func=guarded(_keys_list))

    remove = _keys_parser(
        actions,
        "remove",
        help="delete a key: every token signed for it is refused from then on",
        description="Delete a key and its name. Its tokens are refused within a second. "
        "Removing a project's last key locks the project (require_jwt = true in its "
        "settings: every request is denied until a key is added), since that is what "
        "revoking a compromised key means; --open lets its requests through without a JWT "
        "instead.",
        epilog="example:\n"
        "  authz-server keys remove --keys-dir ./keys \\\n"
        "      --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e \\\n"
        "      54f26cb4-15a9-11ee-a1d8-0a58538e0d0c",
    )
    remove.add_argument("kid", metavar="ID", help="the key id (see keys list)")
    remove.add_argument(
        "--open",
        action="store_true",
        help="when it is the last key, leave the project open (no JWT needed) instead of locked",
    )
    remove.set_defaults(func=guarded(_keys_remove))

    export = _keys_parser(
        actions,
        "export",
        help="print a project's active keys as a JWKS",
        description="Print the project's active keys as a JSON Web Key Set (RFC 7517).",
        epilog="example:\n"
        "  authz-server keys export --keys-dir ./keys \\\n"
        "      --project 2a8428f5a79b09aadff75a745397cf6d2f59d51e > jwks.json",
    )
    export.set_defaults(func=guarded(_keys_export))


def _keys_parser(
    actions: Subcommands,
    name: str,
    *,
    project_required: bool = True,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, **kwargs)
    keys_dir_option(parser)
    parser.add_argument(
        "--project",
        required=project_required,
        help="the project id" if project_required else "only this project",
    )
    parser.set_defaults(parser=parser)
    return parser


def _keys_add(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    name = _key_name(args.name)
    source = "stdin" if str(args.file) == "-" else str(args.file)
    data = read_limited(args.file, MAX_KEY_FILE_BYTES + 1)
    jwk_kid = None
    try:
        if is_jwk(data):
            if len(data) > MAX_KEY_FILE_BYTES:
                raise KeyRejected("too_large", f"file larger than {MAX_KEY_FILE_BYTES} bytes")
            data, jwk_kid = jwk_to_pem(data)
        alg, public_key = parse_public_key(data)
    except KeyRejected as exc:
        raise CommandError(f"refused {source}: {exc}") from None
    key = VerifyKey(kid="", alg=alg, public_key=public_key)
    # Stored re-encoded as SubjectPublicKeyInfo: one canonical form, no stray text.
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid, count = add_key(keys_dir, project, pem, key, name=name)
    write_out(kid + "\n")
    write_err(
        f"added key {kid} ({key.description}, {alg}) to project {project}: "
        f"{count} of {MAX_KEYS_PER_PROJECT} keys"
    )
    if jwk_kid is not None and jwk_kid != kid:
        write_err(f"the JWK's kid {jwk_kid!r} is not used: tokens must carry kid {kid}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    projects = (
        project_names(keys_dir) if args.project is None else [require_project_id(args.project)]
    )
    store = KeyStore(keys_dir, quiet=True)
    rows = [row for project in projects for row in key_rows(store, project)]
    if args.json:
        write_out(json.dumps([_row_json(row) for row in rows], indent=2) + "\n")
        return 0
    if not rows:
        where = f"project {args.project}" if args.project else str(keys_dir)
        write_err(f"no key files in {where}")
        return 0
    headers = ("PROJECT", "ID", "NAME", "ALG", "KEY", "ADDED", "THUMBPRINT", "STATUS")
    write_out(table(headers, [_row_cells(row) for row in rows]))
    return 0


def _row_json(row: KeyRow) -> dict[str, Any]:
    return {
        "project": row.project,
        "id": row.kid,
        "name": row.name,
        "status": "active" if row.key else "refused",
        "reason": row.reason,
        "alg": row.key.alg if row.key else None,
        "key": row.key.description if row.key else None,
        "added": row.added.isoformat().replace("+00:00", "Z") if row.added else None,
        "thumbprint": row.thumbprint,
    }


def _row_cells(row: KeyRow) -> list[str]:
    added = row.added.strftime("%Y-%m-%d %H:%M:%S UTC") if row.added else "-"
    return [
        escaped(row.project),
        escaped(row.kid),
        escaped(row.name or "-"),
        row.key.alg if row.key else "-",
        row.key.description if row.key else "-",
        added,
        row.thumbprint or "-",
        "active" if row.key else f"refused: {row.reason}",
    ]


def _keys_remove(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    kid = require_key_id(args.kid)
    remaining = remove_key(keys_dir, project, kid, lock_when_last=not args.open)
    write_out(f"removed key {kid} from project {project}\n")
    if remaining:
        return 0
    # What the project's settings now make of a project without keys (as the server reads
    # them): --open may meet an earlier lock, and a lock may meet report_only.
    try:
        settings = read_settings_file(keys_dir / project / SETTINGS_FILE)
    except FileNotFoundError:
        settings = ProjectSettings()
    except SettingsRejected as exc:
        write_err(
            f"warning: project {project} has no keys left; its settings file is refused "
            f"({exc.reason}): see authz-server project show"
        )
        return 0
    unlock = f"authz-server project unlock --keys-dir {shlex.quote(str(keys_dir))} {project}"
    if not settings.require_jwt:
        write_err(
            f"warning: project {project} has no keys left: its requests now pass without a JWT"
        )
    elif settings.report_only:
        write_err(
            f"warning: project {project} has no keys left and is locked (require_jwt = true), "
            "but its settings say report_only = true: its requests still pass (counted as "
            "would-deny); remove report_only to enforce the lock"
        )
    else:
        write_err(
            f"project {project} has no keys left and is locked (require_jwt = true): its "
            f"requests are denied until a key is added; to let them through without a JWT: "
            f"{unlock}"
        )
    return 0


def _keys_export(args: argparse.Namespace) -> int:
    keys_dir = existing_keys_dir(args.keys_dir)
    project = require_project_id(args.project)
    keys = [
        row.key for row in key_rows(KeyStore(keys_dir, quiet=True), project) if row.key is not None
    ]
    write_out(json.dumps({"keys": [public_jwk(key) for key in keys]}, indent=2) + "\n")
    if not keys:
        write_err(f"warning: project {project} has no active keys")
    return 0


def _key_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise CommandError("--name must be 1 to 200 printable characters")
    return name
