"""The settings on the command line: ``project show|set|lock|unlock``, ``keys remove`` of a
project's last key, and ``check --origin/--ip``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from authz_server.keystore import KeyStore
from authz_server.settings import SETTINGS_FILE, parse_settings
from authz_server.tokens import PrivateKey, mint
from tests import test_admin
from tests.test_admin import PROJECT, Cli, add, public_file

# ``authz-server ARGS`` in this process: test_admin's fixture, shared.
cli = test_admin.cli


def settings_text(keys_dir: Path) -> str:
    return (keys_dir / PROJECT / SETTINGS_FILE).read_text()


def test_lock_writes_require_jwt_and_unlock_removes_it(cli: Cli, keys_dir: Path) -> None:
    result = cli("project", "lock", "--keys-dir", keys_dir, PROJECT)
    assert result.status == 0, result.err
    assert result.out == f"project {PROJECT}: require_jwt=true\n"
    assert parse_settings(settings_text(keys_dir).encode()).require_jwt
    assert KeyStore(keys_dir).reload().keys_for(PROJECT) == {}  # locked: no key serves
    result = cli("project", "unlock", "--keys-dir", keys_dir, PROJECT)
    assert (result.status, result.out) == (0, f"project {PROJECT}: default settings\n")
    assert not (keys_dir / PROJECT / SETTINGS_FILE).exists()
    assert KeyStore(keys_dir).reload().keys_for(PROJECT) is None


def test_set_takes_toml_values_or_plain_text_and_removes_with_an_empty_value(
    cli: Cli, keys_dir: Path
) -> None:
    result = cli(
        "project",
        "set",
        "--keys-dir",
        keys_dir,
        PROJECT,
        'allowed_ips=["203.0.113.0/24"]',
        "max_token_lifetime=1h",
        "report_only=true",
        'claims_to_headers={sub="x-jwt-sub"}',
    )
    assert result.status == 0, result.err
    assert "report-only" in result.err
    settings = parse_settings(settings_text(keys_dir).encode())
    assert settings.max_token_lifetime == 3600
    assert settings.report_only
    assert settings.claims_to_headers == (("sub", "x-jwt-sub"),)
    assert cli("project", "set", "--keys-dir", keys_dir, PROJECT, "report_only=").status == 0
    assert not parse_settings(settings_text(keys_dir).encode()).report_only
    assert "allowed_ips" in settings_text(keys_dir)


def test_set_refuses_what_the_server_would_refuse_and_writes_nothing(
    cli: Cli, keys_dir: Path
) -> None:
    assert cli("project", "lock", "--keys-dir", keys_dir, PROJECT).status == 0
    before = settings_text(keys_dir)
    for assignment, words in [
        ('allowed_ips=["203.0.113.1/24"]', "has host bits set"),
        ("allowed_origins=https://a.example", "allowed_origins: a list of strings"),
        ("max_token_lifetime=forever", "is not a duration"),
        ("requre_jwt=true", "unknown setting 'requre_jwt'"),
        ("nonsense", "expected KEY=VALUE"),
    ]:
        result = cli("project", "set", "--keys-dir", keys_dir, PROJECT, assignment)
        assert result.status == 1, assignment
        assert words in result.err, result.err
        assert result.err.count("\n") == 1
    assert settings_text(keys_dir) == before
    assert [p.name for p in (keys_dir / PROJECT).iterdir() if p.name.endswith(".tmp")] == []


def test_set_refuses_to_overwrite_a_file_that_is_not_toml(cli: Cli, keys_dir: Path) -> None:
    (keys_dir / PROJECT).mkdir()
    (keys_dir / PROJECT / SETTINGS_FILE).write_text("require_jwt = = true\n")
    result = cli("project", "lock", "--keys-dir", keys_dir, PROJECT)
    assert result.status == 1
    assert "fix or remove it first" in result.err
    assert settings_text(keys_dir) == "require_jwt = = true\n"


def test_show_prints_the_settings_in_force_and_a_refused_files_reason(
    cli: Cli, keys_dir: Path
) -> None:
    assert cli("project", "set", "--keys-dir", keys_dir, PROJECT, "leeway=30").status == 0
    shown = cli("project", "show", "--keys-dir", keys_dir, PROJECT, "--json")
    assert shown.status == 0
    report = json.loads(shown.out)
    assert report["state"] == "in force"
    assert report["settings"] == {"leeway": 30.0}
    (keys_dir / PROJECT / SETTINGS_FILE).write_text("leeway = -1\n")
    shown = cli("project", "show", "--keys-dir", keys_dir, PROJECT)
    assert shown.status == 1
    assert "none loaded: a server starting now denies every request" in shown.out
    assert "leeway: must be a finite number of seconds >= 0 (bad_value)" in shown.out
    empty = cli("project", "show", "--keys-dir", keys_dir, "another-project")
    assert (empty.status, "none (defaults)" in empty.out) == (0, True)


def test_removing_the_last_key_locks_the_project_by_default(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid)
    assert result.status == 0, result.err
    assert "is locked (require_jwt = true)" in result.err
    assert "project unlock" in result.err
    assert parse_settings(settings_text(keys_dir).encode()).require_jwt
    assert KeyStore(keys_dir).reload().keys_for(PROJECT) == {}  # every request denied


def test_removing_a_key_that_is_not_the_last_changes_no_settings(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    add(cli, keys_dir, public_file(tmp_path, other_ec_key))
    assert cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid).status == 0
    assert not (keys_dir / PROJECT / SETTINGS_FILE).exists()


def test_check_takes_the_requests_origin_and_address(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    assert (
        cli(
            "project",
            "set",
            "--keys-dir",
            keys_dir,
            PROJECT,
            'allowed_ips=["203.0.113.0/24"]',
            'allowed_origins=["https://app.example.com"]',
        ).status
        == 0
    )
    token = mint(ec_key, kid, {"exp": int(time.time()) + 600})
    base = ("check", "--keys-dir", keys_dir, "--project", PROJECT, token)
    denied = cli(*base, "--json")
    assert denied.status == 1
    assert json.loads(denied.out)["body"]["message"] == "ip address not allowed"
    denied = cli(*base, "--ip", "::ffff:203.0.113.9", "--json")
    assert json.loads(denied.out)["body"]["message"] == "origin not allowed"
    allowed = cli(*base, "--ip", "203.0.113.9", "--origin", "https://app.example.com")
    assert allowed.status == 0, allowed.out
    assert f"allowed (kid {kid})" in allowed.out


def test_check_shows_what_a_report_only_project_would_deny(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    add(cli, keys_dir, public_file(tmp_path, ec_key))
    assert cli("project", "set", "--keys-dir", keys_dir, PROJECT, "report_only=true").status == 0
    result = cli("check", "--keys-dir", keys_dir, "--project", PROJECT, "Bearer")
    assert result.status == 0
    assert "allowed (report only; would be denied: missing JWT token)" in result.out


def test_a_fifo_in_place_of_the_settings_file_is_refused_not_waited_on(
    cli: Cli, keys_dir: Path
) -> None:
    """The tooling reads the settings file as the server does: bounded, never blocking (a
    FIFO used to hang `project lock`, holding the project's lock)."""
    (keys_dir / PROJECT).mkdir()
    os.mkfifo(keys_dir / PROJECT / SETTINGS_FILE)
    result = cli("project", "lock", "--keys-dir", keys_dir, PROJECT)
    assert result.status == 1
    assert "not a regular file" in result.err
    assert "fix or remove it first" in result.err


def test_removing_the_last_key_says_when_report_only_still_lets_requests_through(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    assert cli("project", "set", "--keys-dir", keys_dir, PROJECT, "report_only=true").status == 0
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid)
    assert result.status == 0, result.err
    assert "report_only = true: its requests still pass" in result.err


def test_removing_the_last_key_with_open_says_an_earlier_lock_stays(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    assert cli("project", "lock", "--keys-dir", keys_dir, PROJECT).status == 0
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid, "--open")
    assert result.status == 0, result.err
    assert "is locked (require_jwt = true)" in result.err
    assert "pass without a JWT" not in result.err


def test_a_last_key_behind_a_refused_settings_file_is_kept_and_the_way_out_named(
    cli: Cli, tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    kid = add(cli, keys_dir, public_file(tmp_path, ec_key))
    (keys_dir / PROJECT / SETTINGS_FILE).write_text("foo = 1\n")  # TOML, but refused
    result = cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, kid)
    assert result.status == 1
    assert f"key {kid} not removed" in result.err
    assert "--open" in result.err
    assert (keys_dir / PROJECT / f"{kid}.pem").exists()
