"""The keys directory: what loads, what is refused, and hot reload (docs/contract.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz_server.keystore import MAX_KEYS_PER_PROJECT, KeyStore
from authz_server.tokens import PrivateKey, generate_private_key, public_pem
from tests.support import wait_for, write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
RELOAD_DEADLINE = 1.0  # the contract: changes take effect within 1 second


@contextlib.contextmanager
def _watching(keys_dir: Path, rescan_interval: float) -> Iterator[KeyStore]:
    store = KeyStore(keys_dir)
    store.reload()
    stop = threading.Event()
    thread = threading.Thread(
        target=store.watch, args=(stop,), kwargs={"rescan_interval": rescan_interval}
    )
    thread.start()
    assert store.watching.wait(5), "the watcher never armed"
    try:
        yield store
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture
def watched(keys_dir: Path) -> Iterator[KeyStore]:
    with _watching(keys_dir, rescan_interval=0.5) as store:
        yield store


def kids(store: KeyStore, project: str = PROJECT) -> set[str] | None:
    keys = store.snapshot.keys_for(project)
    return None if keys is None else set(keys)


def _rsa_pkcs1(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )


# -- what loads --------------------------------------------------------------


def test_rsa_spki_rsa_pkcs1_and_p256_public_keys_load(
    keys_dir: Path, rsa_key: PrivateKey, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "rsa-spki", public_pem(rsa_key))
    write_key(keys_dir / PROJECT, "rsa-pkcs1", _rsa_pkcs1(rsa_key))
    write_key(keys_dir / PROJECT, "ec", public_pem(ec_key))
    store = KeyStore(keys_dir)
    keys = store.reload().keys_for(PROJECT)
    assert keys is not None
    assert {kid: key.alg for kid, key in keys.items()} == {
        "rsa-spki": "RS256",
        "rsa-pkcs1": "RS256",
        "ec": "ES256",
    }


DATA = Path(__file__).parent / "data"


def test_rsa_keys_of_8192_bits_load_and_larger_ones_are_refused(keys_dir: Path) -> None:
    # Pre-generated: making an 8192-bit key takes seconds.
    write_key(keys_dir / PROJECT, "big", (DATA / "rsa-8192.pub.pem").read_bytes())
    write_key(keys_dir / PROJECT, "too-big", (DATA / "rsa-8200.pub.pem").read_bytes())
    assert kids(_loaded(keys_dir)) == {"big"}


def _loaded(keys_dir: Path) -> KeyStore:
    store = KeyStore(keys_dir)
    store.reload()
    return store


def _private_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


REFUSED = {
    "empty": lambda: b"",
    "whitespace": lambda: b"\n  \n",
    "garbage": lambda: b"hello, I am not a key\n",
    "rsa-private": lambda: _private_pem(rsa.generate_private_key(65537, 2048)),
    "ec-private": lambda: _private_pem(ec.generate_private_key(ec.SECP256R1())),
    "rsa-1024": lambda: public_pem(rsa.generate_private_key(65537, 1024)),
    "p384": lambda: public_pem(ec.generate_private_key(ec.SECP384R1())),
    "secp256k1": lambda: public_pem(ec.generate_private_key(ec.SECP256K1())),
    "ed25519": lambda: (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ),
    "truncated-pem": lambda: public_pem(generate_private_key("ES256"))[:60],
    "two-keys": lambda: public_pem(generate_private_key("ES256")) * 2,
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_refused_key_file_logs_one_line_and_the_others_keep_working(
    kind: str,
    keys_dir: Path,
    ec_key: PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_key(keys_dir / PROJECT, "good", public_pem(ec_key))
    bad = write_key(keys_dir / PROJECT, "bad", REFUSED[kind]())
    write_key(keys_dir / "other-project", "fine", public_pem(ec_key))
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        store = _loaded(keys_dir)
    assert kids(store) == {"good"}
    assert kids(store, "other-project") == {"fine"}
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert str(bad) in refusals[0]


def test_refusal_reasons_say_why(keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = {
        "rsa-1024": "RSA key of 1024 bits",
        "p384": "curve secp384r1",
        "rsa-private": "private key",
        "empty": "empty file",
        "ed25519": "Ed25519",
        "garbage": "not a PEM public key",
    }
    for kind in expected:
        write_key(keys_dir / PROJECT, kind, REFUSED[kind]())
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        _loaded(keys_dir)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for kind, reason in expected.items():
        line = next(line for line in text.splitlines() if f"{kind}.pem" in line)
        assert reason in line


def test_refusals_are_data_every_file_with_its_reason(keys_dir: Path, ec_key: PrivateKey) -> None:
    pem = public_pem(ec_key)
    for i in range(MAX_KEYS_PER_PROJECT + 1):
        write_key(keys_dir / PROJECT, f"k{i:02d}", pem, mtime=1_600_000_000 + i)
    write_key(keys_dir / PROJECT, "empty", b"")
    entry = _loaded(keys_dir).snapshot.projects[PROJECT]
    assert entry.refused == (
        ("empty.pem", "empty file", "empty_file"),
        (
            f"k{MAX_KEYS_PER_PROJECT}.pem",
            "over the limit of 25 keys (the oldest stay active)",
            "too_many_keys",
        ),
    )


def test_refusals_of_one_kind_share_a_code_and_are_summed_under_it(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for bits in (1024, 1536):
        small = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        write_key(keys_dir / PROJECT, f"rsa{bits}", public_pem(small))
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        entry = _loaded(keys_dir).snapshot.projects[PROJECT]
    assert {refusal.code for refusal in entry.refused} == {"rsa_size"}
    (summary,) = [r for r in caplog.records if getattr(r, "event", None) == "keys_refused"]
    assert summary.reasons == {"RSA key of 1024 bits (accepted: 2048 to 8192)": 2}  # type: ignore[attr-defined]


def test_a_refusal_never_quotes_the_file(keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = _private_pem(ec.generate_private_key(ec.SECP256R1()))
    write_key(keys_dir / PROJECT, "oops", secret)
    with caplog.at_level(logging.DEBUG):
        _loaded(keys_dir)
    body = secret.decode().splitlines()[1]
    assert body not in caplog.text


# -- which files count -------------------------------------------------------


def test_dot_files_and_files_not_ending_in_pem_are_ignored(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    project = keys_dir / PROJECT
    write_key(project, "real", public_pem(ec_key))
    (project / ".hidden.pem").write_bytes(public_pem(ec_key))
    (project / ".real.pem.swp").write_bytes(b"junk")
    (project / "notes.txt").write_bytes(b"junk")
    (project / "real.pem.bak").write_bytes(public_pem(ec_key))
    (project / "..data").mkdir()
    (keys_dir / ".hidden-project").mkdir()
    write_key(keys_dir / ".hidden-project", "k", public_pem(ec_key))
    store = _loaded(keys_dir)
    assert kids(store) == {"real"}
    assert set(store.snapshot.projects) == {PROJECT}


def test_symlinked_files_and_directories_are_followed(
    tmp_path: Path, keys_dir: Path, ec_key: PrivateKey
) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_key(elsewhere / "proj", "linked-target", public_pem(ec_key))
    (keys_dir / "linked-project").symlink_to(elsewhere / "proj", target_is_directory=True)
    (keys_dir / PROJECT).mkdir()
    (keys_dir / PROJECT / "via-link.pem").symlink_to(elsewhere / "proj" / "linked-target.pem")
    store = _loaded(keys_dir)
    assert kids(store, "linked-project") == {"linked-target"}
    assert kids(store) == {"via-link"}


@pytest.mark.parametrize(
    "name", ["my.key", "a b", "k;x", "k%20", "é", "x" * 129], ids=["dot", "space", "semicolon",
    "percent", "non-ascii", "129-chars"]
)  # fmt: skip
def test_a_key_file_whose_name_is_no_key_id_is_refused_and_the_others_load(
    keys_dir: Path, ec_key: PrivateKey, name: str
) -> None:
    write_key(keys_dir / PROJECT, "good", public_pem(ec_key))
    write_key(keys_dir / PROJECT, name, public_pem(ec_key))
    store = _loaded(keys_dir)
    assert kids(store) == {"good"}
    assert store.snapshot.projects[PROJECT].refused == (
        (
            f"{name}.pem",
            "the file name is not a key id (1 to 128 of A-Z a-z 0-9 _ -)",
            "bad_key_id",
        ),
    )


def test_a_project_whose_only_key_file_is_misnamed_stays_locked(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "my.key", public_pem(ec_key))
    assert kids(_loaded(keys_dir)) == set()


@pytest.mark.parametrize("name", ["P1;x", "a b", "p.q", "x" * 129])
def test_a_project_directory_whose_name_is_no_project_id_is_refused_once_with_a_log_line(
    keys_dir: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    write_key(keys_dir / PROJECT, "good", public_pem(ec_key))
    write_key(keys_dir / name, "k", public_pem(ec_key))
    store = KeyStore(keys_dir)
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        store.reload()
        store.reload()
        store.reload([name])
    assert set(store.snapshot.projects) == {PROJECT}
    messages = [r.getMessage() for r in caplog.records]
    refusals = [m for m in messages if m.startswith("refused project directory")]
    assert len(refusals) == 1
    assert refusals[0].endswith(": not a project id (1 to 128 of A-Z a-z 0-9 _ -)")


def test_a_directory_named_like_a_key_is_refused_not_loaded(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "good", public_pem(ec_key))
    (keys_dir / PROJECT / "dir.pem").mkdir()
    assert kids(_loaded(keys_dir)) == {"good"}


# -- projects without keys -----------------------------------------------------


def test_a_project_without_a_directory_or_with_an_empty_one_does_not_use_jwt(
    keys_dir: Path,
) -> None:
    (keys_dir / "empty-project").mkdir()
    (keys_dir / "only-notes").mkdir()
    (keys_dir / "only-notes" / "README.txt").write_text("no keys here")
    store = _loaded(keys_dir)
    assert store.snapshot.keys_for("no-such-project") is None
    assert store.snapshot.keys_for("empty-project") is None
    assert store.snapshot.keys_for("only-notes") is None


def test_a_project_whose_key_files_all_fail_stays_locked(keys_dir: Path) -> None:
    write_key(keys_dir / PROJECT, "broken", b"garbage")
    assert _loaded(keys_dir).snapshot.keys_for(PROJECT) == {}


# -- the 25-key limit ------------------------------------------------------------


def test_with_26_keys_the_25_oldest_are_active_and_the_newest_refused(
    keys_dir: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    pem = public_pem(ec_key)
    base = 1_600_000_000
    # Names in reverse order of age, so that name order alone would pick wrongly.
    for i in range(MAX_KEYS_PER_PROJECT + 1):
        write_key(keys_dir / PROJECT, f"key-{99 - i:02d}", pem, mtime=base + i)
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        store = _loaded(keys_dir)
    active = kids(store)
    assert active is not None
    assert len(active) == MAX_KEYS_PER_PROJECT
    newest = f"key-{99 - MAX_KEYS_PER_PROJECT:02d}"
    assert newest not in active
    assert [r for r in caplog.records if newest in r.getMessage() and "25 keys" in r.getMessage()]


def test_keys_of_equal_age_are_ranked_by_name(keys_dir: Path, ec_key: PrivateKey) -> None:
    pem = public_pem(ec_key)
    for i in range(MAX_KEYS_PER_PROJECT + 2):
        write_key(keys_dir / PROJECT, f"k{i:02d}", pem, mtime=1_600_000_000)
    active = kids(_loaded(keys_dir))
    assert active == {f"k{i:02d}" for i in range(MAX_KEYS_PER_PROJECT)}


def test_refused_files_do_not_take_a_slot(keys_dir: Path, ec_key: PrivateKey) -> None:
    for i in range(MAX_KEYS_PER_PROJECT):
        write_key(keys_dir / PROJECT, f"k{i:02d}", public_pem(ec_key), mtime=1_600_000_100)
    write_key(keys_dir / PROJECT, "a-broken", b"garbage", mtime=1_600_000_000)
    assert len(kids(_loaded(keys_dir)) or ()) == MAX_KEYS_PER_PROJECT


# -- snapshots -------------------------------------------------------------------


def test_a_reload_publishes_a_new_snapshot_and_leaves_the_old_one_intact(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "a", public_pem(ec_key))
    store = _loaded(keys_dir)
    before = store.snapshot
    write_key(keys_dir / PROJECT, "b", public_pem(ec_key))
    after = store.reload()
    assert set(before.keys_for(PROJECT) or ()) == {"a"}
    assert set(after.keys_for(PROJECT) or ()) == {"a", "b"}
    assert after.generation == before.generation + 1


def test_only_changed_projects_are_re_read(keys_dir: Path, ec_key: PrivateKey) -> None:
    write_key(keys_dir / "p1", "a", public_pem(ec_key))
    write_key(keys_dir / "p2", "b", public_pem(ec_key))
    store = _loaded(keys_dir)
    p1_before = store.snapshot.projects["p1"]
    write_key(keys_dir / "p2", "c", public_pem(ec_key))
    store.reload()
    assert store.snapshot.projects["p1"] is p1_before
    assert kids(store, "p2") == {"b", "c"}


def test_a_reload_of_one_project_revokes_its_deleted_key_and_drops_it_once_gone(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    """What the watcher does on a file event, without waiting for the full rescan."""
    write_key(keys_dir / PROJECT, "a", public_pem(ec_key))
    write_key(keys_dir / PROJECT, "b", public_pem(ec_key))
    store = _loaded(keys_dir)
    (keys_dir / PROJECT / "b.pem").unlink()
    store.reload([PROJECT])
    assert kids(store) == {"a"}
    shutil.rmtree(keys_dir / PROJECT)
    store.reload([PROJECT])
    assert kids(store) is None
    assert PROJECT not in store.snapshot.projects


def test_an_unchanged_directory_publishes_no_new_snapshot(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "a", public_pem(ec_key))
    (keys_dir / "empty").mkdir()
    store = _loaded(keys_dir)
    before = store.snapshot
    # Taken before the reload: ``reload()`` returns whatever it publishes, so comparing it
    # with ``store.snapshot`` afterwards would hold even if every reload published anew.
    assert store.reload() is before
    assert store.reload() is before
    assert store.snapshot is before
    assert store.snapshot.generation == before.generation


# -- hot reload --------------------------------------------------------------------


def test_file_events_alone_bring_a_change_in_force_within_a_second(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    """With the safety-net rescan an hour away, only the file events can meet the deadline
    (the ``watched`` store rescans every 0.5 s, which would meet it without them)."""
    with _watching(keys_dir, rescan_interval=3600) as store:
        path = write_key(keys_dir / PROJECT, "new", public_pem(ec_key))
        wait_for(lambda: kids(store) == {"new"}, RELOAD_DEADLINE)
        path.unlink()
        wait_for(lambda: kids(store) is None, RELOAD_DEADLINE)


def test_an_added_key_is_in_force_within_a_second(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "new", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"new"}, RELOAD_DEADLINE)


def test_a_replaced_key_is_in_force_within_a_second(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "k", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"k"}, RELOAD_DEADLINE)
    first = (watched.snapshot.keys_for(PROJECT) or {})["k"]
    write_key(keys_dir / PROJECT, "k", public_pem(other_ec_key))
    wait_for(
        lambda: (watched.snapshot.keys_for(PROJECT) or {}).get("k") not in (None, first),
        RELOAD_DEADLINE,
    )
    replaced = (watched.snapshot.keys_for(PROJECT) or {})["k"]
    assert replaced.public_key.public_numbers() == other_ec_key.public_key().public_numbers()


def test_a_deleted_key_is_revoked_within_a_second(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, "keep", public_pem(ec_key))
    gone = write_key(keys_dir / PROJECT, "gone", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"keep", "gone"}, RELOAD_DEADLINE)
    gone.unlink()
    wait_for(lambda: kids(watched) == {"keep"}, RELOAD_DEADLINE)


def test_deleting_a_projects_last_key_opens_the_project(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey
) -> None:
    only = write_key(keys_dir / PROJECT, "only", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"only"}, RELOAD_DEADLINE)
    only.unlink()
    wait_for(lambda: kids(watched) is None, RELOAD_DEADLINE)


def test_a_kubernetes_style_data_symlink_swap_is_seen_within_a_second(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    # The layout of a ConfigMap or Secret volume: files link through ..data, which is
    # re-pointed at a new timestamped directory in one atomic rename.
    project = keys_dir / PROJECT
    project.mkdir()
    v1 = project / "..2026_01_01_00_00_00.1"
    write_key(v1, "k1", public_pem(ec_key))
    (project / "..data").symlink_to(v1.name)
    (project / "k1.pem").symlink_to("..data/k1.pem")
    wait_for(lambda: kids(watched) == {"k1"}, RELOAD_DEADLINE)
    first = (watched.snapshot.keys_for(PROJECT) or {})["k1"]

    v2 = project / "..2026_01_01_00_01_00.2"
    write_key(v2, "k1", public_pem(other_ec_key))
    (project / "..data_tmp").symlink_to(v2.name)
    os.rename(project / "..data_tmp", project / "..data")
    shutil.rmtree(v1)
    wait_for(
        lambda: (watched.snapshot.keys_for(PROJECT) or {}).get("k1") not in (None, first),
        RELOAD_DEADLINE,
    )


def test_the_directory_renamed_away_keeps_keys_enforced_and_reloads_when_back(
    watched: KeyStore,
    keys_dir: Path,
    tmp_path: Path,
    ec_key: PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_key(keys_dir / PROJECT, "k", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"k"}, RELOAD_DEADLINE)
    away = tmp_path / "unmounted"
    with caplog.at_level(logging.ERROR, logger="authz_server.keystore"):
        keys_dir.rename(away)
        wait_for(lambda: "unavailable" in caplog.text, 3.0)
    assert kids(watched) == {"k"}  # a storage fault never opens a project
    write_key(away / PROJECT, "added-while-away", public_pem(ec_key))
    away.rename(keys_dir)
    wait_for(lambda: kids(watched) == {"k", "added-while-away"}, 3.0)
    write_key(keys_dir / PROJECT, "after", public_pem(ec_key))
    wait_for(lambda: kids(watched) == {"k", "added-while-away", "after"}, RELOAD_DEADLINE)


def test_a_new_project_directory_is_picked_up(
    watched: KeyStore, keys_dir: Path, ec_key: PrivateKey
) -> None:
    staging = keys_dir.parent / "staging"
    write_key(staging, "k", public_pem(ec_key))
    staging.rename(keys_dir / "brand-new")
    wait_for(lambda: kids(watched, "brand-new") == {"k"}, RELOAD_DEADLINE)


def test_the_snapshot_is_complete_only_after_a_whole_scan(
    tmp_path: Path, ec_key: PrivateKey
) -> None:
    keys_dir = tmp_path / "keys"
    store = KeyStore(keys_dir)
    assert store.snapshot.complete is False
    store.reload()  # the directory is missing: nothing was scanned
    assert store.snapshot.complete is False
    write_key(keys_dir / "p", "k", ec_key)
    store.reload(["p"])  # one project read is not the whole directory
    assert store.snapshot.complete is False
    assert store.snapshot.keys_for("p") is not None
    store.reload()
    assert store.snapshot.complete is True
    (keys_dir / "p" / "k.pem").unlink()
    store.reload(["p"])
    assert store.snapshot.complete is True  # and it stays so
