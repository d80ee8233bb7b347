"""``python -m bench [--quick] [--only a,b,...] [--duration S]``.

Measures, prints a table per section and writes ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from . import tools
from .context import Context
from .procfs import ForeignLoad
from .report import Section, machine, render_markdown
from .speed import reference_ns

SECTIONS: Final = {
    "a": "check_service",
    "b": "through_envoy",
    "c": "through_envoy",
    "d": "revocation",
    "e": "scale",
    "f": "flood",
    "g": "server_stack",
    "i": "grpc_floor",
    "h": "http_transport",
    "j": "settings_cost",
}
# Modules whose docstrings explain each section's method in RESULTS.md.
METHOD_DOCS: Final = {
    "check_service": ("check_service", "trivial_server", "grpc_load", "inprocess"),
    "through_envoy": ("through_envoy", "envoy_configs"),
    "revocation": ("revocation", "probe"),
    "scale": ("scale",),
    "flood": ("flood",),
    "server_stack": ("server_stack", "sync_server", "stall"),
    "grpc_floor": ("grpc_floor",),
    "http_transport": ("http_transport",),
    "settings_cost": ("settings_cost",),
}
BUSY_CORES: Final = 0.1
RESULTS: Final = Path(__file__).resolve().parent / "RESULTS.md"

PREAMBLE: Final = """Written by `python -m bench` ({mode}; sections {sections}; \
{elapsed:.0f} s in all). \
Every figure below was measured in this one run, on the machine described next, with \
everything on 127.0.0.1. Ratios compare cases measured in the same run with the same \
load generator; absolute figures say more about this machine than about the service. \
The load generators, Envoy and the servers share the same cores: see each section's notes."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections to run (default: all)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of load per case in b and c (default 10, quick 2); a: 0.3 of it per round",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"Markdown report (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in selected if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    duration = args.duration or (2.0 if args.quick else 10.0)

    tools.ensure_tools()
    quiet = ForeignLoad()
    quiet.start()
    time.sleep(1.0)
    busy_at_start = quiet.cores()
    if busy_at_start > BUSY_CORES:
        print(
            f"bench: WARNING: other processes are using {busy_at_start:.2f} cores of "
            f"{os.cpu_count()}; the figures will be lower and noisier than on a quiet machine",
            flush=True,
        )
    began = time.perf_counter()
    speeds = [reference_ns()]
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as scratch:
        ctx = Context(quick=args.quick, duration=duration, workdir=Path(scratch))
        print(
            f"bench: sections {','.join(selected)}; {'quick' if args.quick else 'full'} run; "
            f"{ctx.cores} cores; authz-server options: "
            f"--workers {'yes' if ctx.has_workers else 'no'}, "
            f"--cache-size {'yes' if ctx.has_cache else 'no'}",
            flush=True,
        )
        done_modules: set[str] = set()
        methods: list[tuple[str, str]] = []
        for key in selected:
            module_name = SECTIONS[key]
            if module_name in done_modules:
                continue
            done_modules.add(module_name)
            module = importlib.import_module(f"bench.{module_name}")
            keys = ", ".join(k for k, m in SECTIONS.items() if m == module_name and k in selected)
            for documented in METHOD_DOCS[module_name]:
                doc = inspect.getdoc(importlib.import_module(f"bench.{documented}")) or ""
                methods.append((f"{keys}: `bench/{documented}.py`", doc))
            print(f"\nbench: running {module_name} ...", flush=True)
            started = time.perf_counter()
            foreign = ForeignLoad()
            foreign.start()
            produced = module.run(ctx, selected)
            spent = time.perf_counter() - started
            other = foreign.cores()
            speeds.append(reference_ns())
            for section in produced:
                section.seconds = spent / len(produced)
                if other > BUSY_CORES:
                    section.notes.insert(
                        0,
                        f"WARNING: other processes on the machine used {other:.2f} cores on "
                        "average while this section ran; its figures are lower and noisier "
                        "than on a quiet machine",
                    )
                else:
                    section.notes.append(
                        f"other processes on the machine used {other:.2f} cores on average "
                        "while this section ran"
                    )
                sections.append(section)
                print("\n" + section.text(), flush=True)
    elapsed = time.perf_counter() - began
    preamble = PREAMBLE.format(
        mode="--quick" if args.quick else "full run",
        sections=",".join(selected),
        elapsed=elapsed,
    )
    machine_rows = [
        *machine(),
        ("other load at start", f"{busy_at_start:.2f} cores used by other processes"),
        (
            "CPU speed drift",
            f"a fixed Python loop took {min(speeds):.0f} to {max(speeds):.0f} ns per iteration "
            f"at the {len(speeds)} idle checkpoints of this run (bench/speed.py)",
        ),
    ]
    args.output.write_text(
        render_markdown(sections, machine_rows=machine_rows, preamble=preamble, methods=methods),
        encoding="utf-8",
    )
    print(f"\nbench: wrote {args.output} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
