"""The keys directory as the ``keys`` commands change and read it.

Which files are keys, which keys are active and why a file is refused are never
decided here: a :class:`~authz_server.keystore.KeyStore` loads the directory, and
its :attr:`~authz_server.keystore.ProjectKeys.refused` says why each file is not
active. This module adds what only a writer needs:

- a per-project lock (``flock`` on the dot-file :data:`LOCK_NAME`, ignored by the
  loader), so that counting a project's keys and writing a new one is one step even
  when several ``keys add`` run at once, and a listing never sees half of a change;
- atomic writes: a dot-prefixed temporary file in the same directory, fsynced, then
  renamed into place, so a running server never reads a half-written key;
- the sidecar ``.<kid>.json`` holding a key's optional name and when it was added;
- the project's settings file, edited under the same lock and written atomically, each
  version checked by :func:`~authz_server.settings.parse_settings` before it is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import shlex
import stat
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .jwk import thumbprint
from .keys import KeyRejected, VerifyKey, is_valid_id
from .keystore import (
    KEY_SUFFIX,
    MAX_KEYS_PER_PROJECT,
    KeyStore,
    read_key_file,
    scan_key_files,
    scan_projects,
)
from .settings import (
    MAX_SETTINGS_BYTES,
    SETTINGS_FILE,
    ProjectSettings,
    SettingsRejected,
    parse_settings,
    render_settings,
)
from .smallfile import FileRefused, read_small_file

__all__ = [
    "LOCK_NAME",
    "KeyDirError",
    "KeyRow",
    "add_key",
    "edit_settings",
    "key_rows",
    "lock_settings",
    "project_names",
    "remove_key",
    "require_key_id",
    "require_project_id",
    "unlock_settings",
    "write_atomically",
]

LOCK_NAME: Final = ".authz-server.lock"


class KeyDirError(Exception):
    """A change to the keys directory that cannot be made, or an id it refuses;
    ``str()`` is the one-line reason."""


_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One key file of a project, as ``keys list`` shows it."""

    project: str
    kid: str
    name: str | None
    added: dt.datetime | None
    key: VerifyKey | None  # None: refused
    reason: str | None = None  # why it is refused

    @property
    def thumbprint(self) -> str | None:
        return None if self.key is None else thumbprint(self.key.public_key)


_ID_ALPHABET: Final = "1 to 128 of A-Z a-z 0-9 _ -"


def require_project_id(project: str) -> str:
    """A project id as the contract defines it (the gate denies any other)."""
    if not is_valid_id(project):
        raise KeyDirError(f"invalid project id {project!r} ({_ID_ALPHABET})")
    return project


def require_key_id(kid: str) -> str:
    """A key id as the contract defines it: the loader refuses a key file of any other
    name, so no tool creates, names or signs for one (``rm`` removes a stray file)."""
    if not is_valid_id(kid):
        raise KeyDirError(f"invalid key id {kid!r} ({_ID_ALPHABET})")
    return kid


def _quoted(path: Path) -> str:
    """A path as a shell would need it in a command to copy."""
    return shlex.quote(str(path))


def project_names(keys_dir: Path) -> list[str]:
    """The project directories of the keys directory, as the loader sees them."""
    return sorted(scan_projects(keys_dir)[0])


def add_key(
    keys_dir: Path, project: str, pem: bytes, key: VerifyKey, *, name: str | None
) -> tuple[str, int]:
    """Register ``pem`` (already accepted by the key rules) under a new UUID key id.

    Returns the key id and the project's number of keys with it.
    """
    directory = keys_dir / project
    directory.mkdir(mode=0o755, exist_ok=True)
    with _project_lock(directory, exclusive=True):
        # Every valid key counts, active or not: the loader would refuse one more.
        counter = KeyStore(keys_dir, max_keys=sys.maxsize, quiet=True)
        existing = counter.reload([project]).keys_for(project) or {}
        if len(existing) >= MAX_KEYS_PER_PROJECT:
            raise KeyDirError(
                f"project {project} already has {len(existing)} keys, the most a project "
                f"may have ({MAX_KEYS_PER_PROJECT}): remove one first (authz-server keys "
                f"remove --keys-dir {_quoted(keys_dir)} --project {project} ID)"
            )
        new_print = thumbprint(key.public_key)
        for other in existing.values():
            if thumbprint(other.public_key) == new_print:
                raise KeyDirError(f"project {project} already has this key, as {other.kid}")
        kid = str(uuid.uuid4())
        sidecar = _sidecar_path(directory, kid)
        added = dt.datetime.now(dt.UTC).replace(microsecond=0)
        record = {"name": name, "added": added.isoformat().replace("+00:00", "Z")}
        # The sidecar first: whoever sees the key can already see its name.
        write_atomically(sidecar, json.dumps(record).encode() + b"\n", mode=0o644)
        try:
            write_atomically(directory / f"{kid}{KEY_SUFFIX}", pem, mode=0o644)
        except BaseException:
            sidecar.unlink(missing_ok=True)
            raise
    return kid, len(existing) + 1


def remove_key(keys_dir: Path, project: str, kid: str, *, lock_when_last: bool = False) -> int:
    """Delete a key and its sidecar; return how many key files the project has left.

    With ``lock_when_last``, removing the project's last key file first sets
    ``require_jwt = true`` in its settings, so that the project is never open between
    the two steps."""
    directory = keys_dir / project
    unknown = KeyDirError(
        f"project {project} has no key {kid} (see: authz-server keys list "
        f"--keys-dir {_quoted(keys_dir)} --project {project})"
    )
    if not directory.is_dir():
        raise unknown
    with _project_lock(directory, exclusive=True):
        path = directory / f"{kid}{KEY_SUFFIX}"
        if lock_when_last and os.path.lexists(path):
            names = {name for name, _mtime, _mode, _size in _key_files(directory)}
            if names <= {path.name}:
                try:
                    _edit_settings_locked(directory, project, lock_settings)
                except KeyDirError as exc:
                    raise KeyDirError(
                        f"key {kid} not removed: it is the last, so the project would be "
                        f"locked first, and {exc}; or remove it with --open"
                    ) from None
        try:
            path.unlink()
        except FileNotFoundError:
            raise unknown from None
        _sidecar_path(directory, kid).unlink(missing_ok=True)
        _fsync_directory(directory)
        return sum(1 for _ in _key_files(directory))


def key_rows(store: KeyStore, project: str) -> list[KeyRow]:
    """Every key file of a project, oldest first, with the loader's verdict on each."""
    directory = store.keys_dir / project
    with _project_lock(directory, exclusive=False):
        entry = store.reload([project]).projects.get(project)
        active = {} if entry is None else entry.keys
        refused = {} if entry is None else {r.name: r.reason for r in entry.refused}
        rows = []
        for file_name, mtime_ns, mode, size in _key_files(directory):
            kid = file_name.removesuffix(KEY_SUFFIX)
            name, added = _read_sidecar(directory, kid)
            if added is None and mtime_ns:
                added = dt.datetime.fromtimestamp(mtime_ns // 1_000_000_000, dt.UTC)
            key = active.get(kid)
            reason = refused.get(file_name)
            if key is None and reason is None:  # put there by hand since the load
                try:
                    read_key_file(directory / file_name, kid, mode, size)
                    reason = f"over the limit of {store.max_keys} keys (the oldest stay active)"
                except KeyRejected as exc:
                    reason = str(exc)
            rows.append(KeyRow(project, kid, name, added, key, reason))
    return rows


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see the old file or the new."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename or an unlink durable: the directory entry itself is data too."""
    fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _project_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Writers hold the project's lock exclusively, readers shared.

    A reader never creates the lock file (it may have no write access); with no lock
    file there is no writer to wait for.
    """
    path = directory / LOCK_NAME
    try:
        if exclusive:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        else:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _key_files(directory: Path) -> list[tuple[str, int, int, int]]:
    """(name, mtime_ns, mode, size) of each candidate key file, oldest first as the
    loader ranks them; a link that cannot be resolved has mode 0 (the loader refuses it)."""
    try:
        stats = scan_key_files(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    files = [(name, mtime_ns, mode, size) for name, _dev, _ino, size, mtime_ns, mode in stats]
    return sorted(files, key=lambda item: (item[1], item[0]))


def lock_settings(values: dict[str, Any]) -> None:
    """An :func:`edit_settings` edit: the project requires a JWT (``require_jwt = true``)."""
    values["require_jwt"] = True


def unlock_settings(values: dict[str, Any]) -> None:
    """An :func:`edit_settings` edit: the project's ``require_jwt`` back to the default."""
    values.pop("require_jwt", None)


def edit_settings(
    keys_dir: Path, project: str, edit: Callable[[dict[str, Any]], None]
) -> ProjectSettings:
    """Change a project's settings file: ``edit`` changes the file's values in place; the
    result is checked and written atomically (or the file removed when nothing is left).
    Returns the settings as the server will load them. A current file that does not load
    is refused rather than overwritten: what it meant is unknown."""
    directory = keys_dir / project
    directory.mkdir(mode=0o755, exist_ok=True)
    with _project_lock(directory, exclusive=True):
        return _edit_settings_locked(directory, project, edit)


def _edit_settings_locked(
    directory: Path, project: str, edit: Callable[[dict[str, Any]], None]
) -> ProjectSettings:
    path = directory / SETTINGS_FILE
    try:
        # The server's own bounded, non-blocking read: a FIFO in the file's place must not
        # hang the command (and every other holding the project's lock).
        data = read_small_file(path, MAX_SETTINGS_BYTES)
        if len(data) > MAX_SETTINGS_BYTES:
            raise FileRefused("too_large", f"larger than {MAX_SETTINGS_BYTES} bytes")
        values: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        values = {}
    except (FileRefused, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyDirError(
            f"project {project}: the settings file {path} cannot be read or is not TOML "
            f"({exc}); fix or remove it first"
        ) from None
    edit(values)
    if not values:
        path.unlink(missing_ok=True)
        _fsync_directory(directory)
        return ProjectSettings()
    try:
        text = render_settings(values)
    except SettingsRejected as exc:
        raise KeyDirError(f"project {project}: refused: {exc.reason}") from None
    write_atomically(path, text.encode(), mode=0o644)
    return parse_settings(text.encode())


def _sidecar_path(directory: Path, kid: str) -> Path:
    return directory / f".{kid}.json"


def _read_sidecar(directory: Path, kid: str) -> tuple[str | None, dt.datetime | None]:
    """Name and added time; a missing or damaged sidecar only loses that information."""
    try:
        # O_NONBLOCK: a FIFO put in the sidecar's place must not hang a listing.
        fd = os.open(_sidecar_path(directory, kid), os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
    except OSError:
        return None, None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, None
        record = json.loads(os.read(fd, 64 * 1024))
    except (OSError, ValueError, RecursionError):
        return None, None
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        return None, None
    name = record.get("name")
    added = record.get("added")
    when = None
    if isinstance(added, str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(added)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
    return (name if isinstance(name, str) and name else None), when
