"""``make compose-test``: ``docker compose up --build --wait`` for real, and the customer flow
through the composed Envoy.

On a private project name, with Envoy published on free host ports (ENVOY_PORT=0) and a
temporary keys directory (KEYS_DIR), so it never touches a stack of yours or ./keys:

1. two authz replicas, a project without keys: 200;
2. key files dropped into the keys directory by hand: 403 ``missing JWT token``; a token: 200;
3. one key file removed: its token 403 ``empty configuration``, the other key's token 200;
4. a rolling restart, one replica at a time, under load: not one failed request;
5. ``docker compose restart authz`` under load: compose restarts every replica at once,
   so the requests of that gap are denied (fail closed, Envoy's own 403 body), never let through;
6. the same Envoy switched to the HTTP transport (ENVOY_CONFIG=envoy/envoy-http.yaml):
   the denial and the token again;
7. no traceback and no token in ``docker compose logs``.

It always tears down (``down -v``, and the image it built), even on failure. Base images
come from PYTHON_IMAGE and ENVOY_IMAGE (compose.yaml's defaults otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from authz_server.devtools.envoy_config import COMPOSE_CONFIG, COMPOSE_HTTP_CONFIG
from authz_server.tokens import PrivateKey, generate_private_key, mint
from tests.support import MISSING, UNKNOWN_KID, post, write_key

__all__ = ["ComposeError", "Stack", "daemon_problem", "main", "run_flow"]

ROOT: Final = Path(__file__).resolve().parents[1]
PROJECT: Final = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
OPEN_PROJECT: Final = "5b18e8c28750eec300ee361e9412f76f5463716d"
FIRST_KID: Final = "0b4b6d1e-4c1f-4a58-9f0e-5d1c2a7e9b31"
SECOND_KID: Final = "7c2e9a44-1d3b-4f7e-8a65-3b9c0d2e6f18"
UNAVAILABLE: Final = "authorization service unavailable"
REPLICAS: Final = 2
# Generous: the first build installs the dependencies; a restart waits out drain and grace.
BUILD_TIMEOUT_S: Final = 600.0
STEP_TIMEOUT_S: Final = 90.0
RPC_BODY: Final = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})


class ComposeError(AssertionError):
    """A step of the flow did not do what it must."""


def docker() -> str:
    """The docker client on PATH, by its full path."""
    found = shutil.which("docker")
    if found is None:
        raise ComposeError("no docker command on PATH")
    return found


def daemon_problem() -> str | None:
    """Why no compose test can run here (no docker client, compose plugin or daemon), or None."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    for command in ([docker(), "compose", "version"], [docker(), "info"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`docker {' '.join(command[1:])}` failed: {exc}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            return f"`docker {' '.join(command[1:])}` failed: {last}"
    return None


def _message(body: str) -> str:
    """A denial's -32013 message, or the start of a body that is not the gate's JSON."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else repr(body[:60])


class Stack:
    """``docker compose`` on this repository's compose.yaml under a private project name."""

    def __init__(self, name: str, keys_dir: Path, log: Callable[[str], None]) -> None:
        self.name = name
        self.keys_dir = keys_dir
        self.log = log
        self.image = f"authz-server:{name}"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": name,
            "AUTHZ_IMAGE": self.image,
            "KEYS_DIR": str(keys_dir),
            "ENVOY_PORT": "0",
            "ENVOY_ADMIN_PORT": "0",
            # The gRPC stack first, whatever the caller's shell says (the HTTP phase sets it).
            "ENVOY_CONFIG": COMPOSE_CONFIG,
        }

    def compose(self, *args: str, timeout: float = STEP_TIMEOUT_S, check: bool = True) -> str:
        command = [docker(), "compose", "--project-directory", str(ROOT), *args]
        result = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise ComposeError(
                f"`{' '.join(command[4:])}` exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result.stdout

    def base_images(self) -> list[str]:
        """The images the stack is built on, as compose resolves its variables here."""
        services = json.loads(self.compose("config", "--format", "json"))["services"]
        return [services["authz"]["build"]["args"]["PYTHON_IMAGE"], services["envoy"]["image"]]

    def require_base_images(self) -> None:
        """Each base image is here or can be pulled: else one clear failure, at once."""
        for image in self.base_images():
            here = subprocess.run(
                [docker(), "image", "inspect", image], capture_output=True, timeout=30, check=False
            )
            if here.returncode == 0:
                continue
            pulled = subprocess.run(
                [docker(), "pull", "--quiet", image],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
            if pulled.returncode != 0:
                reason = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
                raise ComposeError(
                    f"base image {image} is not here and cannot be pulled ({reason}); set "
                    "PYTHON_IMAGE and ENVOY_IMAGE to images this Docker has, e.g. your "
                    "registry's copies"
                )

    def port(self, container_port: int) -> int:
        published = self.compose("port", "envoy", str(container_port)).strip()
        return int(published.rpartition(":")[2])

    def authz_containers(self) -> list[str]:
        return self.compose("ps", "--quiet", "authz").split()

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        subprocess.run(
            [docker(), "image", "rm", "--force", self.image],
            capture_output=True,
            timeout=60,
            check=False,
        )


class Client:
    """POSTs a JSON-RPC call to a project through the composed Envoy."""

    def __init__(self, port: int) -> None:
        self.port = port

    def post(self, project: str, token: str | None = None) -> tuple[int, str]:
        reply = post(self.port, f"/eth/{project}", token=token, body=RPC_BODY)
        return reply.status, reply.body.decode(errors="replace")

    def expect(self, project: str, token: str | None, status: int, message: str = "") -> None:
        got, body = self.post(project, token)
        if got != status or (message and _message(body) != message):
            raise ComposeError(f"/eth/{project}: expected {status} {message!r}, got {got} {body}")

    def until(self, project: str, token: str | None, status: int, message: str = "") -> float:
        """Seconds until the answer is ``status`` (and ``message``); a change on disk or a
        restart takes effect within a bound, never at a known instant."""
        start = time.monotonic()
        while True:
            try:
                self.expect(project, token, status, message)
                return time.monotonic() - start
            except (ComposeError, OSError) as exc:
                if time.monotonic() - start > STEP_TIMEOUT_S:
                    raise ComposeError(f"not within {STEP_TIMEOUT_S} s: {exc}") from None
            time.sleep(0.05)


def healthy_authz_hosts(admin_port: int) -> int:
    """How many endpoints of Envoy's authz cluster pass its active health check."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        1
        for line in lines
        if line.startswith("authz::") and line.endswith("::health_flags::healthy")
    )


def authz_stats(admin_port: int) -> dict[str, int]:
    """Envoy's counters of the authz cluster's failures: which kind a denial came from."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^cluster\\.authz\\.upstream_(rq_timeout|cx_connect_fail|rq_retry|cx_destroy_remote_with_active_rq|rq_rx_reset|rq_tx_reset)$"
    with urllib.request.urlopen(url, timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return {name.strip(): int(value) for name, _, value in (line.partition(":") for line in lines)}


def wait_until(what: str, predicate: Callable[[], bool]) -> float:
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass  # Envoy's admin restarting, a container between states
        if time.monotonic() - start > STEP_TIMEOUT_S:
            raise ComposeError(f"{what}: not within {STEP_TIMEOUT_S} s")
        time.sleep(0.1)


@contextmanager
def load(client: Client, token: str) -> Iterator[Counter[str]]:
    """Requests one after another with ``token`` while the block runs; the counter holds
    each answer's status, and a denial's message."""
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                status, body = client.post(PROJECT, token)
            except OSError as exc:
                answers[f"error {type(exc).__name__}"] += 1
                continue
            # Not every refusal is the gate's JSON (Envoy's own 503 is text): counted as it is.
            answers[str(status) if status == 200 else f"{status} {_message(body)}"] += 1

    thread = threading.Thread(target=run, name="compose-load", daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(timeout=15)


def rolling_restart(stack: Stack, admin_port: int) -> None:
    """One replica at a time: restart it, then wait until Envoy checks it healthy again."""
    for container in stack.authz_containers():
        subprocess.run(
            [docker(), "restart", container], capture_output=True, timeout=120, check=True
        )
        wait_until(
            "both replicas healthy in Envoy", lambda: healthy_authz_hosts(admin_port) == REPLICAS
        )


def say(line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def run_flow(log: Callable[[str], None] = say) -> dict[str, float]:
    """The whole flow; returns the timings it measured. Raises ComposeError on a failure."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    keys_dir = Path(tempfile.mkdtemp(prefix="authz-compose-keys-"))
    keys_dir.chmod(0o755)  # the service runs as uid 10001
    stack = Stack(f"authz-compose-test-{os.getpid()}", keys_dir, log)
    tokens: list[str] = []
    try:
        stack.require_base_images()
        step = time.monotonic()
        stack.compose(
            "up", "--build", "--wait", "--scale", f"authz={REPLICAS}", timeout=BUILD_TIMEOUT_S
        )
        timings["up --build --wait"] = time.monotonic() - step
        log(f"compose: up --build --wait in {timings['up --build --wait']:.1f} s")
        client = Client(stack.port(10000))
        admin_port = stack.port(9901)
        wait_until(
            "Envoy checks both replicas healthy",
            lambda: healthy_authz_hosts(admin_port) == REPLICAS,
        )
        client.until(OPEN_PROJECT, None, 200)

        first, second = generate_private_key("ES256"), generate_private_key("RS256")
        tokens += [
            mint(first, FIRST_KID, {"exp": time.time() + 3600}),
            mint(second, SECOND_KID, {"exp": time.time() + 3600}),
        ]
        keyed(stack, client, first, second, tokens, timings)

        before = authz_stats(admin_port)
        with load(client, tokens[1]) as answers:
            rolling_restart(stack, admin_port)
        after = authz_stats(admin_port)
        counted = {name: after[name] - before.get(name, 0) for name in after}
        log(f"compose: rolling restart of {REPLICAS} replicas under load: {dict(answers)}")
        # A check Envoy gave up on after its 250 ms timeout is the machine's load (the same
        # happens with no restart: tests/test_lifecycle.py), not the restart: it may be
        # denied. A refused, reset or dropped check would be the restart: none may be.
        failed = sum(count for answer, count in answers.items() if answer != "200")
        timeouts = counted.get("cluster.authz.upstream_rq_timeout", 0)
        if set(answers) - {"200", f"403 {UNAVAILABLE}"} or failed > timeouts:
            raise ComposeError(
                f"a rolling restart failed requests: {dict(answers)}; Envoy counted {counted}"
            )
        if failed:
            log(f"compose: {failed} check(s) timed out at Envoy under this machine's load")

        with load(client, tokens[1]) as answers:
            stack.compose("restart", "authz")
            client.until(PROJECT, tokens[1], 200)
        log(f"compose: `docker compose restart authz` under load: {dict(answers)}")
        if not set(answers) <= {"200", f"403 {UNAVAILABLE}"}:
            raise ComposeError(
                f"compose restart: answers other than 200 or fail-closed 403: {dict(answers)}"
            )

        stack.env["ENVOY_CONFIG"] = COMPOSE_HTTP_CONFIG
        stack.compose("up", "--wait", "--no-deps", "--no-build", "envoy")
        client = Client(stack.port(10000))
        client.until(PROJECT, None, 403, MISSING)
        client.expect(PROJECT, tokens[1], 200)
        client.expect(OPEN_PROJECT, None, 200)
        log("compose: the HTTP transport (ENVOY_CONFIG=envoy/envoy-http.yaml) answers alike")

        logs = stack.compose("logs", "--no-color")
        if "Traceback" in logs:
            raise ComposeError(f"a traceback in docker compose logs:\n{logs[-5000:]}")
        for token in tokens:
            if token.split(".")[2] in logs:
                raise ComposeError("a token in docker compose logs")
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"timed out: {exc}") from None
    finally:
        if sys.exc_info()[0] is not None:
            log(stack.compose("logs", "--no-color", "--tail", "40", check=False))
        stack.down()
        shutil.rmtree(keys_dir, ignore_errors=True)
    timings["whole flow"] = time.monotonic() - started
    log(f"compose: the whole flow in {timings['whole flow']:.1f} s")
    return timings


def keyed(
    stack: Stack,
    client: Client,
    first: PrivateKey,
    second: PrivateKey,
    tokens: list[str],
    timings: dict[str, float],
) -> None:
    """Key files dropped in and removed by hand, as an operator's dashboard would."""
    project_dir = stack.keys_dir / PROJECT
    write_key(project_dir, FIRST_KID, first)
    write_key(project_dir, SECOND_KID, second)
    # Readable by the container's uid 10001 whatever this shell's umask made them.
    project_dir.chmod(0o755)
    for key_file in project_dir.glob("*.pem"):
        key_file.chmod(0o644)
    timings["key dropped in -> enforced"] = client.until(PROJECT, None, 403, MISSING)
    client.expect(PROJECT, tokens[0], 200)
    client.expect(PROJECT, tokens[1], 200)
    client.expect(OPEN_PROJECT, None, 200)
    (project_dir / f"{FIRST_KID}.pem").unlink()
    timings["key removed -> revoked"] = client.until(PROJECT, tokens[0], 403, UNKNOWN_KID)
    client.expect(PROJECT, tokens[1], 200)
    stack.log(
        f"compose: keys dropped in enforced in {timings['key dropped in -> enforced']:.2f} s,"
        f" removal revoked in {timings['key removed -> revoked']:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    if argv:
        sys.stderr.write(__doc__ or "")
        return 2
    problem = daemon_problem()
    if problem is not None:
        sys.stderr.write(f"compose-test: cannot run: {problem}\n")
        return 2
    try:
        run_flow()
    except ComposeError as exc:
        sys.stderr.write(f"compose-test: FAILED: {exc}\n")
        return 1
    sys.stdout.write("compose-test: passed\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
