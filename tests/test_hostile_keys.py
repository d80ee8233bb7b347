"""Hostile entries in the keys directory, loaded through the real ``KeyStore``.

Whatever sits in ``KEYS_DIR/<project>/`` (a link to a system file, a FIFO, a device,
a huge or sparse file, a file that changes kind between the scan and the read, a link
that cannot be resolved, thousands of files), the loader must: refuse it with one log
line that names the file and never quotes its content; never block and never read
more than the size cap; keep the project's other keys, and every other project's,
working; and never open a project because one of its files is broken.

Permission checks are made real even when the tests run as root: capabilities are per
thread on Linux, so :func:`without_file_privileges` runs a load in a thread that has
dropped ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH`` (the rest of the process keeps
them). The same code paths are also driven by a simulated ``EACCES``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

import pytest

import authz_server.keystore as keystore_module
from authz_server.devtools.requests import check_request
from authz_server.keys import (
    MAX_KEY_FILE_BYTES,
    KeyRejected,
    has_roca_fingerprint,
    parse_public_key,
)
from authz_server.keystore import MAX_KEYS_PER_PROJECT, KeyStore
from authz_server.tokens import PrivateKey, mint, public_pem
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Allowed, Policy, Reason, decide
from tests.support import write_key

PROJECT: Final = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
OTHER_PROJECT: Final = "other-project"
DEADLINE: Final = 10.0  # seconds a load may take before it counts as blocked
HUGE: Final = 100 * 1024 * 1024
T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def two_projects_dir(keys_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey) -> Path:
    """The keys directory with a project with one good key, ``good``, and another project
    with ``fine``."""
    write_key(keys_dir / PROJECT, "good", ec_key)
    write_key(keys_dir / OTHER_PROJECT, "fine", other_ec_key)
    return keys_dir


@pytest.fixture(autouse=True)
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def in_thread(fn: Callable[[], T], *, setup: Callable[[], None] | None = None) -> T:
    """``fn()`` in a fresh thread; fail (rather than hang) if it is still running after
    DEADLINE seconds."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            if setup is not None:
                setup()
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"still running after {DEADLINE} s: the loader blocked"
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def load(keys_dir: Path, store: KeyStore | None = None) -> KeyStore:
    store = store or KeyStore(keys_dir)
    in_thread(store.reload)
    return store


def load_traced(keys_dir: Path) -> tuple[KeyStore, int]:
    """``load``, and the peak of Python memory allocated while it ran, in bytes."""
    tracemalloc.start()
    try:
        store = load(keys_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return store, peak


def kids(store: KeyStore, project: str = PROJECT) -> set[str] | None:
    keys = store.snapshot.keys_for(project)
    return None if keys is None else set(keys)


def assert_others_unharmed(store: KeyStore) -> None:
    assert "good" in (kids(store) or set())
    assert kids(store, OTHER_PROJECT) == {"fine"}


def refusal(caplog: pytest.LogCaptureFixture, path: Path) -> str:
    lines = [
        r.getMessage()
        for r in caplog.records
        if "refused" in r.getMessage() and str(path) in r.getMessage()
    ]
    assert len(lines) == 1, f"expected one refusal line for {path}, got {lines}"
    return lines[0]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_CAP_DAC_OVERRIDE: Final = 1
_CAP_DAC_READ_SEARCH: Final = 2


def _drop_file_capabilities_of_this_thread() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: the calling thread
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def without_file_privileges(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread that file permissions apply to, even when running as root."""
    setup = _drop_file_capabilities_of_this_thread if os.geteuid() == 0 else None
    return in_thread(fn, setup=setup)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the process opens with ``os.open`` while the test runs."""
    paths: list[str] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        paths.append(os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    return paths


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real_read = os.read

    def recording_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(os, "read", recording_read)
    return sizes


def sparse_file(path: Path, size: int, tail: bytes = b"") -> Path:
    with path.open("wb") as f:
        f.truncate(size - len(tail))
        f.seek(size - len(tail))
        f.write(tail)
    assert path.stat().st_size == size
    return path


@pytest.fixture
def fifo_cleanup() -> Iterator[list[Path]]:
    """FIFOs to unblock at teardown, should a reader be stuck opening one."""
    fifos: list[Path] = []
    yield fifos
    for fifo in fifos:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader waiting (ENXIO) or already gone: nothing is stuck
            continue
        os.close(fd)


# -- links to things that are not keys ----------------------------------------------------------


def test_a_symlink_to_etc_passwd_is_refused_and_no_log_line_quotes_it(
    two_projects_dir: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    link = two_projects_dir / PROJECT / "passwd.pem"
    link.symlink_to("/etc/passwd")
    store = load(two_projects_dir)
    assert_others_unharmed(store)
    assert kids(store) == {"good"}
    assert "not a PEM public key" in refusal(all_logs, link)
    for line in Path("/etc/passwd").read_text().splitlines():
        if line.strip():
            assert line not in all_logs.text


def test_a_symlink_to_a_proc_file_that_stat_calls_empty_is_read_only_up_to_the_cap(
    two_projects_dir: Path, all_logs: pytest.LogCaptureFixture, bytes_read: list[int]
) -> None:
    """/proc files are regular files of st_size 0 with content: the size check at stat
    time cannot stop them, the bounded read must."""
    link = two_projects_dir / PROJECT / "cpuinfo.pem"
    link.symlink_to("/proc/cpuinfo")
    assert link.stat().st_size == 0
    store = load(two_projects_dir)
    assert_others_unharmed(store)
    assert "good" in (kids(store) or set())
    assert "cpuinfo" not in (kids(store) or set())
    assert "refused" in refusal(all_logs, link)
    assert sum(bytes_read) <= 3 * (MAX_KEY_FILE_BYTES + 1)  # three files, each capped
    first = Path("/proc/cpuinfo").read_text().splitlines()[:3]
    for line in first:
        if line.strip():
            assert line not in all_logs.text


def test_a_fifo_never_blocks_the_loader(
    two_projects_dir: Path, all_logs: pytest.LogCaptureFixture, fifo_cleanup: list[Path]
) -> None:
    fifo = two_projects_dir / PROJECT / "fifo.pem"
    os.mkfifo(fifo)
    fifo_cleanup.append(fifo)
    store = load(two_projects_dir)  # fails after DEADLINE if opening or reading the FIFO blocked
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "not a regular file" in refusal(all_logs, fifo)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null", "/dev/full"])
def test_a_symlink_to_a_device_is_refused_without_being_opened(
    device: str, two_projects_dir: Path, all_logs: pytest.LogCaptureFixture, opened: list[str]
) -> None:
    link = two_projects_dir / PROJECT / "device.pem"
    link.symlink_to(device)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "not a regular file" in refusal(all_logs, link)
    assert str(link) not in opened
    assert device not in opened


@pytest.mark.parametrize("target", ["dir", "link-to-dir", "link-to-etc"])
def test_a_directory_named_like_a_key_is_refused_even_if_it_holds_a_key(
    target: str, two_projects_dir: Path, ec_key: PrivateKey, all_logs: pytest.LogCaptureFixture
) -> None:
    entry = two_projects_dir / PROJECT / "x.pem"
    if target == "dir":
        entry.mkdir()
        (entry / "inner.pem").write_bytes(public_pem(ec_key))
    elif target == "link-to-dir":
        entry.symlink_to(two_projects_dir / OTHER_PROJECT, target_is_directory=True)
    else:
        entry.symlink_to("/etc", target_is_directory=True)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "not a regular file" in refusal(all_logs, entry)


def test_a_project_holding_only_a_directory_named_like_a_key_stays_locked(
    two_projects_dir: Path,
) -> None:
    (two_projects_dir / PROJECT / "good.pem").unlink()
    (two_projects_dir / PROJECT / "x.pem").mkdir()
    assert kids(load(two_projects_dir)) == set()  # denies every token, never open


# -- size ------------------------------------------------------------------------------------


def test_a_100_mib_sparse_file_is_refused_by_its_size_without_being_opened(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    all_logs: pytest.LogCaptureFixture,
    opened: list[str],
) -> None:
    # A valid key at its very end: only reading the whole file would find it.
    huge = sparse_file(two_projects_dir / PROJECT / "huge.pem", HUGE, tail=public_pem(ec_key))
    store, peak = load_traced(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert f"larger than {MAX_KEY_FILE_BYTES} bytes" in refusal(all_logs, huge)
    assert str(huge) not in opened
    assert peak < 4 * 1024 * 1024, f"the load allocated {peak} bytes at its peak"


def test_a_key_after_64_kib_of_other_text_is_refused_and_64_kib_exactly_loads(
    two_projects_dir: Path, ec_key: PrivateKey, all_logs: pytest.LogCaptureFixture
) -> None:
    pem = public_pem(ec_key)
    at_cap = two_projects_dir / PROJECT / "at-cap.pem"
    over_cap = two_projects_dir / PROJECT / "over-cap.pem"
    at_cap.write_bytes(pem + b"\n" * (MAX_KEY_FILE_BYTES - len(pem)))
    over_cap.write_bytes(b"#" * MAX_KEY_FILE_BYTES + pem)
    store = load(two_projects_dir)
    assert kids(store) == {"good", "at-cap"}
    assert f"larger than {MAX_KEY_FILE_BYTES} bytes" in refusal(all_logs, over_cap)


def _swap_after_scan(
    monkeypatch: pytest.MonkeyPatch, path: Path, swap: Callable[[Path], None]
) -> None:
    """Replace ``path`` right after the loader has stat-ed the directory and before it
    reads the file: the window a file changing under the loader opens."""
    real_fingerprint = keystore_module.scan_key_files

    def fingerprint_then_swap(directory: Path) -> Any:
        result = real_fingerprint(directory)
        if directory == path.parent and path.exists():
            swap(path)
        return result

    monkeypatch.setattr(keystore_module, "scan_key_files", fingerprint_then_swap)


def test_a_file_that_grows_to_100_mib_after_the_scan_is_read_no_further_than_the_cap(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    all_logs: pytest.LogCaptureFixture,
    bytes_read: list[int],
) -> None:
    key = two_projects_dir / PROJECT / "grows.pem"
    key.write_bytes(public_pem(ec_key))
    _swap_after_scan(monkeypatch, key, lambda p: sparse_file(p, HUGE, tail=public_pem(ec_key)))
    store, peak = load_traced(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert f"larger than {MAX_KEY_FILE_BYTES} bytes" in refusal(all_logs, key)
    assert max(bytes_read) <= MAX_KEY_FILE_BYTES + 1
    assert peak < 4 * 1024 * 1024


def test_a_file_swapped_for_a_fifo_after_the_scan_never_blocks(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    all_logs: pytest.LogCaptureFixture,
    fifo_cleanup: list[Path],
) -> None:
    key = two_projects_dir / PROJECT / "swapped.pem"
    key.write_bytes(public_pem(ec_key))
    fifo_cleanup.append(key)

    def to_fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    _swap_after_scan(monkeypatch, key, to_fifo)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "not a regular file" in refusal(all_logs, key)


def test_a_key_file_replaced_by_a_fifo_between_scans_is_revoked_without_blocking(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    all_logs: pytest.LogCaptureFixture,
    fifo_cleanup: list[Path],
) -> None:
    key = two_projects_dir / PROJECT / "rotating.pem"
    key.write_bytes(public_pem(ec_key))
    store = load(two_projects_dir)
    assert kids(store) == {"good", "rotating"}

    staged = two_projects_dir / PROJECT / ".staged-fifo"
    os.mkfifo(staged)
    os.replace(staged, key)  # an atomic swap, as a deploy tool would do it
    fifo_cleanup.append(key)
    load(two_projects_dir, store)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "not a regular file" in refusal(all_logs, key)

    staged = two_projects_dir / PROJECT / ".staged-key"
    staged.write_bytes(public_pem(ec_key))
    os.replace(staged, key)
    load(two_projects_dir, store)
    assert kids(store) == {"good", "rotating"}


# -- permissions -----------------------------------------------------------------------------


def test_an_unreadable_key_file_is_refused_and_the_others_load(
    two_projects_dir: Path, ec_key: PrivateKey, all_logs: pytest.LogCaptureFixture
) -> None:
    secret = two_projects_dir / PROJECT / "secret.pem"
    secret.write_bytes(public_pem(ec_key))
    secret.chmod(0)

    def check_then_load() -> KeyStore:
        with pytest.raises(PermissionError):  # the premise: this thread cannot read it
            os.close(os.open(secret, os.O_RDONLY))
        store = KeyStore(two_projects_dir)
        store.reload()
        return store

    store = without_file_privileges(check_then_load)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "cannot open (Permission denied)" in refusal(all_logs, secret)


def test_an_open_failing_with_eacces_is_refused_with_its_reason(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    """The same path without relying on permissions: ``open`` itself says EACCES."""
    secret = two_projects_dir / PROJECT / "secret.pem"
    secret.write_bytes(public_pem(ec_key))
    real_open = os.open

    def open_denying_the_secret(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path) == str(secret):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_denying_the_secret)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "cannot open (Permission denied)" in refusal(all_logs, secret)


def test_an_unlistable_project_directory_stays_locked_or_keeps_its_last_keys(
    two_projects_dir: Path, ec_key: PrivateKey
) -> None:
    project = two_projects_dir / PROJECT
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    project.chmod(0)
    try:
        # Loaded before: the last key set stays in force.
        without_file_privileges(store.reload)
        assert kids(store) == {"good"}
        # Never loaded: the project is locked (denies every token), never open.
        fresh = KeyStore(two_projects_dir)
        without_file_privileges(fresh.reload)
        assert kids(fresh) == set()
        assert kids(fresh, OTHER_PROJECT) == {"fine"}
    finally:
        project.chmod(0o755)


# -- links that cannot be resolved -------------------------------------------------------------


def _make_link(kind: str, link: Path, tmp_path: Path) -> None:
    if kind == "dangling":
        link.symlink_to(tmp_path / "nowhere.pem")
    elif kind == "self-loop":
        link.symlink_to(link.name)
    elif kind == "two-link-loop":
        other = link.with_name(".loop-partner")
        link.symlink_to(other.name)
        other.symlink_to(link.name)
    elif kind == "through-a-file":  # ENOTDIR: a path component is a regular file
        link.symlink_to("/etc/passwd/key.pem")
    elif kind == "name-too-long":  # ENAMETOOLONG
        link.symlink_to("/" + "n" * 300)
    else:
        raise AssertionError(kind)


LINK_KINDS: Final = ["dangling", "self-loop", "two-link-loop", "through-a-file", "name-too-long"]


@pytest.mark.parametrize("kind", LINK_KINDS)
def test_an_unresolvable_symlink_is_refused_alone_and_the_projects_other_keys_work(
    kind: str, two_projects_dir: Path, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    """docs/contract.md: a refused file never harms "the other keys of that project"."""
    link = two_projects_dir / PROJECT / "broken.pem"
    _make_link(kind, link, tmp_path)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "refused" in refusal(all_logs, link)


@pytest.mark.parametrize("kind", LINK_KINDS)
def test_a_project_whose_only_key_file_is_an_unresolvable_symlink_stays_locked(
    kind: str, two_projects_dir: Path, tmp_path: Path
) -> None:
    """A storage fault must never open a project: the project denies every token."""
    (two_projects_dir / PROJECT / "good.pem").unlink()
    _make_link(kind, two_projects_dir / PROJECT / "broken.pem", tmp_path)
    assert kids(load(two_projects_dir)) == set()


@pytest.mark.parametrize("kind", LINK_KINDS)
def test_a_key_whose_link_breaks_is_revoked_and_the_other_keys_stay(
    kind: str, two_projects_dir: Path, ec_key: PrivateKey, tmp_path: Path
) -> None:
    link = two_projects_dir / PROJECT / "linked.pem"
    target = tmp_path / "target.pem"
    target.write_bytes(public_pem(ec_key))
    link.symlink_to(target)
    store = load(two_projects_dir)
    assert kids(store) == {"good", "linked"}
    link.unlink()
    _make_link(kind, link, tmp_path)
    load(two_projects_dir, store)
    assert kids(store) == {"good"}


@pytest.mark.parametrize("kind", LINK_KINDS)
def test_deleting_a_key_revokes_it_even_while_an_unresolvable_symlink_sits_beside_it(
    kind: str, two_projects_dir: Path, ec_key: PrivateKey, tmp_path: Path
) -> None:
    """docs/contract.md: "Deleting a key revokes every token signed for it"."""
    compromised = two_projects_dir / PROJECT / "compromised.pem"
    compromised.write_bytes(public_pem(ec_key))
    store = load(two_projects_dir)
    assert kids(store) == {"good", "compromised"}
    _make_link(kind, two_projects_dir / PROJECT / "broken.pem", tmp_path)
    load(two_projects_dir, store)
    compromised.unlink()
    load(two_projects_dir, store)
    assert kids(store) == {"good"}


def test_a_symlink_into_an_unsearchable_directory_is_refused_alone(
    two_projects_dir: Path, ec_key: PrivateKey, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    """EACCES when following the link (no search permission on the target's directory)."""
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "key.pem").write_bytes(public_pem(ec_key))
    link = two_projects_dir / PROJECT / "vaulted.pem"
    link.symlink_to(vault / "key.pem")
    vault.chmod(0)

    def check_then_load() -> KeyStore:
        with pytest.raises(PermissionError):
            os.stat(link)
        store = KeyStore(two_projects_dir)
        store.reload()
        return store

    try:
        store = without_file_privileges(check_then_load)
    finally:
        vault.chmod(0o755)
    assert kids(store) == {"good"}
    assert_others_unharmed(store)
    assert "refused" in refusal(all_logs, link)


@pytest.mark.parametrize("fault", ["unsearchable-target", "link-loop"])
def test_a_project_link_that_cannot_be_followed_keeps_the_projects_last_keys(
    fault: str, two_projects_dir: Path, tmp_path: Path
) -> None:
    """Kubernetes mounts make project directories symlinks. One that stops resolving is a
    storage fault, and "a storage fault must never open projects" (docs/contract.md)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (two_projects_dir / PROJECT).rename(volume / PROJECT)
    (two_projects_dir / PROJECT).symlink_to(volume / PROJECT, target_is_directory=True)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    if fault == "link-loop":
        (two_projects_dir / PROJECT).unlink()
        (two_projects_dir / PROJECT).symlink_to(PROJECT)
        load(two_projects_dir, store)
    else:
        volume.chmod(0)
        try:
            without_file_privileges(store.reload)
        finally:
            volume.chmod(0o755)
    assert kids(store) == {"good"}
    assert kids(store, OTHER_PROJECT) == {"fine"}


# -- many files ------------------------------------------------------------------------------


def test_3000_key_files_in_one_project_activate_the_25_oldest_and_refuse_the_rest(
    two_projects_dir: Path,
    ec_key: PrivateKey,
    all_logs: pytest.LogCaptureFixture,
    opened: list[str],
) -> None:
    project = two_projects_dir / PROJECT
    (project / "good.pem").unlink()
    pem = public_pem(ec_key)
    base = time.time() - 10_000
    for i in range(3000):
        path = project / f"k{i:04d}.pem"
        path.write_bytes(pem)
        # Newest first on disk, so the oldest are not simply the first names.
        os.utime(path, (base - i, base - i))
    store = load(two_projects_dir)
    expected = {f"k{i:04d}" for i in range(2999, 2999 - MAX_KEYS_PER_PROJECT, -1)}
    assert kids(store) == expected
    (summary,) = [r.getMessage() for r in all_logs.records if "refused" in r.getMessage()]
    assert summary.startswith(
        f"project {PROJECT}: {3000 - MAX_KEYS_PER_PROJECT} key files refused: "
        f"over the limit of {MAX_KEYS_PER_PROJECT} keys"
    )
    assert len(store.snapshot.projects[PROJECT].refused) == 3000 - MAX_KEYS_PER_PROJECT
    assert kids(store, OTHER_PROJECT) == {"fine"}

    # An unchanged directory is not read again: no file is opened, no new snapshot.
    snapshot, opened_before = store.snapshot, len(opened)
    load(two_projects_dir, store)
    assert store.snapshot is snapshot
    assert len(opened) == opened_before


def test_3000_garbage_files_cost_one_line_in_all_and_the_one_key_works(
    two_projects_dir: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    project = two_projects_dir / PROJECT
    for i in range(3000):
        (project / f"junk{i:04d}.pem").write_bytes(b"junk %d\n" % i)
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    (summary,) = [r.getMessage() for r in all_logs.records if "refused" in r.getMessage()]
    assert f"project {PROJECT}: 3000 key files refused: " in summary
    assert summary.endswith(
        f" and 2997 more (each one: authz-server keys list --keys-dir {two_projects_dir} "
        f"--project {PROJECT})"
    )
    assert len(store.snapshot.projects[PROJECT].refused) == 3000


# -- names --------------------------------------------------------------------------------------


def test_a_file_name_with_a_newline_cannot_forge_a_second_log_line(
    two_projects_dir: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    (two_projects_dir / PROJECT / "x\nERROR project keys wiped; project open.pem").write_bytes(
        b"junk"
    )
    store = load(two_projects_dir)
    assert kids(store) == {"good"}
    for record in all_logs.records:
        if record.name.startswith("authz_server"):
            assert "\n" not in record.getMessage(), record.getMessage()


def test_a_key_file_whose_name_is_not_utf8_is_refused_and_never_makes_the_servicer_raise(
    two_projects_dir: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """The file stem is the kid, and an allowed kid goes back to Envoy in a header: a name
    that is not printable UTF-8 is refused at load, and its token answered, not raised on."""
    name = os.fsencode(two_projects_dir / PROJECT) + b"/\xff.pem"
    with open(name, "wb") as f:
        f.write(public_pem(ec_key))
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        store = load(two_projects_dir)
    assert kids(store) == {"good"}
    assert "is not a key id (1 to 128 of A-Z a-z 0-9 _ -)" in caplog.text
    token = mint(ec_key, "\udcff", {})
    service = AuthorizationService(lambda: store.snapshot, Policy())
    response = service.check(check_request(f"/eth/{PROJECT}", token=token))
    assert json.loads(response.denied_response.body)["message"] == (Reason.UNKNOWN_KEY_ID.message)


def test_the_helpers_see_what_they_claim(two_projects_dir: Path, tmp_path: Path) -> None:
    """The premises the tests above rely on, checked once."""
    sparse = sparse_file(tmp_path / "sparse", HUGE)
    assert sparse.stat().st_blocks * 512 < HUGE // 100  # really sparse: nothing written
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert load(two_projects_dir).snapshot.projects.keys() == {PROJECT, OTHER_PROJECT}
    assert isinstance(load(two_projects_dir).snapshot.projects, MappingProxyType)


# -- ROCA (CVE-2017-15361) ----------------------------------------------------------------------

# The primes below 168 other than 2, written out here independently of authz_server.keys.
_SMALL_ODD_PRIMES = tuple(r for r in range(3, 168, 2) if all(r % d for d in range(3, r, 2)))


def _roca_shaped_prime_product(seed: int) -> int:
    """A modulus of two numbers shaped like the weak library's primes,
    ``k * M + (65537^a mod M)`` with ``M`` a primorial: the fingerprint, without the search
    for real primes (the test needs the structure, not a usable key)."""
    import math
    import random

    rng = random.Random(seed)  # noqa: S311 - test data, not cryptography
    primorial = math.prod(_SMALL_ODD_PRIMES)

    def weak() -> int:
        return rng.getrandbits(900) * primorial + pow(65537, rng.randrange(1, 10**6), primorial)

    return weak() * weak()


@pytest.mark.parametrize("seed", range(5))
def test_roca_shaped_moduli_carry_the_fingerprint(seed: int) -> None:
    assert has_roca_fingerprint(_roca_shaped_prime_product(seed))


def test_ordinary_keys_do_not_carry_the_roca_fingerprint(rsa_key: PrivateKey) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert not has_roca_fingerprint(rsa_key.public_key().public_numbers().n)
    for _ in range(20):
        fresh = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert not has_roca_fingerprint(fresh.public_key().public_numbers().n)


def test_a_roca_weak_key_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = _roca_shaped_prime_product(7)
    weak = rsa.RSAPublicNumbers(65537, n).public_key()
    pem = weak.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyRejected, match=r"ROCA weakness \(CVE-2017-15361\)"):
        parse_public_key(pem)


def _rsa_pem_with_exponent(modulus_of: PrivateKey, e: int) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    assert isinstance(modulus_of, rsa.RSAPrivateKey)
    n = modulus_of.public_key().public_numbers().n
    return (
        rsa.RSAPublicNumbers(e, n)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize(
    ("e", "bits"),
    [(2**32 + 1, 33), (2**64 + 1, 65), (2**2046 + 1, 2047)],
    ids=["2^32+1", "2^64+1", "2047-bit"],
)
def test_an_rsa_exponent_of_2_to_the_32_or_more_is_refused_and_the_project_keeps_its_keys(
    two_projects_dir: Path, rsa_key: PrivateKey, ec_key: PrivateKey, e: int, bits: int
) -> None:
    (two_projects_dir / PROJECT / "huge-e.pem").write_bytes(_rsa_pem_with_exponent(rsa_key, e))
    with pytest.raises(KeyRejected, match=rf"^RSA key with a {bits}-bit public exponent"):
        parse_public_key((two_projects_dir / PROJECT / "huge-e.pem").read_bytes())
    keys = KeyStore(two_projects_dir).reload().keys_for(PROJECT)
    assert keys is not None
    assert sorted(keys) == ["good"]
    assert decide(mint(ec_key, "good", {}), keys, Policy(), time.time()) == Allowed("good")


@pytest.mark.parametrize("e", [3, 65537, 2**32 - 1], ids=["3", "65537", "2^32-1"])
def test_odd_rsa_exponents_below_2_to_the_32_load(rsa_key: PrivateKey, e: int) -> None:
    alg, public = parse_public_key(_rsa_pem_with_exponent(rsa_key, e))
    assert alg == "RS256"
    assert public.public_numbers().e == e  # type: ignore[union-attr]
