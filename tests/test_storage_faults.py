"""An unmounted volume is a storage fault, not an empty directory (docs/contract.md, "Keys
directory"): the keys it held stay in force, an error is logged and counted, and loading
resumes when it is mounted again. ``serve --require-mount`` refuses to start on a volume
that is not mounted yet.

Real mounts: tmpfs volumes (and one same-device bind mount) mounted inside the test's
temporary directory and really unmounted. That needs root (CI runs the suite as root);
where mounting is impossible these tests skip, saying why.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from authz_server.cli import main
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.devtools.requests import check_request
from authz_server.keystore import KeyStore
from authz_server.metrics import StateCollector
from authz_server.mounts import is_mount_point
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Policy
from tests.authz_process import AuthzProcess
from tests.support import (
    BAD_SIGNATURE,
    MISSING,
    TRANSPORTS,
    UNKNOWN_KID,
    post,
    wait_for,
    write_key,
)
from tests.test_metrics import parse

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
OTHER = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
NEW_KID = "0b6e3c1a-7d2f-4c59-9a57-5f2f0a1e9c11"
ALLOWED = "allowed"
DETECTION_DEADLINE = 5.0  # the watcher's safety-net rescan runs every 0.2 s here


class Volumes:
    """tmpfs and bind mounts made by one test; whatever is still mounted at its end is
    unmounted (lazily, should anything still hold it)."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def tmpfs(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path))
        self.mounted.append(path)
        return path

    def bind(self, source: Path, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(source), str(path))
        self.mounted.append(path)
        return path

    def unmount(self, path: Path) -> None:
        _run("umount", str(path))
        self.mounted.remove(path)

    def release(self) -> None:
        for path in reversed(self.mounted):
            _run("umount", "-l", str(path), check=False)
        self.mounted.clear()


def _run(*command: str, check: bool = True) -> None:
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise OSError(f"{' '.join(command)}: {result.stderr.strip()}")


@pytest.fixture(scope="session")
def can_mount(tmp_path_factory: pytest.TempPathFactory) -> None:
    probe = tmp_path_factory.mktemp("mount-probe")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command here: the unmount tests need them")
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here (tests need root and mount(2)): {exc}")
    _run("umount", str(probe))


@pytest.fixture
def volumes(can_mount: None) -> Iterator[Volumes]:
    made = Volumes()
    try:
        yield made
    finally:
        made.release()


def answer(service: AuthorizationService, project: str, token: str | None) -> str:
    """``allowed``, or the denial's contract message."""
    response = service.check(check_request(f"/eth/{project}", token=token))
    if response.status.code == 0:
        return ALLOWED
    message: str = json.loads(response.denied_response.body)["message"]
    return message


def metric(store: KeyStore, service: AuthorizationService, name: str) -> float:
    registry = CollectorRegistry()
    registry.register(StateCollector(store, service.verifier))
    return parse(generate_latest(registry).decode())[(name, ())]


def unmount_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "no longer a mount point" in r.getMessage()
    ]


# -- KEYS_DIR is the volume --------------------------------------------------------------------


def test_unmounting_the_keys_volume_keeps_its_keys_in_force(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    keys_dir = volumes.tmpfs(tmp_path / "keys")
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())
    valid, forged = mint(ec_key, KID, {}), mint(other_ec_key, KID, {})
    assert answer(service, PROJECT, forged) == BAD_SIGNATURE

    volumes.unmount(keys_dir)
    assert not any(keys_dir.iterdir())  # what is left: the empty mount-point directory
    store.reload()

    assert answer(service, PROJECT, forged) == BAD_SIGNATURE
    assert answer(service, PROJECT, None) == MISSING
    assert answer(service, PROJECT, valid) == ALLOWED


def test_files_under_an_unmounted_volume_never_replace_its_keys(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    """What the mount hid (a key revoked long ago, baked into an image) stays hidden."""
    keys_dir = tmp_path / "keys"
    write_key(keys_dir / PROJECT, "revoked-long-ago", other_ec_key)
    volumes.tmpfs(keys_dir)
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())

    volumes.unmount(keys_dir)
    store.reload()

    assert set(store.snapshot.keys_for(PROJECT) or ()) == {KID}
    assert answer(service, PROJECT, mint(other_ec_key, "revoked-long-ago", {})) == UNKNOWN_KID
    assert answer(service, PROJECT, mint(ec_key, KID, {})) == ALLOWED


def test_the_unmount_is_logged_once_as_an_error_and_counted(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    keys_dir = volumes.tmpfs(tmp_path / "keys")
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())
    assert metric(store, service, "authz_unmounted_volumes") == 0

    volumes.unmount(keys_dir)
    with caplog.at_level(logging.INFO, logger="authz_server.keystore"):
        store.reload()
        store.reload()

    (error,) = unmount_errors(caplog)
    assert str(keys_dir) in error
    assert "keeping the last good key set" in error
    events = [r.__dict__.get("event") for r in caplog.records if r.levelno == logging.ERROR]
    assert events == ["keys_dir_unmounted"]
    assert metric(store, service, "authz_unmounted_volumes") == 1
    assert metric(store, service, "authz_unmounts_total") == 1
    assert metric(store, service, "authz_reload_failures_total") == 2


def test_when_the_volume_is_mounted_again_its_keys_are_loaded(
    volumes: Volumes,
    tmp_path: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys_dir = volumes.tmpfs(tmp_path / "keys")
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())
    volumes.unmount(keys_dir)
    store.reload()

    volumes.tmpfs(keys_dir)  # a fresh volume, holding another key
    write_key(keys_dir / PROJECT, NEW_KID, other_ec_key)
    with caplog.at_level(logging.WARNING, logger="authz_server.keystore"):
        store.reload()

    assert answer(service, PROJECT, mint(other_ec_key, NEW_KID, {})) == ALLOWED
    assert answer(service, PROJECT, mint(ec_key, KID, {})) == UNKNOWN_KID
    assert f"keys directory {keys_dir} is mounted again" in caplog.text
    assert metric(store, service, "authz_unmounted_volumes") == 0
    assert metric(store, service, "authz_unmounts_total") == 1


def test_deleting_keys_on_a_mounted_volume_still_revokes_them(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey
) -> None:
    """Only an unmount is a fault: a deleted key file is a revocation, as always."""
    keys_dir = volumes.tmpfs(tmp_path / "keys")
    key_file = write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    key_file.unlink()
    store.reload()
    assert store.snapshot.keys_for(PROJECT) is None


def test_unmounting_a_same_device_bind_mount_keeps_its_keys(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    """A bind mount of a directory of the same file system keeps the device of its
    parent; the mount table still shows it."""
    source = tmp_path / "volume"
    write_key(source / PROJECT, KID, ec_key)
    keys_dir = volumes.bind(source, tmp_path / "keys")
    assert keys_dir.stat().st_dev == tmp_path.stat().st_dev
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())

    volumes.unmount(keys_dir)
    store.reload()

    assert answer(service, PROJECT, mint(other_ec_key, KID, {})) == BAD_SIGNATURE
    assert answer(service, PROJECT, mint(ec_key, KID, {})) == ALLOWED
    assert store.unmounted_volumes == 1


# -- one volume per project --------------------------------------------------------------------


def test_unmounting_a_projects_volume_keeps_that_projects_keys(
    volumes: Volumes,
    tmp_path: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys_dir = tmp_path / "keys"
    write_key(volumes.tmpfs(keys_dir / PROJECT), KID, ec_key)
    write_key(keys_dir / OTHER, KID, ec_key)  # a plain directory beside it
    store = KeyStore(keys_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())

    volumes.unmount(keys_dir / PROJECT)
    with caplog.at_level(logging.INFO, logger="authz_server.keystore"):
        store.reload()
        store.reload([PROJECT])  # as a file event would

    assert answer(service, PROJECT, mint(other_ec_key, KID, {})) == BAD_SIGNATURE
    assert answer(service, PROJECT, None) == MISSING
    assert answer(service, PROJECT, mint(ec_key, KID, {})) == ALLOWED
    (error,) = unmount_errors(caplog)
    assert error.startswith(f"project {PROJECT}: key directory {keys_dir / PROJECT} ")
    assert "no longer uses JWT" not in caplog.text
    assert metric(store, service, "authz_unmounted_volumes") == 1
    assert metric(store, service, "authz_unmounts_total") == 1

    # The other projects are not held back by it.
    write_key(keys_dir / OTHER, NEW_KID, other_ec_key)
    store.reload()
    assert set(store.snapshot.keys_for(OTHER) or ()) == {KID, NEW_KID}

    volumes.tmpfs(keys_dir / PROJECT)
    write_key(keys_dir / PROJECT, NEW_KID, other_ec_key)
    store.reload()
    assert answer(service, PROJECT, mint(other_ec_key, NEW_KID, {})) == ALLOWED
    assert answer(service, PROJECT, mint(ec_key, KID, {})) == UNKNOWN_KID
    assert metric(store, service, "authz_unmounted_volumes") == 0


def test_an_emptied_project_volume_that_stays_mounted_opens_the_project(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey
) -> None:
    """A ConfigMap whose last key was removed: the volume is there, and it is empty."""
    keys_dir = tmp_path / "keys"
    key_file = write_key(volumes.tmpfs(keys_dir / PROJECT), KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    key_file.unlink()
    store.reload()
    assert store.snapshot.keys_for(PROJECT) is None


# -- the watcher ---------------------------------------------------------------------------------


def test_the_watcher_sees_an_unmount_and_a_remount_and_watches_the_new_volume(
    volumes: Volumes,
    tmp_path: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys_dir = volumes.tmpfs(tmp_path / "keys")
    write_key(keys_dir / PROJECT, KID, ec_key)
    store = KeyStore(keys_dir)
    store.reload()
    partial_reloads: list[tuple[float, set[str]]] = []
    real_reload = store.reload

    def recording_reload(projects: set[str] | None = None) -> object:
        if projects is not None:  # only file events cause these
            partial_reloads.append((time.monotonic(), set(projects)))
        return real_reload(projects)

    monkeypatch.setattr(store, "reload", recording_reload)
    stop = threading.Event()
    watcher = threading.Thread(target=store.watch, args=(stop,), kwargs={"rescan_interval": 0.2})
    watcher.start()

    def rearmed() -> None:
        # Right after the rescan that saw the change, the watcher lets go of its watches
        # for one rescan interval (0.2 s), then watches the directory as it is now.
        wait_for(lambda: not store.watching.is_set(), DETECTION_DEADLINE, interval=0.002)
        wait_for(store.watching.is_set, DETECTION_DEADLINE)

    try:
        assert store.watching.wait(5)
        volumes.unmount(keys_dir)
        wait_for(lambda: store.unmounted_volumes == 1, DETECTION_DEADLINE)
        assert set(store.snapshot.keys_for(PROJECT) or ()) == {KID}
        rearmed()

        volumes.tmpfs(keys_dir)
        write_key(keys_dir / PROJECT, NEW_KID, other_ec_key)
        wait_for(lambda: store.unmounted_volumes == 0, DETECTION_DEADLINE)
        wait_for(lambda: set(store.snapshot.keys_for(PROJECT) or ()) == {NEW_KID}, 1.0)

        # The watches on the old volume died with it: the watcher re-arms on the new
        # one, so a key added there arrives as a file event, not only by rescan.
        rearmed()
        written = time.monotonic()
        write_key(keys_dir / PROJECT, "added-after-remount", ec_key)
        wait_for(lambda: "added-after-remount" in (store.snapshot.keys_for(PROJECT) or {}), 1.0)
        assert any(at >= written and PROJECT in names for at, names in partial_reloads)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert not watcher.is_alive()


# -- serve --require-mount -------------------------------------------------------------------


def test_require_mount_refuses_a_keys_directory_that_is_not_mounted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--keys-dir", str(keys_dir), "--require-mount"])
    assert exited.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line == (
        f"authz-server serve: error: keys directory {keys_dir} is not a mount point and "
        "holds no project directory that is one: is its volume mounted? (--require-mount) "
        "(see authz-server serve --help)"
    )


def test_require_mount_comes_from_the_environment(tmp_path: Path) -> None:
    process = AuthzProcess(tmp_path, env={"AUTHZ_REQUIRE_MOUNT": "true"})
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            process.start()  # it must exit before serving
    finally:
        process.stop()
    assert process.process is not None
    assert process.process.returncode == 2
    assert f"keys directory {tmp_path} is not a mount point" in process.log


def test_require_mount_refuses_a_project_directory_that_is_not_mounted(
    volumes: Volumes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir = tmp_path / "keys"
    volumes.tmpfs(keys_dir / PROJECT)
    (keys_dir / OTHER).mkdir()
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--keys-dir", str(keys_dir), "--require-mount"])
    assert exited.value.code == 2
    assert f"nor is its project directory {OTHER}:" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["keys-volume", "project-volumes"])
def test_require_mount_starts_on_a_mounted_keys_directory(
    volumes: Volumes, tmp_path: Path, ec_key: PrivateKey, layout: str
) -> None:
    keys_dir = tmp_path / "keys"
    if layout == "keys-volume":
        volumes.tmpfs(keys_dir)
        write_key(keys_dir / PROJECT, KID, ec_key)
    else:
        for project in (PROJECT, OTHER):
            write_key(volumes.tmpfs(keys_dir / project), KID, ec_key)
    assert is_mount_point(keys_dir) is (layout == "keys-volume")
    with AuthzProcess(keys_dir, "--require-mount") as process:
        assert process.stop() == 0


# -- end to end: a real Envoy in front of a real authz-server ----------------------------------


def _post(envoy: EnvoyProcess, project: str, token: str | None) -> int:
    return post(envoy.port, f"/eth/{project}", token=token).status


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("layout", ["keys-volume", "project-volume"])
def test_through_envoy_a_keyed_project_stays_locked_after_its_volume_is_unmounted(
    volumes: Volumes,
    tmp_path: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    layout: str,
    transport: str,
) -> None:
    keys_dir = tmp_path / "keys"
    volume = volumes.tmpfs(keys_dir if layout == "keys-volume" else keys_dir / PROJECT)
    write_key(keys_dir / PROJECT, KID, ec_key)
    valid, forged = mint(ec_key, KID, {}), mint(other_ec_key, KID, {})
    with (
        JsonRpcNode() as node,
        AuthzProcess(keys_dir, "--rescan-interval", "0.2", "--http-listen", "127.0.0.1:0") as authz,
    ):
        config = render(
            listen=Endpoint("127.0.0.1", 0),
            authz=Endpoint("127.0.0.1", authz.port_for(transport)),
            upstream=Endpoint("127.0.0.1", node.port),
            admin=Endpoint("127.0.0.1", 0),
            transport=transport,
        )
        with EnvoyProcess(config) as envoy:
            assert _post(envoy, PROJECT, forged) == 403
            assert _post(envoy, PROJECT, valid) == 200

            volumes.unmount(volume)

            def rescanned() -> bool:
                # Until the next rescan nothing changes; then the server either says
                # the volume is gone, or (the fault this guards against) reads an empty
                # directory, silently, and lets the forged token through.
                logged = any("no longer a mount point" in line for line in authz.lines)
                return logged or _post(envoy, PROJECT, forged) == 200

            wait_for(rescanned, DETECTION_DEADLINE, interval=0.05)

            assert _post(envoy, PROJECT, forged) == 403
            assert _post(envoy, PROJECT, None) == 403
            assert _post(envoy, PROJECT, "not-even-a-jwt") == 403
            assert _post(envoy, PROJECT, valid) == 200
    assert " ERROR authz_server.keystore: " in authz.log
    assert "no longer uses JWT" not in authz.log


def test_the_helpers_mount_what_they_claim(volumes: Volumes, tmp_path: Path) -> None:
    """The premises above, checked once: a tmpfs is another device, and unmounting it
    leaves the directory, empty, on its parent's device."""
    path = volumes.tmpfs(tmp_path / "volume")
    (path / "file").write_text("on the volume")
    assert path.stat().st_dev != tmp_path.stat().st_dev
    assert is_mount_point(path)
    volumes.unmount(path)
    assert path.stat().st_dev == tmp_path.stat().st_dev
    assert list(path.iterdir()) == []
    assert not is_mount_point(path)
