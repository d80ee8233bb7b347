"""The keys directory, ``KEYS_DIR/<project>/<kid>.pem``, as immutable snapshots.

A reload builds the next :class:`Snapshot` off the request path and publishes it with
one attribute assignment, so a check sees the old key set or the new one, never a mix.
A project's files are re-read only when their stat fingerprint (name, inode, size,
mtime, following symlinks) changed; unchanged projects carry over as they were.

Failure rules (docs/contract.md, "Keys directory"):

- the directory missing or unreadable while running: the last good snapshot stays;
- a project directory that cannot be listed: that project keeps its last key set,
  or, if it had none, denies every token (a storage fault never opens a project);
- a project with candidate ``.pem`` files of which none loads denies every token:
  only a project without any key file is open;
- an unmounted volume (``KEYS_DIR``, or a project directory that was a mount point of
  its own, is one no longer): its last key set stays until it is mounted again.

Refused files are data: :attr:`ProjectKeys.refused` lists each with its reason (for
``keys list`` and ``keys check``), and a reload logs one summary line per project.

A project's settings file (``settings.toml``, see settings.py) is read with its keys and
published in the same snapshot. A file that cannot be used never loosens anything: the
project keeps the last settings that loaded, with an ERROR line and the reason in
:attr:`ProjectKeys.settings_refusal`; a project whose file never loaded (at start, or a
file that appears broken) gets :data:`~authz_server.settings.INVALID_SETTINGS`, which
denies all of its requests. Deleting the file is deliberate, as deleting a key is: the
project is back to the defaults.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from .keys import MAX_KEY_FILE_BYTES, KeyRejected, VerifyKey, is_valid_id, parse_public_key
from .logtext import printable
from .mounts import is_mount_point, read_mount_points
from .settings import (
    INVALID_SETTINGS,
    SETTINGS_FILE,
    ProjectSettings,
    SettingsRejected,
    read_settings_file,
)
from .smallfile import FileRefused, read_small_file

__all__ = [
    "MAX_KEYS_PER_PROJECT",
    "KeyStore",
    "ProjectKeys",
    "Snapshot",
    "is_candidate",
    "read_key_file",
    "scan_key_files",
    "scan_projects",
]

MAX_KEYS_PER_PROJECT: Final = 25
# The refusal code of a loadable key past the first MAX_KEYS_PER_PROJECT.
TOO_MANY_KEYS: Final = "too_many_keys"
KEY_SUFFIX: Final = ".pem"

log = logging.getLogger("authz_server.keystore")
_SILENT: Final = logging.getLogger("authz_server.keystore.quiet")
_SILENT.disabled = True

# Events are grouped for at most 50 ms: quick enough for the 1-second promise, and
# long enough that copying a key file in several writes is read once, whole.
_DEBOUNCE_MS: Final = 50
_STEP_MS: Final = 20
_WAKE_MS: Final = 250
# The safety-net rescan runs at most once per this many of its own durations.
_RESCAN_COST_FACTOR: Final = 20

# A project's refusals are logged as one line: this many reasons, this many file names
# per reason, then counts only. ``keys list`` shows every file.
_LOGGED_REASONS: Final = 8
_LOGGED_FILES_PER_REASON: Final = 3

# (name, st_dev, st_ino, st_size, st_mtime_ns, st_mode); a dangling link is all zeros.
_FileStat = tuple[str, int, int, int, int, int]
# The settings file's stat when it cannot be taken (a dangling link, no permission).
_UNREADABLE: Final[_FileStat] = (SETTINGS_FILE, 0, 0, 0, 0, 0)


class Refusal(NamedTuple):
    """A candidate key file that is not active, and why."""

    name: str  # the file name
    reason: str  # one line for people
    code: str  # a short stable name for the reason (KeyRejected.code, or "too_many_keys")


@dataclass(frozen=True, slots=True)
class ProjectKeys:
    """One project that has key files or a settings file: its active keys and settings."""

    keys: Mapping[str, VerifyKey]
    fingerprint: tuple[_FileStat, ...] = field(repr=False)
    # Every candidate file that is not active, with the reason: unreadable or not an
    # acceptable key, in name order, then those past the key limit, oldest first.
    refused: tuple[Refusal, ...] = field(default=(), repr=False)
    # The project directory's device when it was a mount point of its own (one volume
    # per project); None for a plain directory.
    mount_device: int | None = field(default=None, repr=False)
    # The settings in force (None: no settings file), the file's stat when last read, and
    # why the file as it is now is not in force (None: it is, or there is none).
    settings: ProjectSettings | None = None
    settings_stat: _FileStat | None = field(default=None, repr=False)
    settings_refusal: Refusal | None = field(default=None, repr=False)
    # Whether requests need a JWT: the project has key files (even if none loads), or
    # its settings require one.
    uses_jwt: bool = True


@dataclass(slots=True)
class _Scan:
    """What one reload learned about the keys directory before reading projects."""

    root: os.stat_result
    # Mount points that are directly in KEYS_DIR (real paths): bind mounts of the same
    # file system, which only the mount table shows.
    inner_mounts: frozenset[str]
    # Project directories on another device than KEYS_DIR: name -> st_dev.
    devices: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every protected project's keys at one moment; never mutated once published."""

    projects: Mapping[str, ProjectKeys] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0
    # False only before the first complete scan of the keys directory: which projects
    # have keys is not known yet, so no request may be decided on it (fail closed).
    complete: bool = True

    def keys_for(self, project: str) -> Mapping[str, VerifyKey] | None:
        """The project's keys, or None when the project does not use JWT."""
        entry = self.projects.get(project)
        return None if entry is None or not entry.uses_jwt else entry.keys

    def settings_for(self, project: str) -> ProjectSettings | None:
        """The project's settings in force, or None when it has no settings file."""
        entry = self.projects.get(project)
        return None if entry is None else entry.settings

    @property
    def projects_with_keys(self) -> int:
        """Projects with key files (settings-only projects are not counted)."""
        return sum(1 for p in self.projects.values() if p.fingerprint)

    @property
    def key_count(self) -> int:
        return sum(len(p.keys) for p in self.projects.values())


def is_candidate(name: str) -> bool:
    """A directory entry that may hold a key: ``*.pem``, not hidden."""
    return name.endswith(KEY_SUFFIX) and not name.startswith(".")


class KeyStore:
    """Loads and hot-reloads the keys directory; :attr:`snapshot` is always current."""

    def __init__(
        self, keys_dir: Path, *, max_keys: int = MAX_KEYS_PER_PROJECT, quiet: bool = False
    ) -> None:
        self.keys_dir = keys_dir
        # The command-line tools read the directory without the server's log lines: what
        # they need to know (refused files and why) is data, ProjectKeys.refused.
        self.log = _SILENT if quiet else log
        self.max_keys = max_keys
        self.snapshot = Snapshot(complete=False)
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._dir_available = True
        # KEYS_DIR's device while it is a mount point; once set, KEYS_DIR no longer being
        # one is an unmounted volume, not an empty directory.
        self._root_mount_device: int | None = None
        self._root_unmounted = False
        self._unmounted_projects: set[str] = set()
        # Devices of KEYS_DIR and of the project directories on other devices, and the
        # same-device bind mounts: the watcher re-arms when they change, since its
        # watches on a volume die with the volume and a newly mounted one has none.
        self.mount_layout: tuple[int, frozenset[tuple[str, int]], frozenset[str]] = (
            0,
            frozenset(),
            frozenset(),
        )
        self.watching = threading.Event()
        # Plain counters for metrics (read at scrape time; written under the lock or by
        # the one watcher thread). ``last_reload`` is a time.monotonic() value.
        self.reloads_completed = 0
        self.reload_failures = 0
        self.keys_refused = 0
        self.settings_refused = 0
        self.unmounts_detected = 0
        self._misnamed_projects: set[str] = set()  # project directories refused, by name
        self.last_reload: float | None = None
        self.loaded = threading.Event()  # set once a scan of the whole directory completed

    @property
    def unmounted_volumes(self) -> int:
        """Volumes seen unmounted right now (KEYS_DIR, project directories) whose last
        keys are kept in force."""
        return int(self._root_unmounted) + len(self._unmounted_projects)

    # -- loading ---------------------------------------------------------------

    def reload(self, projects: Iterable[str] | None = None) -> Snapshot:
        """Rescan every project (``projects=None``) or only the named ones."""
        with self._lock:
            current = self.snapshot
            scan = self._check_dir()
            if scan is None:
                self.reload_failures += 1
                return current
            if projects is None:
                try:
                    names = self._project_names(current.projects)
                except OSError as exc:
                    self._mark_unavailable(exc)
                    self.reload_failures += 1
                    return current
                updated: dict[str, ProjectKeys] = {}
            else:
                names = {p for p in projects if is_valid_id(p)}
                updated = dict(current.projects)
            for name in names:
                entry = self._load_project(name, current.projects.get(name), scan)
                if entry is None:
                    updated.pop(name, None)
                else:
                    updated[name] = entry
            self.reloads_completed += 1
            self.last_reload = time.monotonic()
            if projects is None:
                # A project directory gone since it was unmounted is no volume to wait for.
                self._unmounted_projects.intersection_update(names)
                self.mount_layout = (
                    scan.root.st_dev,
                    frozenset(scan.devices.items()),
                    scan.inner_mounts,
                )
                self.loaded.set()
            old = current.projects
            complete = current.complete or projects is None
            if (
                complete == current.complete
                and updated.keys() == old.keys()
                and all(updated[k] is old[k] for k in updated)
            ):
                return current
            self.snapshot = Snapshot(MappingProxyType(updated), current.generation + 1, complete)
            return self.snapshot

    def _check_dir(self) -> _Scan | None:
        """The directory's state for this reload, or None when nothing can be loaded
        from it now (missing, unreadable, unmounted): the last good key set stays."""
        try:
            info = os.stat(self.keys_dir)
        except OSError as exc:
            self._mark_unavailable(exc)
            return None
        if not stat.S_ISDIR(info.st_mode):
            self._mark_unavailable(NotADirectoryError(errno.ENOTDIR, "not a directory"))
            return None
        if not self._dir_available:
            self._dir_available = True
            self.log.warning(
                "keys directory %s is back; reloading keys",
                self.keys_dir,
                extra={"event": "keys_dir_back"},
            )
        mount_points = read_mount_points()
        try:
            mounted = is_mount_point(self.keys_dir, info, mount_points=mount_points)
        except OSError as exc:  # its parent cannot be stat'ed: treat it like the directory
            self._mark_unavailable(exc)
            return None
        if not self._root_is_usable(info, mounted):
            return None
        real = os.path.realpath(self.keys_dir)
        inner = frozenset(p for p in mount_points if os.path.dirname(p) == real and p != real)
        return _Scan(info, inner)

    def _root_is_usable(self, info: os.stat_result, mounted: bool) -> bool:
        """False while KEYS_DIR, a mount point when it was last loaded, is not one."""
        if mounted:
            if self._root_unmounted:
                self._root_unmounted = False
                self.log.warning(
                    "keys directory %s is mounted again; reloading keys",
                    self.keys_dir,
                    extra={"event": "keys_dir_remounted"},
                )
            self._root_mount_device = info.st_dev
            return True
        if self._root_mount_device is None:
            return True  # a plain directory, never seen mounted
        if not self._root_unmounted:
            self._root_unmounted = True
            self.unmounts_detected += 1
            # The watcher's watches died with the volume: re-arm on what is there now.
            self.mount_layout = (info.st_dev, *self.mount_layout[1:])
            self.log.error(
                "keys directory %s is no longer a mount point: its volume was unmounted; "
                "keeping the last good key set until it is mounted again",
                self.keys_dir,
                extra={"event": "keys_dir_unmounted", "keys_dir": str(self.keys_dir)},
            )
        return False

    def _mark_unavailable(self, exc: OSError) -> None:
        if self._dir_available:
            self._dir_available = False
            self.log.error(
                "keys directory %s unavailable (%s); keeping the last good key set",
                self.keys_dir,
                exc.strerror or type(exc).__name__,
                extra={
                    "event": "keys_dir_unavailable",
                    "reason": exc.strerror or type(exc).__name__,
                },
            )

    def _project_names(self, known: Mapping[str, ProjectKeys]) -> set[str]:
        names, misnamed = scan_projects(self.keys_dir, known)
        for name in sorted(misnamed - self._misnamed_projects):
            # No request can name it (the gate denies such ids first): said once, not at
            # every rescan.
            self.log.warning(
                "refused project directory %s: not a project id (1 to 128 of A-Z a-z 0-9 _ -)",
                printable(self.keys_dir / name),
                extra={"event": "project_refused", "project": printable(name)},
            )
        self._misnamed_projects = misnamed
        return names

    def _load_project(
        self, project: str, previous: ProjectKeys | None, scan: _Scan
    ) -> ProjectKeys | None:
        directory = self.keys_dir / project
        try:
            info = os.stat(directory)
            fingerprint = scan_key_files(directory)
            settings_stat = _settings_stat(directory)
            mount_device = self._mount_device(project, directory, info, scan)
        except (FileNotFoundError, NotADirectoryError):
            self._unmounted_projects.discard(project)
            if previous is not None:
                self.log.info(
                    "project %s: key directory removed; project no longer uses JWT",
                    printable(project),
                    extra={"event": "project_removed", "project": printable(project)},
                )
            return None
        except OSError as exc:
            self.log.error(
                "project %s: cannot list %s (%s); keeping its last key set",
                printable(project),
                printable(directory),
                exc.strerror or type(exc).__name__,
                extra={
                    "event": "project_unlistable",
                    "project": printable(project),
                    "reason": exc.strerror or type(exc).__name__,
                },
            )
            return previous or ProjectKeys(MappingProxyType({}), ())
        if previous is not None and previous.mount_device is not None and mount_device is None:
            self._project_unmounted(project, directory)
            return previous
        if project in self._unmounted_projects:
            self._unmounted_projects.discard(project)
            self.log.warning(
                "project %s: key directory %s is mounted again; reloading its keys",
                printable(project),
                printable(directory),
                extra={"event": "project_remounted", "project": printable(project)},
            )
        same_keys = previous is not None and previous.fingerprint == fingerprint
        same_settings = previous is not None and previous.settings_stat == settings_stat
        if previous is not None and same_keys and same_settings:
            if previous.mount_device != mount_device:
                return dataclasses.replace(previous, mount_device=mount_device)
            return previous
        if not fingerprint and settings_stat is None:
            if previous is not None:
                self.log.info(
                    "project %s: no key files left; project no longer uses JWT",
                    printable(project),
                    extra={"event": "project_removed", "project": printable(project)},
                )
            return None
        if previous is not None and same_keys:
            keys, refused = previous.keys, previous.refused
        elif fingerprint:
            keys, refused = self._read_keys(directory, project, fingerprint)
        else:
            keys, refused = MappingProxyType({}), ()
        if previous is not None and same_settings:
            settings, settings_refusal = previous.settings, previous.settings_refusal
        else:
            settings, settings_refusal = self._read_settings(
                directory, project, settings_stat, previous
            )
        if not fingerprint and previous is not None and previous.fingerprint:
            self.log.info(
                "project %s: no key files left; %s",
                printable(project),
                "its settings require a JWT: every request is denied"
                if settings is not None and settings.require_jwt
                else "project no longer uses JWT",
                extra={"event": "project_keys_removed", "project": printable(project)},
            )
        uses_jwt = bool(fingerprint) or (settings is not None and settings.require_jwt)
        return ProjectKeys(
            keys,
            fingerprint,
            refused,
            mount_device,
            settings,
            settings_stat,
            settings_refusal,
            uses_jwt,
        )

    def _read_settings(
        self,
        directory: Path,
        project: str,
        settings_stat: _FileStat | None,
        previous: ProjectKeys | None,
    ) -> tuple[ProjectSettings | None, Refusal | None]:
        """The settings now in force, and why the file is not, if it is not."""
        last = None if previous is None else previous.settings
        if settings_stat is None:
            if last is not None:
                self.log.info(
                    "project %s: settings file removed; the defaults apply",
                    printable(project),
                    extra={"event": "settings_removed", "project": printable(project)},
                )
            return None, None
        path = directory / SETTINGS_FILE
        try:
            if settings_stat is _UNREADABLE or settings_stat == _UNREADABLE:
                raise SettingsRejected(
                    "unresolvable_link", "cannot be resolved (a dangling or unreachable link)"
                )
            settings = read_settings_file(path)
        except FileNotFoundError:  # gone since the stat: the next event reads the change
            settings_error = Refusal(SETTINGS_FILE, "removed while being read", "cannot_open")
            return (last if last is not None else INVALID_SETTINGS), settings_error
        except SettingsRejected as exc:
            kept = last if last is not None else INVALID_SETTINGS
            self.settings_refused += 1
            self.log.error(
                "project %s: settings file %s refused: %s; %s",
                printable(project),
                printable(path),
                printable(exc.reason),
                "every request of the project is denied (invalid project settings)"
                if kept.invalid
                else "keeping the last settings that loaded",
                extra={
                    "event": "settings_refused",
                    "project": printable(project),
                    "reason": exc.code,
                },
            )
            return kept, Refusal(SETTINGS_FILE, exc.reason, exc.code)
        self.log.info(
            "project %s: settings loaded%s",
            printable(project),
            " (report only)" if settings.report_only else "",
            extra={"event": "settings_loaded", "project": printable(project)},
        )
        return settings, None

    def _mount_device(
        self, project: str, directory: Path, info: os.stat_result, scan: _Scan
    ) -> int | None:
        """The project directory's device if it is a mount point of its own, else None."""
        if info.st_dev != scan.root.st_dev:
            scan.devices[project] = info.st_dev
            # On another device: the volume's root, or a link into some other file system.
            mounted = is_mount_point(directory, info, mount_points=frozenset())
            return info.st_dev if mounted else None
        if scan.inner_mounts and os.path.realpath(directory) in scan.inner_mounts:
            return info.st_dev
        return None

    def _project_unmounted(self, project: str, directory: Path) -> None:
        if project in self._unmounted_projects:
            return
        self._unmounted_projects.add(project)
        self.unmounts_detected += 1
        self.log.error(
            "project %s: key directory %s is no longer a mount point: its volume was "
            "unmounted; keeping its last key set until it is mounted again",
            printable(project),
            printable(directory),
            extra={"event": "project_unmounted", "project": printable(project)},
        )

    def _read_keys(
        self, directory: Path, project: str, fingerprint: tuple[_FileStat, ...]
    ) -> tuple[Mapping[str, VerifyKey], tuple[Refusal, ...]]:
        loaded: list[tuple[int, str, VerifyKey]] = []
        refused: list[Refusal] = []
        for name, _dev, _ino, size, mtime_ns, mode in fingerprint:
            kid = name[: -len(KEY_SUFFIX)]
            try:
                key = read_key_file(directory / name, kid, mode, size)
            except KeyRejected as exc:
                refused.append(Refusal(name, str(exc), exc.code))
                continue
            loaded.append((mtime_ns, name, key))
        loaded.sort(key=lambda item: (item[0], item[1]))
        over_limit = f"over the limit of {self.max_keys} keys (the oldest stay active)"
        refused.extend(
            Refusal(name, over_limit, TOO_MANY_KEYS)
            for _mtime, name, _key in loaded[self.max_keys :]
        )
        if refused:
            self.keys_refused += len(refused)
            _log_refusals(self.log, directory, project, refused)
        active = {key.kid: key for _mtime, _name, key in loaded[: self.max_keys]}
        self.log.info(
            "project %s: %d active key(s)",
            printable(project),
            len(active),
            extra={
                "event": "project_keys_loaded",
                "project": printable(project),
                "keys": len(active),
            },
        )
        return MappingProxyType(active), tuple(refused)

    # -- watching --------------------------------------------------------------

    def watch(self, stop: threading.Event, *, rescan_interval: float = 1.0) -> None:
        """Apply changes until ``stop`` is set: file events at once, and a full rescan as
        a safety net (missed events, symlinked directories, a volume that comes back)
        every ``rescan_interval`` seconds, or every 20 rescan durations on trees so
        large that a rescan is costly. Sets :attr:`watching` once file events are
        being received."""
        import watchfiles  # only a running server watches

        # How often the watcher wakes when nothing happens, to see whether a full rescan
        # is due; also the longest wait before the first rescan once it is armed.
        wake_ms = max(1, min(_WAKE_MS, int(rescan_interval * 1000)))
        while not stop.is_set():
            events = watchfiles.watch(
                self.keys_dir,
                watch_filter=None,  # every entry counts: a dot-file renamed into place too
                debounce=_DEBOUNCE_MS,
                step=_STEP_MS,
                stop_event=stop,
                rust_timeout=wake_ms,
                yield_on_timeout=True,
                debug=False,
                raise_interrupt=False,
                force_polling=False,
                recursive=True,
                ignore_permission_denied=True,
            )
            try:
                self._follow(events, stop, rescan_interval)
            except (OSError, RuntimeError):  # the directory is gone: rescan until it is back
                self._safe_reload(None)
            finally:
                events.close()
                self.watching.clear()
            stop.wait(rescan_interval)

    def _follow(
        self,
        events: Iterator[set[tuple[Any, str]]],
        stop: threading.Event,
        rescan_interval: float,
    ) -> None:
        """Apply ``events`` until ``stop``, or until the watcher must be armed anew."""
        last_full = full_cost = 0.0
        armed_on = self.mount_layout
        for changes in events:
            if not self.watching.is_set():
                # The first answer means the watcher is armed: anything changed between
                # the last load and now is seen by this rescan, anything later by events.
                last_full, full_cost = self._timed_full_reload()
                armed_on = self.mount_layout
                self.watching.set()
                if not changes:
                    continue
            # Measured: 50,000 keys take ~0.5 s to rescan; at a fixed 1 s that is half a
            # core spent idle, and events queued behind it waited.
            interval = max(rescan_interval, _RESCAN_COST_FACTOR * full_cost)
            projects = self._projects_of(path for _change, path in changes)
            if projects:  # events first: they never wait for a full rescan
                self._safe_reload(projects)
            if projects is None or time.monotonic() - last_full >= interval:
                last_full, full_cost = self._timed_full_reload()
                if not self._dir_available or self.mount_layout != armed_on:
                    # Arm anew: on the directory once it is back; on the volumes mounted
                    # now (no file event says a volume came or went).
                    return
            if stop.is_set():
                return

    def _timed_full_reload(self) -> tuple[float, float]:
        start = time.monotonic()
        self._safe_reload(None)
        end = time.monotonic()
        return end, end - start

    def _projects_of(self, paths: Iterable[str]) -> set[str] | None:
        """Projects touched by these paths, or None when a full rescan is needed."""
        projects: set[str] = set()
        root = str(self.keys_dir.absolute())
        for raw in paths:
            rel = os.path.relpath(raw, root)
            first = rel.split(os.sep, 1)[0]
            if first in (".", "..") or first.startswith(".."):
                return None
            if os.sep not in rel and not os.path.isdir(raw):
                # A top-level entry that is no directory: a symlink swap or a stray file.
                return None
            projects.add(first)
        return projects

    def _safe_reload(self, projects: set[str] | None) -> None:
        try:
            self.reload(projects)
        except Exception as exc:  # the watcher must outlive any one bad reload
            self.reload_failures += 1
            self.log.exception(
                "key reload failed; keeping the last good key set",
                extra={"event": "reload_failed", "reason": type(exc).__name__},
            )


def _log_refusals(
    log: logging.Logger, directory: Path, project: str, refused: Sequence[Refusal]
) -> None:
    """One line for all of a project's refused files: the reasons, most frequent first,
    each with its first few files and a count, so that a directory of 10,000 bad files
    costs one line per reload, not 10,000 (``keys list`` shows every one)."""
    # Grouped by code ("RSA key of 1000 bits" and "of 1001 bits" are one reason), each
    # shown with the message of its first file.
    by_code: dict[str, tuple[str, list[str]]] = {}
    for refusal in refused:
        by_code.setdefault(refusal.code, (printable(refusal.reason), []))[1].append(refusal.name)
    ranked = sorted(by_code.values(), key=lambda item: -len(item[1]))  # stable: ties keep order
    shown = ranked[:_LOGGED_REASONS]
    files = {reason: names[:_LOGGED_FILES_PER_REASON] for reason, names in shown}
    parts = []
    for reason, names in shown:
        listed = ", ".join(printable(directory / name) for name in files[reason])
        more = len(names) - len(files[reason])
        parts.append(f"{reason}: {listed}" + (f" and {more} more" if more else ""))
    if hidden := ranked[_LOGGED_REASONS:]:
        count = sum(len(names) for _reason, names in hidden)
        parts.append(f"{count} more for {len(hidden)} other reasons")
    total = len(refused)
    log.warning(
        "project %s: %d key file%s refused: %s%s",
        printable(project),
        total,
        "" if total == 1 else "s",
        "; ".join(parts),
        ""
        if total <= _LOGGED_FILES_PER_REASON
        else (
            " (each one: authz-server keys list --keys-dir "
            f"{printable(directory.parent)} --project {printable(project)})"
        ),
        extra={
            "event": "keys_refused",
            "project": printable(project),
            "refused": total,
            "reasons": {reason: len(names) for reason, names in shown},
            "files": [printable(name) for names in files.values() for name in names],
        },
    )


def scan_projects(keys_dir: Path, known: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """The project directories of ``keys_dir``, and the directories whose names are no
    project ids. A link in ``known`` that cannot be followed now (a loop, an unsearchable
    target) still counts: a storage fault, so a known project keeps its keys."""
    names: set[str] = set()
    misnamed: set[str] = set()
    with os.scandir(keys_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    (names if is_valid_id(entry.name) else misnamed).add(entry.name)
            except OSError:
                if entry.name in known:
                    names.add(entry.name)
    return names, misnamed


def _settings_stat(directory: Path) -> _FileStat | None:
    """The settings file's stat (links followed); None when there is no such entry, and
    :data:`_UNREADABLE` when there is one whose stat fails (a storage fault, never "no
    settings")."""
    path = directory / SETTINGS_FILE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return None
        return _UNREADABLE  # a dangling link
    except OSError:
        return _UNREADABLE
    return (SETTINGS_FILE, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


def scan_key_files(directory: Path) -> tuple[_FileStat, ...]:
    """(name, st_dev, st_ino, st_size, st_mtime_ns, st_mode) of each candidate key file,
    following links, sorted by name; a link that cannot be resolved is all zeros."""
    stats: list[_FileStat] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:  # a dangling, looping or unreachable link; refused when read
                stats.append((entry.name, 0, 0, 0, 0, 0))
                continue
            stats.append((entry.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
    return tuple(sorted(stats))


def read_key_file(path: Path, kid: str, mode: int, size: int) -> VerifyKey:
    """Load one key file whose stat (``mode``, ``size``) was just taken; raise
    :class:`KeyRejected` with the reason. Never blocks on a FIFO or device."""
    if mode == 0:
        raise KeyRejected(
            "unresolvable_link", "cannot be resolved (a dangling, looping or unreachable link)"
        )
    if not is_valid_id(kid):
        # The kid travels in a header (x-jwt-kid), in logs and in URLs of the tooling.
        raise KeyRejected(
            "bad_key_id", "the file name is not a key id (1 to 128 of A-Z a-z 0-9 _ -)"
        )
    if not stat.S_ISREG(mode):
        raise KeyRejected("not_regular_file", "not a regular file")
    if size > MAX_KEY_FILE_BYTES:
        raise KeyRejected("too_large", f"file larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        data = read_small_file(path, MAX_KEY_FILE_BYTES)
    except FileNotFoundError as exc:  # deleted since the stat
        raise KeyRejected("cannot_open", f"cannot open ({exc.strerror})") from None
    except FileRefused as exc:
        raise KeyRejected(exc.code, exc.reason) from None
    alg, public_key = parse_public_key(data)
    return VerifyKey(kid=kid, alg=alg, public_key=public_key)
