"""Fuzz the token parser or the key loader for a bounded time.

    python -m fuzz.run --seconds 60 --target token
    python -m fuzz.run --seconds 60 --target key [--engine random] [--seed 1]

With atheris installed (``pip install -e '.[fuzz]'``) the run is coverage-guided
(libFuzzer, the ``authz_server`` package instrumented); without it, or with
``--engine random``, the same targets run in a plain seeded random-mutation loop. The
seed corpus is built from the Wycheproof vectors on first use (``fuzz/corpus/<target>``)
and libFuzzer adds the inputs it finds interesting to it. A failing input is written to
``fuzz/artifacts/`` and the exit status is non-zero. This is not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
MAX_LEN: Final = {"token": 12 * 1024, "key": 16 * 1024}  # past the 8 KiB token cap
DICTIONARY: Final = (
    b".",
    b"=",
    b"+",
    b"/",
    b"-",
    b"_",
    b" ",
    b"\n",
    b"\x00",
    b"\xff",
    b"Bearer ",
    b'"alg"',
    b'"kid"',
    b'"none"',
    b'"RS256"',
    b'"ES256"',
    b'"crit"',
    b'"exp"',
    b'"nbf"',
    b'"aud"',
    b"NaN",
    b"1e400",
    b"-0",
    b"9" * 40,
    b"[[[[[[[[",
    b"\xef\xbb\xbf",
    b"-----BEGIN PUBLIC KEY-----\n",
    b"-----END PUBLIC KEY-----\n",
    b"-----BEGIN RSA PUBLIC KEY-----\n",
    b"-----BEGIN PRIVATE KEY-----\n",
    b'{"kty":"EC","crv":"P-256"',
)


def load_target(name: str) -> Callable[[bytes], None]:
    """Import the targets (after atheris has hooked imports, when it runs)."""
    from fuzz import targets

    if name == "token":
        return targets.TokenTarget(targets.vector_keys())
    return targets.KeyTarget()


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- the plain random loop ---------------------------------------------------------------------


def _b64_segment_mutation(rng: random.Random, data: bytes) -> bytes:
    """Decode one base64url segment of a token, change its bytes, re-encode it: the
    mutations a byte-level fuzzer rarely makes through the encoding."""
    parts = data.split(b".")
    index = rng.randrange(len(parts))
    segment = parts[index]
    try:
        decoded = bytearray(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except ValueError:
        return data
    decoded = bytearray(_byte_mutation(rng, bytes(decoded), ()))
    # Imported here, not at the top: under atheris, authz_server is imported only inside
    # its instrumentation (and this loop is the random engine's alone).
    from authz_server.tokens import b64url

    parts[index] = b64url(bytes(decoded)).encode("ascii")
    return b".".join(parts)


def _byte_mutation(rng: random.Random, data: bytes, others: tuple[bytes, ...]) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(8)
    position = rng.randrange(len(buf) + 1)
    if kind == 0 and buf:
        buf[min(position, len(buf) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:
        buf[min(position, len(buf) - 1)] = rng.randrange(256)
    elif kind == 2:
        buf[position:position] = rng.choice(DICTIONARY)
    elif kind == 3 and buf:
        del buf[position : position + rng.randrange(1, 16)]
    elif kind == 4 and buf:
        start = rng.randrange(len(buf))
        chunk = buf[start : start + rng.randrange(1, 64)]
        buf[position:position] = chunk * rng.randrange(1, 4)
    elif kind == 5 and others:
        other = rng.choice(others)
        cut = rng.randrange(len(other) + 1)
        buf = buf[:position] + bytearray(other[cut:])
    elif kind == 6:
        del buf[position:]
    else:
        buf[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(buf)


def mutate(rng: random.Random, data: bytes, seeds: tuple[bytes, ...], max_len: int) -> bytes:
    for _ in range(rng.randrange(1, 5)):
        if data.count(b".") == 2 and rng.random() < 0.3:
            data = _b64_segment_mutation(rng, data)
        else:
            data = _byte_mutation(rng, data, seeds)
    return data[:max_len]


def run_random(
    target: Callable[[bytes], None],
    seconds: float,
    corpus_dir: Path,
    artifacts: Path,
    *,
    seed: int,
    max_len: int,
) -> int:
    seeds = tuple(p.read_bytes() for p in sorted(corpus_dir.iterdir()) if p.is_file())
    if not seeds:
        raise SystemExit(f"no seeds in {corpus_dir}")
    rng = random.Random(seed)  # noqa: S311 - reproducible fuzzing, not cryptography
    runs, start = 0, time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        # The seeds themselves first, then mutants.
        data = seeds[runs] if runs < len(seeds) else mutate(rng, rng.choice(seeds), seeds, max_len)
        try:
            target(data)
        except Exception:  # noqa: BLE001 - every exception is a finding, reported below
            artifacts.mkdir(parents=True, exist_ok=True)
            crash = artifacts / f"crash-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"
            crash.write_bytes(data)
            _say(traceback.format_exc())
            _say(f"FAILED after {runs} runs: input saved to {crash}")
            return 1
        runs += 1
    elapsed = time.monotonic() - start
    _say(f"random engine: {runs} runs in {elapsed:.0f} s ({runs / elapsed:.0f}/s), no failure")
    return 0


# -- atheris ------------------------------------------------------------------------------------


def instrumented_target(name: str) -> Callable[[bytes], None]:
    """The target, with ``authz_server`` and the targets imported under atheris' coverage
    instrumentation (which covers only what is first imported inside it)."""
    import atheris

    with atheris.instrument_imports(include=["authz_server", "fuzz.targets"]):
        return load_target(name)


def run_atheris(
    target: Callable[[bytes], None],
    seconds: float,
    corpus_dir: Path,
    artifacts: Path,
    *,
    seed: int,
    max_len: int,
) -> int:
    import atheris

    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-max_total_time={int(seconds)}",
        f"-max_len={max_len}",
        f"-seed={seed}",
        f"-artifact_prefix={artifacts}/",
        "-timeout=20",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        str(corpus_dir),
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()  # libFuzzer exits the process: 0 when time is up, non-zero on a finding
    return 0  # pragma: no cover - not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fuzz the token parser or the key loader for a bounded time."
    )
    parser.add_argument("--target", choices=["token", "key"], required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    parser.add_argument(
        "--engine",
        choices=["auto", "atheris", "random"],
        default="auto",
        help="auto: atheris when installed, else the random loop",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--corpus", type=Path, help="default: fuzz/corpus/<target>")
    parser.add_argument("--artifacts", type=Path, default=HERE / "artifacts")
    args = parser.parse_args(argv)

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
    # The target before the corpus: the corpus builder imports authz_server (its tokens are
    # signed by authz_server.tokens), and atheris instruments only what it sees imported.
    target = instrumented_target(args.target) if engine == "atheris" else load_target(args.target)
    corpus_dir: Path = args.corpus or HERE / "corpus" / args.target
    if not corpus_dir.is_dir() or not any(corpus_dir.iterdir()):
        from fuzz import corpus

        count = corpus.build(args.target, corpus_dir)
        _say(f"built {count} {args.target} seeds from the Wycheproof vectors in {corpus_dir}")
    _say(f"fuzzing {args.target} for {args.seconds:g} s with the {engine} engine")
    max_len = MAX_LEN[args.target]
    if engine == "atheris":
        return run_atheris(
            target, args.seconds, corpus_dir, args.artifacts, seed=args.seed, max_len=max_len
        )
    return run_random(
        target, args.seconds, corpus_dir, args.artifacts, seed=args.seed, max_len=max_len
    )


if __name__ == "__main__":
    sys.exit(main())
