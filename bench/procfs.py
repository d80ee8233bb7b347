"""Process trees, CPU time and memory, read from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["ForeignLoad", "cpu_seconds", "memory", "thread_count", "tree"]

_TICKS: Final = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            frontier.extend(int(child) for child in children)
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time used so far by these processes."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICKS


def memory(pids: Iterable[int]) -> dict[str, int]:
    """Bytes summed over ``pids``: ``rss`` (VmRSS), ``hwm`` (peak VmHWM) and ``pss``.

    RSS counts pages shared between forked workers once per process; PSS splits them.
    """
    totals = {"rss": 0, "hwm": 0, "pss": 0}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        totals["rss"] += _kib(status, "VmRSS:")
        totals["hwm"] += _kib(status, "VmHWM:")
        totals["pss"] += _kib(rollup, "Pss:")
    return totals


def thread_count(pids: Iterable[int]) -> int:
    return sum(len(list(Path(f"/proc/{pid}/task").glob("*"))) for pid in pids)


def _kib(text: str, label: str) -> int:
    for line in text.splitlines():
        if line.startswith(label):
            return int(line.split()[1]) * 1024
    return 0


def _all_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks used so far) for every process on the machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _descendants(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _ticks) in table.items():
        children.setdefault(parent, []).append(pid)
    found, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.add(child)
            frontier.append(child)
    return found


class ForeignLoad:
    """CPU used by processes that are not this one or its descendants, over an interval.

    Another job on the machine during a benchmark changes its figures; this says how much.
    Processes that exit within the interval are not counted.
    """

    def __init__(self) -> None:
        self._began = 0.0
        self._ticks: dict[int, int] = {}

    def start(self) -> None:
        table = _all_processes()
        mine = _descendants(table, os.getpid())
        self._ticks = {pid: ticks for pid, (_p, ticks) in table.items() if pid not in mine}
        self._began = time.perf_counter()

    def cores(self) -> float:
        """Average cores used by foreign processes since ``start``."""
        table = _all_processes()
        mine = _descendants(table, os.getpid())
        used = 0
        for pid, (_parent, ticks) in table.items():
            if pid in mine:
                continue
            used += ticks - self._ticks.get(pid, 0)
        wall = time.perf_counter() - self._began
        return used / _TICKS / wall if wall > 0 else 0.0
