"""The customer's side on the command line: ``keygen`` and ``token``.

Keys come from :func:`~authz_server.tokens.generate_private_key` and tokens from
:func:`~authz_server.tokens.mint`; a signing key whose public half the server would
refuse is refused here too, by the same rules.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..keydir import KeyDirError, require_key_id
from ..keys import MAX_KEY_FILE_BYTES, MIN_RSA_BITS, KeyRejected, parse_public_key
from ..tokens import PrivateKey, generate_private_key, mint, public_pem
from ._common import (
    CommandError,
    Subcommands,
    guarded,
    make_directory,
    read_limited,
    write_err,
    write_file,
    write_out,
)
from ._format import time_spec

__all__ = ["DEFAULT_KEY_HOME", "DEFAULT_TOKEN_LIFETIME", "register_keygen", "register_token"]

# Short-lived by default: customers sign short JWTs (docs/contract.md, "Who is who").
DEFAULT_TOKEN_LIFETIME: Final = "10m"  # noqa: S105 - a duration, not a secret
# Where keygen writes without --out: outside any checkout, like ssh-keygen's ~/.ssh, so a
# private key never lands in a repository by default; one directory per algorithm.
DEFAULT_KEY_HOME: Final = "~/.authz-server"


def register_keygen(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "keygen",
        help="create a key pair for signing tokens (the customer's side)",
        description="Write a new key pair: DIR/private.pem (PKCS#8, mode 0600, keep it "
        "secret) and DIR/public.pem (register it with the operator).",
        epilog="examples:\n"
        "  authz-server keygen --alg ES256                  # ~/.authz-server/es256/\n"
        "  authz-server keygen --alg RS256 --bits 3072 --out ~/keys/billing",
    )
    parser.add_argument("--alg", required=True, choices=["RS256", "ES256"], help="algorithm")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_KEY_HOME}/<alg>, e.g. "
        f"{DEFAULT_KEY_HOME}/es256; a warning if it is inside a git work tree)",
    )
    parser.add_argument(
        "--bits",
        type=int,
        choices=[2048, 3072, 4096, 8192],
        help=f"RSA key size for RS256 (default: {MIN_RSA_BITS})",
    )
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(func=guarded(_keygen), parser=parser)


def _keygen(args: argparse.Namespace) -> int:
    if args.bits is not None and args.alg != "RS256":
        args.parser.error("--bits applies to RS256 keys only")
    out: Path = args.out or _default_out(args.alg)
    private_path, public_path = out / "private.pem", out / "public.pem"
    if not args.force:
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise CommandError(f"{path} already exists (--force replaces it)")
    make_directory(out, mode=0o700)
    key = generate_private_key(args.alg, rsa_bits=args.bits or MIN_RSA_BITS)
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(private_path, private_bytes, mode=0o600)
    write_file(public_path, public_pem(key), mode=0o644)
    write_out(
        f"wrote {private_path} (private key, keep it secret)\n"
        f"wrote {public_path} (public key, for the operator:"
        f" authz-server keys add --keys-dir KEYS_DIR --project PROJECT"
        f" {shlex.quote(str(public_path))})\n"
    )
    work_tree = _git_work_tree(out)
    if work_tree is not None:
        write_err(
            f"warning: the private key is inside the git work tree {work_tree}: keep it out of "
            f"commits (--out {DEFAULT_KEY_HOME}/NAME keeps keys outside any checkout)"
        )
    return 0


def _default_out(alg: str) -> Path:
    try:
        return Path(DEFAULT_KEY_HOME).expanduser() / alg.lower()
    except RuntimeError:  # no home directory to expand ~ to
        raise CommandError(f"no home directory for {DEFAULT_KEY_HOME}: give --out DIR") from None


def _git_work_tree(path: Path) -> Path | None:
    """The git work tree holding ``path``, if any: the nearest parent with a ``.git``
    (a directory, or a file in a linked worktree or a submodule)."""
    for directory in (path.resolve(), *path.resolve().parents):
        if (directory / ".git").exists():
            return directory
    return None


def register_token(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "token",
        help="sign a JWT with a private key (the customer's side)",
        description="Print a JWT signed with the private key (RS256 for RSA, ES256 for "
        "P-256) carrying exp, nbf, aud as asked and iat. Times are durations from now "
        "(30s, 10m, 2h, 1d, -5m) or unix timestamps. Without --exp or --no-exp the "
        f"token expires {DEFAULT_TOKEN_LIFETIME} after it is made.",
        epilog="examples:\n"
        "  authz-server token --key ~/.authz-server/es256/private.pem --kid $kid\n"
        "  authz-server token --key ~/.authz-server/es256/private.pem --kid $kid \\\n"
        "      --exp 1h --nbf -30s \\\n"
        "      --aud my-app.example.com\n"
        '  curl -H "Authorization: Bearer $(authz-server token --key ... --kid $kid)" ...',
    )
    parser.add_argument("--key", required=True, type=Path, help="the private key (PEM)")
    parser.add_argument(
        "--kid",
        required=True,
        type=_key_id,
        help="the key id the operator gave for it (keys add prints it)",
    )
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument(
        "--exp",
        type=time_spec,
        default=DEFAULT_TOKEN_LIFETIME,
        metavar="TIME",
        help="expiry",
    )
    expiry.add_argument("--no-exp", action="store_true", help="a token that never expires")
    parser.add_argument("--nbf", type=time_spec, metavar="TIME", help="not valid before")
    parser.add_argument(
        "--aud", action="append", metavar="AUDIENCE", help="audience (repeat for several)"
    )
    parser.allow_negative_values("--exp", "--nbf")
    parser.set_defaults(func=guarded(_token), parser=parser)


def _key_id(text: str) -> str:
    """argparse type: a key id of the contract's alphabet, as the gate would accept it."""
    try:
        return require_key_id(text)
    except KeyDirError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _token(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    now = time.time()
    claims: dict[str, Any] = {}
    if not args.no_exp:
        claims["exp"] = args.exp.at(now)
    if args.nbf is not None:
        claims["nbf"] = args.nbf.at(now)
    if args.aud:
        claims["aud"] = args.aud[0] if len(args.aud) == 1 else args.aud
    claims["iat"] = int(now)
    write_out(mint(key, args.kid, claims) + "\n")
    return 0


def _private_key(path: Path) -> PrivateKey:
    data = read_limited(path, MAX_KEY_FILE_BYTES)
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise CommandError(f"{path} is a public key: --key takes the private one")
        raise CommandError(f"{path} is not a PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CommandError(f"{path} is encrypted: decrypt it first (openssl pkey)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CommandError(f"{path}: unreadable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey").lstrip("_")
        raise CommandError(f"{path}: {kind} keys cannot sign RS256 or ES256")
    try:
        parse_public_key(public_pem(key))
    except KeyRejected as exc:
        raise CommandError(f"{path}: the server would refuse its public key: {exc}") from None
    return key
