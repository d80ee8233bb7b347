"""Mount points: is a directory the root of a mounted volume, or just a directory?

An unmounted volume leaves its mount-point directory behind, empty or showing whatever
was under it before the mount; to the key loader that looks like "every key deleted".
The key store asks this module to tell the two apart (docs/contract.md, "Keys
directory": an unmounted volume is a storage fault), and ``serve --require-mount``
asks it whether the keys volume is there at all before starting.

Two sources, because neither alone is enough:

- the device: a directory on another device than its parent is a mount point. That
  covers every container volume (tmpfs ConfigMaps and Secrets, persistent volumes,
  bind mounts from the host into the container's overlay root);
- ``/proc/self/mountinfo`` (Linux): a bind mount of a directory of the same file
  system keeps its parent's device, and only the mount table shows it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from .logtext import printable

__all__ = ["is_mount_point", "missing_mount", "read_mount_points"]

MOUNTINFO: Final = "/proc/self/mountinfo"
# mountinfo escapes space, tab, newline and backslash in paths as \ooo (octal).
_OCTAL_ESCAPE: Final = re.compile(rb"\\([0-7]{3})")


def read_mount_points(mountinfo: str = MOUNTINFO) -> frozenset[str]:
    """Every mount point of this process's mount namespace; empty where there is no
    mount table to read (not Linux, no /proc)."""
    try:
        with open(mountinfo, "rb") as table:
            data = table.read()
    except OSError:
        return frozenset()
    points = set()
    for line in data.splitlines():
        fields = line.split(b" ", 5)  # id, parent id, major:minor, root, mount point, ...
        if len(fields) >= 5:
            raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
            points.add(os.fsdecode(raw))
    return frozenset(points)


def is_mount_point(
    path: Path,
    info: os.stat_result | None = None,
    *,
    mount_points: frozenset[str] | None = None,
) -> bool:
    """Whether ``path`` (symlinks followed, like every read of the keys directory) is
    the root of a mounted file system. ``info`` is ``os.stat(path)`` when the caller
    has it; ``mount_points`` the table when the caller read it already. Raises
    ``OSError`` when ``path`` or its parent cannot be stat'ed."""
    if info is None:
        info = os.stat(path)
    # "path/.." resolves a symlinked path first: this is the parent of its target.
    parent = os.stat(os.path.join(path, os.pardir))
    if info.st_dev != parent.st_dev or info.st_ino == parent.st_ino:  # (== : it is "/")
        return True
    points = read_mount_points() if mount_points is None else mount_points
    return os.path.realpath(path) in points


def missing_mount(keys_dir: Path) -> str | None:
    """Why ``keys_dir`` does not look mounted, or None when it does.

    Mounted means: ``keys_dir`` is a mount point (one volume for every project), or it
    holds at least one project directory and every one of them is a mount point (one
    volume per project, as in deploy/kubernetes). Anything else is a volume that is not
    there yet, and a server started on it would leave every project open.
    """
    points = read_mount_points()
    try:
        if is_mount_point(keys_dir, mount_points=points):
            return None
        projects = sorted(
            entry.name
            for entry in os.scandir(keys_dir)
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=True)
        )
        unmounted = [
            name for name in projects if not is_mount_point(keys_dir / name, mount_points=points)
        ]
    except OSError as exc:
        return f"keys directory {keys_dir}: cannot tell whether it is mounted ({exc.strerror})"
    if not projects:
        return (
            f"keys directory {keys_dir} is not a mount point and holds no project directory "
            "that is one: is its volume mounted? (--require-mount)"
        )
    if unmounted:
        more = f" (and {len(unmounted) - 1} more)" if len(unmounted) > 1 else ""
        return (
            f"keys directory {keys_dir} is not a mount point, nor is its project directory "
            f"{printable(unmounted[0])}{more}: mount a volume on the keys directory, or one "
            "on every project directory (--require-mount)"
        )
    return None
