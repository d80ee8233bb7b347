"""The tooling commands, called in-process: keygen, keys add|list|remove|export, token, check.

The whole customer flow through the installed console script, against a running service
and a real Envoy, is in test_admin_e2e.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import re
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz_server.cli import main
from authz_server.cli._format import span, time_spec
from authz_server.keystore import MAX_KEYS_PER_PROJECT, KeyStore
from authz_server.tokens import PrivateKey, mint, public_pem
from authz_server.verifier import TABLE_REASONS, Allowed, Policy, Reason, decide, deny_body
from tests.support import b64, segment, verify_key, write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

# RFC 7638 section 3.1: an RSA key and its SHA-256 JWK thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
    "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
    "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
    "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``authz-server ARGS`` in this process; ``stdin`` is what the command reads."""
    for name in ("AUTHZ_KEYS_DIR", "AUTHZ_LEEWAY", "AUTHZ_AUDIENCE_SUFFIX"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str | Path, stdin: bytes | str | None = None) -> Result:
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        capsys.readouterr()
        try:
            status = main([str(arg) for arg in args])
        except SystemExit as exc:  # argparse: usage errors and --help
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(status, captured.out, captured.err)

    return run


def public_file(tmp_path: Path, key: PrivateKey, name: str | None = None) -> Path:
    path = tmp_path / (name or f"{uuid.uuid4().hex}.pub.pem")
    path.write_bytes(public_pem(key))
    return path


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def add(cli: Cli, keys_dir: Path, key_file: Path, *extra: str, project: str = PROJECT) -> str:
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", project, *extra, key_file)
    assert result.status == 0, result.err
    return result.out.strip()


def listed(cli: Cli, keys_dir: Path, *extra: str) -> list[dict[str, Any]]:
    result = cli("keys", "list", "--keys-dir", keys_dir, "--json", *extra)
    assert result.status == 0, result.err
    rows: list[dict[str, Any]] = json.loads(result.out)
    return rows


def error_line(result: Result) -> str:
    """The one stderr line of a failed command, without the prefix."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("authz-server: error: "), result.err
    return lines[0].removeprefix("authz-server: error: ")


def rfc7638(jwk: dict[str, str]) -> str:
    """The thumbprint computed here by hand, independently of the code under test."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = "{" + ",".join(f'"{name}":"{jwk[name]}"' for name in members) + "}"
    return b64(hashlib.sha256(canonical.encode()).digest())


def project_files(keys_dir: Path, project: str = PROJECT) -> list[str]:
    directory = keys_dir / project
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- keygen ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key_type"), [("ES256", ec.EllipticCurvePrivateKey), ("RS256", rsa.RSAPrivateKey)]
)
def test_keygen_writes_a_pkcs8_private_key_0600_and_its_public_key(
    cli: Cli, tmp_path: Path, alg: str, key_type: type
) -> None:
    out = tmp_path / "new" / "customer"
    result = cli("keygen", "--alg", alg, "--out", out)
    assert result.status == 0, result.err
    private_bytes = (out / "private.pem").read_bytes()
    assert private_bytes.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert stat.S_IMODE((out / "private.pem").stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(private_bytes, password=None)
    assert isinstance(private, key_type)
    assert (out / "public.pem").read_bytes() == public_pem(private)  # type: ignore[arg-type]
    assert str(out / "public.pem") in result.out


def test_keygen_refuses_to_overwrite_without_force(cli: Cli, tmp_path: Path) -> None:
    assert cli("keygen", "--alg", "ES256", "--out", tmp_path).status == 0
    before = (tmp_path / "private.pem").read_bytes()
    result = cli("keygen", "--alg", "ES256", "--out", tmp_path)
    assert result.status == 1
    assert error_line(result) == f"{tmp_path / 'private.pem'} already exists (--force replaces it)"
    assert (tmp_path / "private.pem").read_bytes() == before
    assert cli("keygen", "--alg", "ES256", "--out", tmp_path, "--force").status == 0
    assert (tmp_path / "private.pem").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "private.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.pem", "public.pem"]


def test_keygen_bits_are_for_rsa_only(cli: Cli, tmp_path: Path) -> None:
    result = cli("keygen", "--alg", "ES256", "--bits", "4096", "--out", tmp_path)
    assert result.status == 2
    assert "--bits applies to RS256 keys only" in result.err


# -- keys add -------------------------------------------------------------------------


def test_add_prints_a_uuid_and_the_loader_then_serves_the_key(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    result = cli(
        "keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, "--name", "billing",
        public_file(tmp_path, ec_key),
    )  # fmt: skip
    assert result.status == 0, result.err
    kid = result.out.strip()
    assert UUID.fullmatch(kid), result.out
    assert f"added key {kid} (EC P-256, ES256) to project {PROJECT}: 1 of 25 keys" in result.err
    store = KeyStore(keys_dir)
    keys = store.reload().keys_for(PROJECT)
    assert keys is not None
    assert list(keys) == [kid]
    token = mint(ec_key, kid, {"exp": NOW + 60})
    assert decide(token, keys, Policy(), NOW) == Allowed(kid)
    # The sidecar is a dot-file: the loader ignores it, the listing reads it.
    sidecar = json.loads((keys_dir / PROJECT / f".{kid}.json").read_text())
    assert sidecar["name"] == "billing"
    assert sidecar["added"].endswith("Z")
    added = datetime.datetime.fromisoformat(sidecar["added"])
    assert abs(added.timestamp() - time.time()) < 60
    assert not [n for n in project_files(keys_dir) if n.endswith(".tmp")]


def test_add_reads_the_key_from_stdin(cli: Cli, keys_dir: Path, ec_key: PrivateKey) -> None:
    result = cli(
        "keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, "-", stdin=public_pem(ec_key)
    )
    assert result.status == 0, result.err
    assert UUID.fullmatch(result.out.strip())


def test_add_stores_an_rsa_public_key_pem_in_one_canonical_form(
    cli: Cli, tmp_path: Path, keys_dir: Path, rsa_key: PrivateKey
) -> None:
    pkcs1 = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    path = tmp_path / "pkcs1.pem"
    path.write_bytes(b"a comment the operator pasted\n" + pkcs1)
    kid = add(cli, keys_dir, path)
    assert (keys_dir / PROJECT / f"{kid}.pem").read_bytes() == public_pem(rsa_key)


def make_rsa_1024() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def rsa_public_pem_with_exponent(e: int, bits: int = 3072) -> bytes:
    """A public key of a fresh modulus with any exponent (no private key has it)."""
    n = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    public = rsa.RSAPublicNumbers(e, n.public_numbers().n).public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_of(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(
            lambda k: k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "a private key: register only the public key",
            id="private-key",
        ),
        pytest.param(
            lambda k: pem_of(make_rsa_1024()),
            "RSA key of 1024 bits (accepted: 2048 to 8192)",
            id="rsa-1024",
        ),
        pytest.param(
            lambda k: pem_of(ec.generate_private_key(ec.SECP384R1())),
            "EC key on curve secp384r1 (accepted: P-256 for ES256)",
            id="p-384",
        ),
        pytest.param(
            lambda k: pem_of(ed25519.Ed25519PrivateKey.generate()),
            "Ed25519 key (accepted: RSA for RS256, EC P-256 for ES256)",
            id="ed25519",
        ),
        pytest.param(
            lambda k: b"hello, world\n",
            "not a PEM public key (expected BEGIN PUBLIC KEY or RSA PUBLIC KEY)",
            id="garbage",
        ),
        pytest.param(
            lambda k: rsa_public_pem_with_exponent(2**3070 + 1),
            "RSA key with a 3071-bit public exponent (accepted: odd, 3 to 2^32 - 1)",
            id="rsa-3071-bit-exponent",
        ),
        pytest.param(lambda k: b"", "empty file", id="empty"),
        pytest.param(lambda k: b"{", "not valid JSON (expected a JWK)", id="broken-json"),
    ],
)
def test_add_refuses_what_the_loader_refuses_with_its_reason(
    cli: Cli,
    tmp_path: Path,
    keys_dir: Path,
    ec_key: PrivateKey,
    content: Callable[[PrivateKey], bytes],
    reason: str,
) -> None:
    path = tmp_path / "candidate.pem"
    path.write_bytes(content(ec_key))
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, path)
    assert result.status == 1
    assert error_line(result) == f"refused {path}: {reason}"
    assert result.out == ""
    assert [n for n in project_files(keys_dir) if not n.startswith(".")] == []


def test_a_key_file_appears_whole_or_not_at_all(
    tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused with the key written but not yet renamed, a reader sees no key file at all."""
    writing, resume = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def paused_fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")  # the temporary file of the key
        if name.endswith(".tmp") and ".pem." in name and not writing.is_set():
            writing.set()
            assert resume.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", paused_fsync)
    key_file = public_file(tmp_path, ec_key)
    statuses: list[int] = []
    adder = threading.Thread(
        target=lambda: statuses.append(
            main(["keys", "add", "--keys-dir", str(keys_dir), "--project", PROJECT, str(key_file)])
        )
    )
    adder.start()
    try:
        assert writing.wait(10)
        store = KeyStore(keys_dir)
        # Not even a refused file: only the dot-prefixed temporary is there.
        assert store.reload().projects.get(PROJECT) is None
        assert all(name.startswith(".") for name in project_files(keys_dir))
    finally:
        resume.set()
        adder.join(10)
    assert statuses == [0]
    keys = store.reload().keys_for(PROJECT)
    assert keys is not None
    assert len(keys) == 1


def test_add_refuses_a_26th_key_with_a_clear_message(
    cli: Cli, tmp_path: Path, keys_dir: Path
) -> None:
    for _ in range(MAX_KEYS_PER_PROJECT):
        add(cli, keys_dir, public_file(tmp_path, new_ec_key()))
    result = cli(
        "keys", "add", "--keys-dir", keys_dir, "--project", PROJECT,
        public_file(tmp_path, new_ec_key()),
    )  # fmt: skip
    assert result.status == 1
    assert error_line(result) == (
        f"project {PROJECT} already has 25 keys, the most a project may have (25): "
        f"remove one first (authz-server keys remove --keys-dir {keys_dir} --project {PROJECT} ID)"
    )
    assert len([n for n in project_files(keys_dir) if n.endswith(".pem")]) == 25
    # Another project has its own 25.
    add(cli, keys_dir, public_file(tmp_path, new_ec_key()), project="other")


def test_add_refuses_a_key_the_project_already_has(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    path = public_file(tmp_path, ec_key)
    kid = add(cli, keys_dir, path)
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, path)
    assert result.status == 1
    assert error_line(result) == f"project {PROJECT} already has this key, as {kid}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "../escape"], "invalid project id '../escape'"),
        (["--project", ".hidden"], "invalid project id '.hidden'"),
        (["--project", "with space"], "invalid project id 'with space' (1 to 128 of"),
        (["--project", "P1;x"], "invalid project id 'P1;x'"),
        (["--project", "x" * 129], "invalid project id"),
        (["--project", PROJECT, "--name", "a\x1bb"], "--name must be 1 to 200 printable"),
    ],
)
def test_add_refuses_bad_names(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, args: list[str], message: str
) -> None:
    result = cli("keys", "add", "--keys-dir", keys_dir, *args, public_file(tmp_path, ec_key))
    assert result.status == 1
    assert error_line(result).startswith(message)
    assert list(keys_dir.iterdir()) == []


def test_the_tools_never_create_the_keys_directory(
    cli: Cli, tmp_path: Path, ec_key: PrivateKey
) -> None:
    missing = tmp_path / "typo"
    result = cli("keys", "add", "--keys-dir", missing, "--project", PROJECT, public_file(
        tmp_path, ec_key))  # fmt: skip
    assert result.status == 1
    assert error_line(result) == f"keys directory {missing} does not exist"
    assert not missing.exists()


def test_io_errors_are_one_line_not_a_traceback(cli: Cli, tmp_path: Path, keys_dir: Path) -> None:
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, tmp_path / "nope")
    assert result.status == 1
    assert error_line(result) == f"{tmp_path / 'nope'}: No such file or directory"
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, tmp_path)
    assert result.status == 1
    assert error_line(result) == f"{tmp_path}: Is a directory"


# -- keys add: JWK ----------------------------------------------------------------------


def ec_jwk(key: PrivateKey, **extra: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    assert isinstance(numbers, ec.EllipticCurvePublicNumbers)
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
        **extra,
    }


def write_json(tmp_path: Path, document: object) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(document))
    return path


def test_add_accepts_the_rfc7638_jwk_and_lists_its_thumbprint(
    cli: Cli, tmp_path: Path, keys_dir: Path
) -> None:
    result = cli(
        "keys", "add", "--keys-dir", keys_dir, "--project", PROJECT,
        write_json(tmp_path, RFC7638_JWK),
    )  # fmt: skip
    assert result.status == 0, result.err
    kid = result.out.strip()
    assert f"the JWK's kid '2011-04-29' is not used: tokens must carry kid {kid}" in result.err
    (row,) = listed(cli, keys_dir)
    assert row["thumbprint"] == RFC7638_THUMBPRINT
    assert (row["alg"], row["key"], row["status"]) == ("RS256", "RSA-2048", "active")


def test_add_accepts_an_ec_jwk_and_a_jwks_of_one_key(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    first = add(cli, keys_dir, write_json(tmp_path, ec_jwk(ec_key, use="sig", alg="ES256")))
    second = add(cli, keys_dir, write_json(tmp_path, {"keys": [ec_jwk(other_ec_key)]}))
    keys = KeyStore(keys_dir).reload().keys_for(PROJECT)
    assert keys is not None
    assert decide(mint(ec_key, first), keys, Policy(), NOW) == Allowed(first)
    assert decide(mint(other_ec_key, second), keys, Policy(), NOW) == Allowed(second)
    thumbprints = {row["id"]: row["thumbprint"] for row in listed(cli, keys_dir)}
    assert thumbprints == {first: rfc7638(ec_jwk(ec_key)), second: rfc7638(ec_jwk(other_ec_key))}


def rsa_jwk(key: Any) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    n, e = numbers.n, numbers.e
    return {
        "kty": "RSA",
        "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")),
        "e": b64(e.to_bytes((e.bit_length() + 7) // 8, "big")),
    }


def p384_jwk() -> dict[str, str]:
    numbers = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-384",
        "x": b64(numbers.x.to_bytes(48, "big")),
        "y": b64(numbers.y.to_bytes(48, "big")),
    }


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda k: {**ec_jwk(k), "d": b64(b"\x01" * 32)},
            "a private key: register only the public key",
            id="private",
        ),
        pytest.param(
            lambda k: rsa_jwk(make_rsa_1024()),
            "RSA key of 1024 bits (accepted: 2048 to 8192)",
            id="rsa-1024",
        ),
        pytest.param(
            lambda k: p384_jwk(),
            "EC key on curve secp384r1 (accepted: P-256 for ES256)",
            id="p-384",
        ),
        pytest.param(
            lambda k: ec_jwk(k, alg="RS256"),
            'JWK alg "RS256", but this key can verify ES256 only',
            id="alg-mismatch",
        ),
        pytest.param(
            lambda k: ec_jwk(k, use="enc"),
            'JWK use "enc" (a key for tokens has use sig)',
            id="use-enc",
        ),
        pytest.param(
            lambda k: {**ec_jwk(k), "y": ec_jwk(k)["x"]},
            "EC JWK whose x, y is not a point on P-256",
            id="not-on-curve",
        ),
        pytest.param(
            lambda k: {"kty": "oct", "k": b64(b"secret")},
            "a shared secret (kty oct): register a public key",
            id="symmetric",
        ),
        pytest.param(
            lambda k: {"keys": [ec_jwk(k), ec_jwk(k)]},
            "a JWKS with 2 keys: add one key at a time",
            id="jwks-of-two",
        ),
        pytest.param(
            lambda k: {**ec_jwk(k), "x": "not base64!"},
            "JWK member x is not base64url",
            id="bad-base64",
        ),
    ],
)
def test_add_refuses_jwks_by_the_same_rules(
    cli: Cli,
    tmp_path: Path,
    keys_dir: Path,
    ec_key: PrivateKey,
    make: Callable[[PrivateKey], object],
    reason: str,
) -> None:
    path = write_json(tmp_path, make(ec_key))
    result = cli("keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, path)
    assert result.status == 1
    assert error_line(result) == f"refused {path}: {reason}"


# -- keys list ---------------------------------------------------------------------------


def test_list_shows_every_key_file_and_why_refused_ones_are_refused(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, rsa_key: PrivateKey
) -> None:
    es = add(cli, keys_dir, public_file(tmp_path, ec_key), "--name", "mobile app")
    rs = add(cli, keys_dir, public_file(tmp_path, rsa_key), project="other-project")
    (keys_dir / PROJECT / "broken.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n")
    (keys_dir / PROJECT / "notes.txt").write_text("ignored: not a .pem")

    result = cli("keys", "list", "--keys-dir", keys_dir)
    assert result.status == 0, result.err
    header, *lines = result.out.splitlines()
    assert header.split() == [
        "PROJECT", "ID", "NAME", "ALG", "KEY", "ADDED", "THUMBPRINT", "STATUS",
    ]  # fmt: skip
    assert len(lines) == 3
    (es_line,) = [line for line in lines if es in line]
    assert re.search(
        rf"{PROJECT}  {es}  mobile app  ES256  EC P-256  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC  "
        rf"{rfc7638(ec_jwk(ec_key))}  active$",
        es_line,
    ), es_line
    (rs_line,) = [line for line in lines if rs in line]
    assert "RS256" in rs_line
    assert "RSA-2048" in rs_line
    (broken,) = [line for line in lines if " broken " in line]
    assert broken.endswith("refused: unreadable PEM public key")

    only = listed(cli, keys_dir, "--project", PROJECT)
    assert [(r["id"], r["status"]) for r in only] == [(es, "active"), ("broken", "refused")]
    assert only[1] == {
        "project": PROJECT,
        "id": "broken",
        "name": None,
        "status": "refused",
        "reason": "unreadable PEM public key",
        "alg": None,
        "key": None,
        "added": only[1]["added"],
        "thumbprint": None,
    }


def test_list_marks_keys_past_the_limit_as_the_loader_does(
    cli: Cli, tmp_path: Path, keys_dir: Path
) -> None:
    directory = keys_dir / PROJECT
    directory.mkdir()
    for index in range(MAX_KEYS_PER_PROJECT + 1):  # placed by hand, bypassing keys add
        path = directory / f"k{index:02}.pem"
        path.write_bytes(public_pem(new_ec_key()))
        os.utime(path, (NOW + index, NOW + index))
    rows = listed(cli, keys_dir)
    assert [r["status"] for r in rows] == ["active"] * 25 + ["refused"]
    assert rows[-1]["id"] == "k25"
    assert rows[-1]["reason"] == "over the limit of 25 keys (the oldest stay active)"


def test_list_of_nothing_says_so(cli: Cli, keys_dir: Path) -> None:
    result = cli("keys", "list", "--keys-dir", keys_dir)
    assert (result.status, result.out) == (0, "")
    assert result.err == f"authz-server: no key files in {keys_dir}\n"
    assert listed(cli, keys_dir, "--project", PROJECT) == []


def test_list_escapes_control_characters_in_file_names(cli: Cli, keys_dir: Path) -> None:
    write_key(keys_dir / PROJECT, "evil\x1b[2J", new_ec_key())
    result = cli("keys", "list", "--keys-dir", keys_dir)
    assert "\x1b" not in result.out
    assert "evil\\x1b[2J" in result.out


# -- keys remove, keys export ------------------------------------------------------------------


def test_remove_deletes_the_key_and_its_sidecar(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key), "--name", "old")
    keep = add(cli, keys_dir, public_file(tmp_path, other_ec_key))
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid)
    assert result.status == 0, result.err
    assert result.out == f"removed key {kid} from project {PROJECT}\n"
    assert result.err == ""
    assert not [name for name in project_files(keys_dir) if kid in name]
    keys = KeyStore(keys_dir).reload().keys_for(PROJECT)
    assert keys is not None
    assert list(keys) == [keep]
    assert decide(mint(ec_key, kid), keys, Policy(), NOW) == decide(
        mint(ec_key, kid), {keep: keys[keep]}, Policy(), NOW
    )


def test_removing_the_last_key_with_open_warns_that_the_project_is_open(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid, "--open")
    assert result.status == 0
    assert result.err == (
        f"authz-server: warning: project {PROJECT} has no keys left: "
        "its requests now pass without a JWT\n"
    )
    assert KeyStore(keys_dir).reload().keys_for(PROJECT) is None


@pytest.mark.parametrize("project", [PROJECT, "no-such-project"])
def test_removing_an_unknown_id_is_an_error(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, project: str
) -> None:
    add(cli, keys_dir, public_file(tmp_path, ec_key))
    unknown = str(uuid.uuid4())
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", project, unknown)
    assert result.status == 1
    assert error_line(result) == (
        f"project {project} has no key {unknown} (see: authz-server keys list "
        f"--keys-dir {keys_dir} --project {project})"
    )
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", project, "../x")
    assert (result.status, error_line(result)) == (
        1,
        "invalid key id '../x' (1 to 128 of A-Z a-z 0-9 _ -)",
    )


def test_export_is_a_jwks_whose_thumbprints_are_those_of_the_list(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, rsa_key: PrivateKey
) -> None:
    es = add(cli, keys_dir, public_file(tmp_path, ec_key))
    rs = add(cli, keys_dir, public_file(tmp_path, rsa_key))
    (keys_dir / PROJECT / "refused.pem").write_text("garbage")
    result = cli("keys", "export", "--keys-dir", keys_dir, "--project", PROJECT)
    assert result.status == 0, result.err
    jwks = json.loads(result.out)
    by_kid = {jwk["kid"]: jwk for jwk in jwks["keys"]}
    assert set(by_kid) == {es, rs}  # active keys only
    assert by_kid[es] == {"kty": "EC", "use": "sig", "alg": "ES256", "kid": es} | {
        k: v for k, v in ec_jwk(ec_key).items() if k != "kty"
    }
    assert by_kid[rs] == {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": rs} | {
        k: v for k, v in rsa_jwk(rsa_key).items() if k != "kty"
    }
    listed_prints = {r["id"]: r["thumbprint"] for r in listed(cli, keys_dir) if r["thumbprint"]}
    assert listed_prints == {kid: rfc7638(jwk) for kid, jwk in by_kid.items()}

    # And back: each exported JWK registers as the same key elsewhere.
    for jwk in jwks["keys"]:
        add(cli, keys_dir, write_json(tmp_path, jwk), project="copy")
    copied = {r["thumbprint"] for r in listed(cli, keys_dir, "--project", "copy")}
    assert copied == set(listed_prints.values())


def test_export_of_a_project_without_keys_is_an_empty_set(cli: Cli, keys_dir: Path) -> None:
    result = cli("keys", "export", "--keys-dir", keys_dir, "--project", PROJECT)
    assert result.status == 0
    assert json.loads(result.out) == {"keys": []}
    assert "has no active keys" in result.err


# -- token ---------------------------------------------------------------------------------


def private_file(tmp_path: Path, key: Any, name: str = "private.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def decoded(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(claims))),
    )


@pytest.mark.parametrize(("fixture", "alg"), [("ec_key", "ES256"), ("rsa_key", "RS256")])
def test_token_signs_with_the_keys_algorithm_and_expires_in_10_minutes_by_default(
    cli: Cli, tmp_path: Path, request: pytest.FixtureRequest, fixture: str, alg: str
) -> None:
    key = request.getfixturevalue(fixture)
    before = int(time.time())
    result = cli("token", "--key", private_file(tmp_path, key), "--kid", "k1")
    after = int(time.time())
    assert result.status == 0, result.err
    token = result.out.strip()
    header, claims = decoded(token)
    assert header == {"alg": alg, "typ": "JWT", "kid": "k1"}
    assert set(claims) == {"exp", "iat"}
    assert before + 600 <= claims["exp"] <= after + 600
    assert before <= claims["iat"] <= after
    keys = {"k1": verify_key("k1", key)}
    assert decide(token, keys, Policy(), time.time()) == Allowed("k1")


def test_token_times_durations_timestamps_and_audiences(
    cli: Cli, tmp_path: Path, ec_key: PrivateKey
) -> None:
    key = private_file(tmp_path, ec_key)
    result = cli(
        "token", "--key", key, "--kid", "k", "--exp", "2h", "--nbf=-30s",
        "--aud", "a.example", "--aud", "b.example",
    )  # fmt: skip
    _, claims = decoded(result.out.strip())
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["nbf"] - claims["iat"] == -30
    assert claims["aud"] == ["a.example", "b.example"]

    result = cli("token", "--key", key, "--kid", "k", "--no-exp", "--nbf", "1800000000")
    _, claims = decoded(result.out.strip())
    assert "exp" not in claims
    assert claims["nbf"] == 1_800_000_000

    result = cli("token", "--key", key, "--kid", "k", "--exp", "1d", "--aud", "one")
    _, claims = decoded(result.out.strip())
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["aud"] == "one"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exp", "600"], "600 is a unix time in 1970; for a duration write 600s"),
        (["--exp", "soon"], "not a time: 'soon'"),
        (["--exp", "10m", "--no-exp"], "not allowed with argument"),
        (["--kid", ""], "argument --kid: invalid key id ''"),
    ],
)
def test_token_usage_errors_exit_2(
    cli: Cli, tmp_path: Path, ec_key: PrivateKey, args: list[str], message: str
) -> None:
    result = cli("token", "--key", private_file(tmp_path, ec_key), "--kid", "k", *args)
    assert result.status == 2
    assert message in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda tmp, k: public_file(tmp, k),
            "{path} is a public key: --key takes the private one",
            id="public-key",
        ),
        pytest.param(
            lambda tmp, k: private_file(tmp, ec.generate_private_key(ec.SECP384R1())),
            "{path}: the server would refuse its public key: "
            "EC key on curve secp384r1 (accepted: P-256 for ES256)",
            id="p-384",
        ),
        pytest.param(
            lambda tmp, k: private_file(tmp, make_rsa_1024()),
            "{path}: the server would refuse its public key: "
            "RSA key of 1024 bits (accepted: 2048 to 8192)",
            id="rsa-1024",
        ),
        pytest.param(
            lambda tmp, k: private_file(tmp, ed25519.Ed25519PrivateKey.generate()),
            "{path}: Ed25519 keys cannot sign RS256 or ES256",
            id="ed25519",
        ),
    ],
)
def test_token_refuses_keys_the_server_could_not_verify(
    cli: Cli,
    tmp_path: Path,
    ec_key: PrivateKey,
    make: Callable[[Path, PrivateKey], Path],
    message: str,
) -> None:
    path = make(tmp_path, ec_key)
    result = cli("token", "--key", path, "--kid", "k")
    assert result.status == 1
    assert error_line(result) == message.format(path=path)


def test_token_refuses_an_encrypted_private_key(
    cli: Cli, tmp_path: Path, ec_key: PrivateKey
) -> None:
    path = tmp_path / "enc.pem"
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    result = cli("token", "--key", path, "--kid", "k")
    assert result.status == 1
    assert error_line(result) == f"{path} is encrypted: decrypt it first (openssl pkey)"


# -- check ---------------------------------------------------------------------------------


@pytest.fixture
def protected(cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey) -> str:
    """PROJECT with one ES256 key; returns its key id."""
    return add(cli, keys_dir, public_file(tmp_path, ec_key))


def check(cli: Cli, keys_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return cli(
        "check", "--keys-dir", keys_dir, "--project", PROJECT, "--now", str(NOW), *args,
        stdin=stdin,
    )  # fmt: skip


def test_check_allows_a_good_token_and_shows_header_and_claims(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str
) -> None:
    token = mint(ec_key, protected, {"exp": NOW + 590, "iat": NOW - 10, "aud": "x"})
    result = check(cli, keys_dir, token)
    assert result.status == 0, result.err
    assert result.out == (
        f"project   {PROJECT} (1 active key(s))\n"
        f'header    {{"alg": "ES256", "typ": "JWT", "kid": "{protected}"}}\n'
        f'claims    {{"exp": {NOW + 590}, "iat": {NOW - 10}, "aud": "x"}}\n'
        "  exp     2023-11-14 22:23:10 UTC (expires in 9 min)\n"
        "  iat     2023-11-14 22:13:10 UTC (issued 10 s ago)\n"
        f"answer    allowed (kid {protected})\n"
    )
    assert result.err == ""


def denial_tokens(key: PrivateKey, other: PrivateKey, kid: str) -> dict[Reason, str]:
    return {
        Reason.MISSING_TOKEN: "",
        Reason.MALFORMED: "not-a-jwt",
        Reason.UNSUPPORTED_ALGORITHM: mint(key, kid, header={"alg": "HS256"}),
        Reason.EMPTY_KEY_ID: mint(key, ""),
        Reason.UNKNOWN_KEY_ID: mint(key, "someone-elses-key"),
        Reason.BAD_SIGNATURE: mint(other, kid),
        Reason.EXPIRED: mint(key, kid, {"exp": NOW - 1}),
        Reason.NOT_YET_VALID: mint(key, kid, {"nbf": NOW + 3600}),
        Reason.BAD_AUDIENCE: mint(key, kid, {"aud": "evil.example"}),
    }


# Row 0 is about the path, not the token: `check` refuses an invalid --project (exit 2).
@pytest.mark.parametrize("reason", TABLE_REASONS[1:], ids=lambda r: r.code)
def test_check_gives_the_exact_denial_of_the_gate(
    cli: Cli,
    keys_dir: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    protected: str,
    reason: Reason,
) -> None:
    token = denial_tokens(ec_key, other_ec_key, protected)[reason]
    result = check(cli, keys_dir, "--audience-suffix", ".my-app.example", token)
    assert result.status == 1, result.out
    assert f"answer    denied: {reason.message}\n" in result.out
    assert f"body      403 {deny_body(reason, PROJECT)}\n" in result.out


def test_check_decodes_what_it_can_of_a_malformed_token(cli: Cli, keys_dir: Path) -> None:
    write_key(keys_dir / PROJECT, "k", new_ec_key())
    token = segment({"alg": "ES256", "kid": "k"}) + ".%%%." + "sig"
    result = check(cli, keys_dir, token)
    assert result.status == 1
    assert 'header    {"alg": "ES256", "kid": "k"}\n' in result.out
    assert "claims    not base64url\n" in result.out
    assert "denied: invalid JWT token (malformatted token)" in result.out
    result = check(cli, keys_dir, segment({"exp": "soon"}))
    assert "claims    token has 1 part, expected 3 separated by dots\n" in result.out
    result = check(cli, keys_dir, segment([1]) + "." + segment({"exp": "soon", "nbf": 1e300}) + ".")
    assert "header    [1]\n" in result.out
    assert '  exp     "soon" (not a number)\n' in result.out
    assert "  nbf     1e+300 (out of range)\n" in result.out
    assert result.status == 1


def test_check_reads_stdin_and_a_bearer_header_value(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str
) -> None:
    token = mint(ec_key, protected)
    assert check(cli, keys_dir, "-", stdin=f"{token}\n").status == 0
    assert check(cli, keys_dir, stdin=f"Bearer   {token}\n").status == 0
    assert check(cli, keys_dir, f"bearer {token}").status == 0


def test_check_applies_leeway_and_audience_suffix_like_serve(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str
) -> None:
    token = mint(ec_key, protected, {"exp": NOW - 5, "aud": "node.My-App.example"})
    assert check(cli, keys_dir, token).status == 1
    assert check(cli, keys_dir, "--leeway", "10", token).status == 0
    result = check(cli, keys_dir, "--leeway", "10", "--audience-suffix", "my-app.example", token)
    assert result.status == 0
    result = check(cli, keys_dir, "--leeway", "10", "--audience-suffix", ".other", token)
    assert "denied: invalid JWT token (invalid audience)" in result.out
    result = check(cli, keys_dir, "--leeway", "-1", token)
    assert result.status == 2
    assert "must be a finite number >= 0" in result.err


def test_check_of_a_project_without_keys_says_it_does_not_use_jwt(cli: Cli, keys_dir: Path) -> None:
    result = check(cli, keys_dir, "")
    assert result.status == 0
    assert result.out == (
        f"project   {PROJECT} (no keys)\n"
        "token     none\n"
        f"answer    allowed (project {PROJECT} has no keys: it does not use JWT)\n"
    )


def test_check_json_for_scripts(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str
) -> None:
    result = check(cli, keys_dir, "--json", mint(ec_key, protected, {"exp": NOW - 1}))
    assert result.status == 1
    report = json.loads(result.out)
    assert report == {
        "project": PROJECT,
        "allowed": False,
        "would_deny": None,  # only for report-only projects
        "kid": protected,
        "answer": "denied: invalid JWT token (expired token)",
        "why": "its exp has passed (with the leeway): sign a new token",
        "status": 403,
        "body": json.loads(deny_body(Reason.EXPIRED, PROJECT)),
        "header": {"alg": "ES256", "typ": "JWT", "kid": protected},
        "claims": {"exp": NOW - 1},
    }


def test_check_warns_about_refused_key_files(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str
) -> None:
    (keys_dir / PROJECT / "broken.pem").write_text("")
    result = check(cli, keys_dir, mint(ec_key, protected))
    assert result.status == 0
    assert result.err == (
        f"authz-server: warning: refused key file {keys_dir / PROJECT / 'broken.pem'}: empty file\n"
    )


def test_check_works_offline(
    cli: Cli, keys_dir: Path, ec_key: PrivateKey, protected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("check opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert check(cli, keys_dir, mint(ec_key, protected)).status == 0


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--keys-dir", "/nonexistent/keys", "--project", PROJECT, "x"], 2, "does not exist"),
        (["--project", PROJECT, "x"], 2, "--keys-dir"),
        (["--keys-dir", ".", "--project", "a/b", "x"], 2, "invalid project id 'a/b'"),
    ],
)
def test_check_that_cannot_answer_exits_2(
    cli: Cli, args: list[str], status: int, message: str
) -> None:
    result = cli("check", *args)
    assert result.status == status
    assert message in result.err


# -- help and small parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["keygen"],
        ["keys"],
        ["keys", "add"],
        ["keys", "list"],
        ["keys", "remove"],
        ["keys", "export"],
        ["token"],
        ["check"],
    ],
)
def test_every_command_has_help_with_an_example(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.status == 0
    assert "example" in result.out
    assert "authz-server " + command[0] in result.out.split("example", 1)[1]


def test_keys_dir_comes_from_the_environment_like_serve(
    cli: Cli, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHZ_KEYS_DIR", str(keys_dir))
    result = cli("keys", "list")
    assert result.status == 0
    assert "no key files in" in result.err


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("30s", 1000, 1030),
        ("10m", 1000, 1600),
        ("2h", 1000, 8200),
        ("1d", 1000, 87400),
        ("-5m", 1000, 700),
        ("+1h", 1000, 4600),
        ("now", 1000.9, 1000),
        ("1719511840", 1000, 1719511840),
    ],
)
def test_times_are_durations_from_now_or_timestamps(text: str, now: float, expected: int) -> None:
    assert time_spec(text).at(now) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (599, "9 min"), (3600, "1 h"), (7500, "2 h 5 min"),
     (86400, "1 d"), (90000, "1 d 1 h"), (-120, "2 min")],
)  # fmt: skip
def test_spans_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert span(seconds) == text
