"""The external load generators, h2load and wrk: found (or installed), run, and parsed."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "LoadResult",
    "ensure_tools",
    "h2load",
    "h2load_paced",
    "median_of",
    "wrk",
]

# Debian package of each tool (bookworm: h2load 1.52, wrk 4.1).
PACKAGES: Final = {"h2load": "nghttp2-client", "wrk": "wrk"}


@dataclass
class LoadResult:
    """One load run: ``rate`` in requests/s; latencies in milliseconds."""

    tool: str
    requests: int
    seconds: float
    rate: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    p999_ms: float = float("nan")  # from h2load's log only
    failures: int = 0  # transport errors, timeouts, or non-2xx statuses
    notes: list[str] = field(default_factory=list)


def median_of(runs: Sequence[LoadResult]) -> LoadResult:
    """The runs of one case as one: medians of rates and latencies, sums of counts."""
    return LoadResult(
        tool=runs[0].tool,
        requests=sum(r.requests for r in runs),
        seconds=sum(r.seconds for r in runs),
        rate=statistics.median(r.rate for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        mean_ms=statistics.median(r.mean_ms for r in runs),
        p999_ms=statistics.median(r.p999_ms for r in runs),
        failures=sum(r.failures for r in runs),
    )


def ensure_tools(names: Sequence[str] = ("h2load", "wrk")) -> dict[str, str]:
    """Each tool's path; installs missing ones with apt-get when running as root."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = sorted({PACKAGES[name] for name in missing})
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SystemExit(
                f"bench needs {', '.join(missing)}: install the Debian package(s) "
                f"{' '.join(packages)} (apt-get install -y {' '.join(packages)}) and rerun"
            )
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", *packages],
        ):
            print(f"bench: {' '.join(command)}", flush=True)
            subprocess.run(
                command, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
    found = {name: shutil.which(name) for name in names}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        raise SystemExit(f"bench: {', '.join(absent)} still missing after apt-get install")
    return {name: str(path) for name, path in found.items()}


def tool_version(name: str) -> str:
    flag = "--version" if name == "h2load" else "-v"
    result = subprocess.run([name, flag], capture_output=True, text=True, check=False)
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[0] if text else "?"


# -- h2load -------------------------------------------------------------------

_H2_FINISHED: Final = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_H2_REQUESTS: Final = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2_STATUS: Final = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load(
    urls: str | Sequence[str],
    *,
    duration: float,
    warmup: float = 1.0,
    connections: int = 8,
    streams: int = 8,
    data: Path | None = None,
    headers: Sequence[str] = (),
    rps: int | None = None,
    http1: bool = False,
    log_file: Path | None = None,
    expect_status: int = 200,
) -> LoadResult:
    """Run h2load for ``duration`` seconds after ``warmup``; percentiles from its log file.

    h2load talks to one host and port per run, so with several ``urls`` (servers whose
    worker processes each have a port) one h2load per URL runs at the same time, the
    ``connections`` and the ``rps`` split between them, and the results are added up.
    """
    targets = [urls] if isinstance(urls, str) else list(urls)
    share = max(1, connections // len(targets))
    processes = []
    logs = []
    for number, url in enumerate(targets):
        command = ["h2load", "-t", "1", "-c", str(share), "-m", str(streams)]
        command += ["-D", f"{duration:g}", "--warm-up-time", f"{warmup:g}"]
        if data is not None:
            command += ["-d", str(data)]
        for header in headers:
            command += ["-H", header]
        if rps is not None:
            command += ["--rps", str(max(1, rps // len(targets) // share))]
        if http1:
            command.append("--h1")
        if log_file is not None:
            logs.append(log_file.with_name(f"{log_file.name}.{number}"))
            command += ["--log-file", str(logs[-1])]
        command.append(url)
        processes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    runs = []
    for process in processes:
        out, err = process.communicate(timeout=duration + warmup + 60)
        runs.append(_parse_h2load(process.returncode, out, err, duration, expect_status))
    total = LoadResult(
        tool="h2load",
        requests=sum(r.requests for r in runs),
        seconds=duration,
        rate=sum(r.rate for r in runs),
        failures=sum(r.failures for r in runs),
    )
    if logs:
        _percentiles_from_log(total, logs, expect_status)
        for log in logs:
            log.unlink(missing_ok=True)
    return total


# A pilot of this many requests measures how late h2load's timer fires (see h2load_paced).
_PILOT_REQUESTS: Final = 500
_PILOT_STEP_MS: Final = 0.6
_PILOTS: Final = 4
_CLOSE_ENOUGH: Final = 0.05


def h2load_paced(
    url: str,
    *,
    rate: int,
    duration: float,
    script: Path,
    data: Path | None = None,
    headers: Sequence[str] = (),
    log_file: Path,
    expect_status: int = 200,
) -> LoadResult:
    """``rate`` requests/s one at a time, evenly spaced, over one HTTP/2 connection.

    ``h2load --rps N`` is not a steady rate: its timer ticks about every 10 ms and starts
    the tick's share of requests at once (bursts of 10 at 1,000/s, measured), so a server
    that answers one call at a time makes the 10th wait for the nine before it. Here
    h2load follows a timing script instead, one request per line. It waits each gap
    after the previous start, and its timer fires a roughly constant time late, so a
    pilot run (which is also the warm-up) measures that lateness and the gaps are
    shortened by it (up to four pilots, until one comes within 5%). The lateness still
    varies from run to run: the achieved rate (of the starts, first to last) is in the
    result, and came out 0.88 to 1.49 times ``rate`` on this busy 2-core VM.
    """

    def run(step_ms: float, count: int) -> LoadResult:
        script.write_text("".join(f"{i * step_ms:.3f}\t{url}\n" for i in range(count)))
        command = ["h2load", "-t", "1", "-c", "1", "-m", "64"]
        command += ["--timing-script-file", str(script), "--log-file", str(log_file)]
        if data is not None:
            command += ["-d", str(data)]
        for header in headers:
            command += ["-H", header]
        seconds = count * step_ms / 1000
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=3 * seconds + 60
        )
        loaded = _parse_h2load(
            result.returncode, result.stdout, result.stderr, seconds, expect_status
        )
        # The rate of the starts themselves: h2load's own figure counts the connection's
        # setup and the last answer too, which a short pilot cannot ignore.
        starts = sorted(int(line.split("\t")[0]) for line in log_file.read_text().splitlines())
        if len(starts) > 1 and starts[-1] > starts[0]:
            loaded.rate = (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e6)
        return loaded

    step_ms = _PILOT_STEP_MS
    for _pilot in range(_PILOTS):  # the lateness depends on the gap: pilots until it settles
        pilot = run(step_ms, _PILOT_REQUESTS)
        if abs(pilot.rate / rate - 1) < _CLOSE_ENOUGH:
            break
        late_ms = max(0.0, 1000 / pilot.rate - step_ms)
        step_ms = max(0.05, 1000 / rate - late_ms)
    measured = run(step_ms, max(1, round(rate * duration)))
    _percentiles_from_log(measured, [log_file], expect_status)
    log_file.unlink(missing_ok=True)
    script.unlink(missing_ok=True)
    return measured


def _parse_h2load(
    returncode: int, out: str, err: str, duration: float, expect_status: int
) -> LoadResult:
    finished, counts, statuses = (
        _H2_FINISHED.search(out),
        _H2_REQUESTS.search(out),
        _H2_STATUS.search(out),
    )
    if returncode != 0 or not (finished and counts and statuses):
        raise RuntimeError(f"h2load failed ({returncode}):\n{out}\n{err}")
    done = int(counts.group(3))
    errors = sum(int(counts.group(i)) for i in (5, 6, 7))
    ok_class = int(statuses.group(expect_status // 100 - 1))  # groups: 2xx 3xx 4xx 5xx
    return LoadResult(
        tool="h2load",
        requests=done,
        seconds=duration,
        rate=float(finished.group(3)),
        failures=errors + (done - ok_class),
    )


def _percentiles_from_log(run: LoadResult, logs: Sequence[Path], expect_status: int) -> None:
    """h2load's log: start (µs since the epoch), status, µs to the end of the response."""
    rows = []
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == str(expect_status):
                rows.append(int(parts[2]) / 1000)
    if rows:
        rows.sort()
        run.p50_ms = rows[len(rows) // 2]
        run.p99_ms = rows[min(len(rows) - 1, int(len(rows) * 0.99))]
        run.p999_ms = rows[min(len(rows) - 1, int(len(rows) * 0.999))]
        run.mean_ms = statistics.fmean(rows)


# -- wrk ----------------------------------------------------------------------

_WRK_RATE: Final = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL: Final = re.compile(r"(\d+) requests in ([\d.]+)(\w+),")
_WRK_PCT: Final = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_AVG: Final = re.compile(r"Latency\s+([\d.]+)(us|ms|s)")
_WRK_NON2XX: Final = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET: Final = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_UNIT_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str,
    script: Path,
    *,
    duration: float,
    connections: int = 64,
    threads: int = 2,
) -> LoadResult:
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=duration + 60
    )
    out = result.stdout
    rate, total = _WRK_RATE.search(out), _WRK_TOTAL.search(out)
    if result.returncode != 0 or not (rate and total):
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{out}\n{result.stderr}")
    percentiles = {
        m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)] for m in _WRK_PCT.finditer(out)
    }
    average = _WRK_AVG.search(out)
    non_2xx = _WRK_NON2XX.search(out)
    socket_errors = _WRK_SOCKET.search(out)
    seconds = float(total.group(2)) * _UNIT_MS.get(total.group(3), 1.0) / 1000
    return LoadResult(
        tool="wrk",
        requests=int(total.group(1)),
        seconds=seconds,
        rate=float(rate.group(1)),
        p50_ms=percentiles.get("50", float("nan")),
        p99_ms=percentiles.get("99", float("nan")),
        mean_ms=float(average.group(1)) * _UNIT_MS[average.group(2)] if average else float("nan"),
        failures=(int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
    )


def wrk_post_script(path: Path, *, body: str, token: str | None) -> Path:
    """A wrk Lua script that POSTs ``body`` as JSON with the token as a Bearer header."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if token is not None:
        lines.append(f'wrk.headers["Authorization"] = {_lua_string("Bearer " + token)}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
