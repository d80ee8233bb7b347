"""Resident memory of ``authz-server serve`` under a flood of distinct invalid tokens.

    python -m bench.memory_flood [--tokens 1000000] [--max-seconds 3600]

Starts the real service on 127.0.0.1 port 0 with one project holding an ES256 and an
RS256 key, then sends ``--tokens`` well-formed but invalid tokens, every one different,
through gRPC ``Check`` from several client threads (each with its own channel and a
bounded number of calls in flight). The tokens cycle through four kinds, each reaching a
different row of the decision table:

- ``forged-es256``: registered kid, random 64-byte signature (row 6, ECDSA verify);
- ``unknown-kid``: a new kid every time (row 5; a per-kid structure would grow here);
- ``expired-es256``: genuinely signed, expired (row 7, after a full verification);
- ``forged-rs256``: registered kid, random 256-byte signature (row 6, RSA verify).

The server's VmRSS and VmHWM (peak) are read from ``/proc/<pid>/status`` before the
flood, after a warm-up, at intervals, at the end and after a short idle, and printed as
a table with every answer counted by message. Loopback only; not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from authz_server._proto.envoy.service.auth.v3 import (
    external_auth_pb2_grpc,
)
from authz_server.devtools.requests import check_request
from authz_server.tokens import b64url, generate_private_key, mint, public_pem

PROJECT: Final = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
EC_KID: Final = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
RSA_KID: Final = "6b1a3f0e-15a9-11ee-b7c2-0a58538e0d0c"
KINDS: Final = ("forged-es256", "unknown-kid", "expired-es256", "forged-rs256")
EXPECTED: Final = {
    "forged-es256": "invalid JWT token (signature verification failed)",
    "unknown-kid": "invalid JWT token (empty configuration)",
    "expired-es256": "invalid JWT token (expired token)",
    "forged-rs256": "invalid JWT token (signature verification failed)",
}
_SERVING: Final = re.compile(r"serving on (\S+):(\d+):")


def _segment(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class Tokens:
    """The i-th flood token, distinct for every i, of kind ``KINDS[i % 4]``."""

    def __init__(self) -> None:
        self.ec = generate_private_key("ES256")
        self.rsa = generate_private_key("RS256")
        self._es_header = _segment({"alg": "ES256", "typ": "JWT", "kid": EC_KID})
        self._rs_header = _segment({"alg": "RS256", "typ": "JWT", "kid": RSA_KID})
        self._expired = int(time.time()) - 3600

    def __call__(self, i: int) -> tuple[str, str]:
        kind = KINDS[i % len(KINDS)]
        claims = {"jti": i, "sub": "flood"}
        if kind == "forged-es256":
            token = f"{self._es_header}.{_segment(claims)}.{b64url(os.urandom(64))}"
        elif kind == "unknown-kid":
            header = _segment({"alg": "ES256", "typ": "JWT", "kid": f"flood-kid-{i}"})
            token = f"{header}.{_segment(claims)}.{b64url(os.urandom(64))}"
        elif kind == "expired-es256":
            token = mint(self.ec, EC_KID, {**claims, "exp": self._expired})
        else:
            token = f"{self._rs_header}.{_segment(claims)}.{b64url(os.urandom(256))}"
        return kind, token


# -- the server process -------------------------------------------------------------------


class Server:
    """``authz-server serve`` on 127.0.0.1:0; its stderr is drained and counted."""

    def __init__(self, keys_dir: Path, extra: list[str]) -> None:
        binary = Path(sys.executable).parent / "authz-server"
        command = [str(binary), "serve", "--keys-dir", str(keys_dir), "--listen", "127.0.0.1:0"]
        command += ["--drain-delay", "0"]  # nothing health-checks it: stop at once
        self.process = subprocess.Popen(
            [*command, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log_lines = 0
        self.tail: deque[str] = deque(maxlen=20)
        self.address = ""
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self._ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("authz-server did not start:\n" + "\n".join(self.tail))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines += 1
            self.tail.append(line.rstrip("\n"))
            if not self._ready.is_set() and (match := _SERVING.search(line)):
                self.address = f"127.0.0.1:{match.group(2)}"
                self._ready.set()

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# -- the flood -------------------------------------------------------------------------------


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    done: int = 0
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, kind: str, answer: str) -> None:
        with self.lock:
            self.done += 1
            self.answers[(kind, answer)] += 1


def _sender(
    address: str,
    indices: range,
    tokens: Tokens,
    tally: Tally,
    in_flight: int,
    stop: threading.Event,
) -> None:
    slots = threading.BoundedSemaphore(in_flight)
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for i in indices:
            if stop.is_set():
                break
            kind, token = tokens(i)
            request = check_request(
                f"/eth/{PROJECT}",
                headers={"content-type": "application/json"},
                token=token,
                request_id=f"flood-{i}",
            )
            slots.acquire()
            future = stub.Check.future(request, timeout=60)

            def done(f: grpc.Future, kind: str = kind) -> None:
                try:
                    answer = f.result().status.message or "OK"
                except grpc.RpcError as exc:
                    answer = f"rpc error {exc.code().name}"
                tally.record(kind, answer)
                slots.release()

            future.add_done_callback(done)
            with tally.lock:
                tally.sent += 1
        for _ in range(in_flight):  # wait for this thread's calls to finish
            slots.acquire()


@dataclass
class Sample:
    label: str
    requests: int
    seconds: float
    rss_kib: int
    hwm_kib: int
    server_cpu: float


def flood(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="memory-flood-") as tmp:
        tokens = Tokens()
        keys_dir = Path(tmp) / "keys"
        (keys_dir / PROJECT).mkdir(parents=True)
        (keys_dir / PROJECT / f"{EC_KID}.pem").write_bytes(public_pem(tokens.ec))
        (keys_dir / PROJECT / f"{RSA_KID}.pem").write_bytes(public_pem(tokens.rsa))
        extra = ["--log-level", args.log_level]
        server = Server(keys_dir, extra)
        try:
            return _run(args, server, tokens)
        finally:
            status = server.stop()
            _say(f"server exit status {status}; {server.log_lines} log lines read from its stderr")


def _run(args: argparse.Namespace, server: Server, tokens: Tokens) -> int:
    samples: list[Sample] = []
    start = time.monotonic()

    def sample(label: str, done: int) -> None:
        rss, hwm = server.memory_kib()
        samples.append(
            Sample(label, done, time.monotonic() - start, rss, hwm, server.cpu_seconds())
        )

    sample("idle, before", 0)
    tally, stop = Tally(), threading.Event()
    total, clients = args.tokens, args.clients
    per_client = max(1, args.in_flight // clients)
    threads = [
        threading.Thread(
            target=_sender,
            args=(server.address, range(c, total, clients), tokens, tally, per_client, stop),
            daemon=True,
        )
        for c in range(clients)
    ]
    for thread in threads:
        thread.start()
    marks = [args.warmup] + [total * k // args.samples for k in range(1, args.samples)]
    marks = sorted({m for m in marks if 0 < m < total})
    deadline = start + args.max_seconds
    while any(t.is_alive() for t in threads):
        with tally.lock:
            done = tally.done
        while marks and done >= marks[0]:
            sample("after warm-up" if marks[0] == args.warmup else "flooding", marks.pop(0))
        if time.monotonic() > deadline and not stop.is_set():
            _say(f"--max-seconds {args.max_seconds:g} reached: stopping the flood early")
            stop.set()
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    sample("end of flood", tally.done)
    idle_until = time.monotonic() + args.idle_seconds
    while time.monotonic() < idle_until:
        time.sleep(0.2)
    sample(f"idle {args.idle_seconds:g} s after", tally.done)
    _report(samples, tally)
    wrong = {
        (kind, answer): n for (kind, answer), n in tally.answers.items() if EXPECTED[kind] != answer
    }
    return 1 if wrong or tally.done != total else 0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _report(samples: list[Sample], tally: Tally) -> None:
    base = next((s for s in samples if s.label == "after warm-up"), samples[0])
    _say("")
    _say(
        f"{'point':<22} {'requests':>10} {'seconds':>8} {'req/s':>7} "
        f"{'VmRSS MiB':>10} {'vs warm-up':>10} {'VmHWM MiB':>10} {'server CPU s':>12}"
    )
    previous: Sample | None = None
    for s in samples:
        rate = ""
        if previous is not None and s.seconds > previous.seconds and s.requests > previous.requests:
            rate = f"{(s.requests - previous.requests) / (s.seconds - previous.seconds):.0f}"
        delta = (s.rss_kib - base.rss_kib) / 1024
        _say(
            f"{s.label:<22} {s.requests:>10,} {s.seconds:>8.1f} {rate:>7} "
            f"{s.rss_kib / 1024:>10.1f} {delta:>+10.1f} {s.hwm_kib / 1024:>10.1f} "
            f"{s.server_cpu:>12.1f}"
        )
        previous = s
    _say("")
    _say(f"{'kind':<15} {'answer':<52} {'count':>9}  expected?")
    for (kind, answer), n in sorted(tally.answers.items()):
        ok = "yes" if EXPECTED[kind] == answer else "NO"
        _say(f"{kind:<15} {answer:<52} {n:>9,}  {ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Resident memory of authz-server under a flood of distinct invalid tokens."
    )
    parser.add_argument("--tokens", type=lambda s: int(float(s)), default=1_000_000)
    parser.add_argument("--clients", type=int, default=4, help="client threads, one channel each")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight, all clients")
    parser.add_argument("--samples", type=int, default=10, help="memory samples during the flood")
    parser.add_argument("--warmup", type=int, default=10_000, help="requests before the baseline")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop the flood early")
    parser.add_argument("--idle-seconds", type=float, default=5, help="idle wait at the end")
    parser.add_argument("--log-level", default="INFO", help="the server's (INFO logs each denial)")
    return flood(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
