"""``make run`` works as the README promises: the printed curl commands do what they say."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from authz_server.devtools.demo import DEMO_PROJECT, envoy_config
from authz_server.devtools.envoy_config import LOCAL_CONFIG, LOCAL_PORTS, local_settings, render
from tests.support import readme_shell_block


def _replay(curl: str) -> tuple[int, dict[str, object]]:
    """Send the request a printed curl command describes (curl itself may be absent)."""
    words = shlex.split(curl)
    assert words[:4] == ["curl", "-s", "-X", "POST"]
    url, headers, data = words[4], {}, b""
    rest = iter(words[5:])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, header_value = value.partition(": ")
            headers[name] = header_value
        elif flag == "--data":
            data = value.encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class Demo:
    process: subprocess.Popen[str]
    banner: list[str]
    log: Path  # its stderr

    @property
    def curls(self) -> list[str]:
        return [line.strip() for line in self.banner if line.strip().startswith("curl ")]

    @property
    def dapp_url(self) -> str:
        (line,) = [line for line in self.banner if "A browser dapp" in line]
        return line.split("open ", 1)[1].strip()

    @property
    def gate_port(self) -> int:
        found = re.search(r"Envoy on 127\.0\.0\.1:(\d+)", "".join(self.banner))
        assert found is not None
        return int(found.group(1))


@contextmanager
def running_demo(cwd: Path, **env: str) -> Iterator[Demo]:
    """``make run``'s program on free ports, from ``cwd``, until its banner is out."""
    log = cwd / "demo.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "authz_server.devtools.demo"],
            env={**os.environ, **dict.fromkeys(_PORTS, "0"), **env},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    timer = threading.Timer(60, process.kill)  # a bound on a hung start, not a wait
    timer.start()
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        timer.cancel()
        yield Demo(process, banner, log)
    finally:
        timer.cancel()
        if process.poll() is None:
            # Ctrl-C, as a user stops it: the demo stops its Envoy. A SIGKILL would leave
            # that Envoy running, orphaned, after the test.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


_PORTS = (
    "DEMO_GATE_PORT",
    "DEMO_AUTHZ_PORT",
    "DEMO_NODE_PORT",
    "DEMO_ADMIN_PORT",
    "DEMO_DAPP_PORT",
)


def test_make_run_prints_curl_commands_that_work_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with running_demo(tmp_path, DEMO_DIR=str(tmp_path / "demo")) as demo:
        assert len(demo.curls) == 2, "the demo did not print its two curl commands"
        status, body = _replay(demo.curls[0])
        assert status == 200
        assert str(body["result"]).startswith("0x")
        status, body = _replay(demo.curls[1])
        assert status == 403
        assert body == {"code": -32013, "message": "missing JWT token", "project": DEMO_PROJECT}
        with urllib.request.urlopen(demo.dapp_url, timeout=10) as page:
            assert "callGate" in page.read().decode()  # the browser test runs it (test_browser)
        with urllib.request.urlopen(demo.dapp_url + "token", timeout=10) as answer:
            token = json.loads(answer.read())["token"]
        status, body = _replay(f"{demo.curls[1]} -H 'Authorization: Bearer {token}'")
        assert status == 200
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.stdout is not None
        remaining = demo.process.stdout.read()
        assert demo.process.wait(timeout=30) == 0
        assert "stopped" in remaining
    # The key pair is kept for the next run; the private key is the customer's only.
    private = tmp_path / "demo" / "customer" / "private.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert list((tmp_path / "demo" / "keys" / DEMO_PROJECT).glob("*.pem"))


def test_make_run_says_its_own_denial_is_its_self_check(tmp_path: Path) -> None:
    with running_demo(tmp_path, DEMO_DIR=str(tmp_path / "demo")) as demo:
        log = demo.log.read_text().splitlines()
    denials = [i for i, line in enumerate(log) if "authz_server.service: denied " in line]
    assert len(denials) == 1, log  # the self-check's request without a JWT, and only it
    assert "reason=missing_token" in log[denials[0]]
    assert "self-check" in log[denials[0] - 1]
    assert "the denied ... reason=missing_token line next is this check" in log[denials[0] - 1]


def test_the_readmes_command_line_flow_works_against_make_run(tmp_path: Path) -> None:
    """README "Keys and tokens from the command line", pasted as it stands into a shell
    at the checkout (here: a directory with make run's layout, .venv and .demo)."""
    flow = readme_shell_block("Keys and tokens from the command line")
    assert "127.0.0.1:10000" in flow
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "home").mkdir()
    with running_demo(tmp_path) as demo:  # DEMO_DIR unset: .demo, as for make run
        bash = shutil.which("bash")
        assert bash is not None
        result = subprocess.run(
            [bash, "-euo", "pipefail", "-c", flow.replace(":10000", f":{demo.gate_port}")],
            cwd=tmp_path,
            env={**os.environ, "HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    home_key = tmp_path / "home" / ".authz-server" / "es256"
    assert (home_key / "private.pem").stat().st_mode & 0o777 == 0o600
    out = result.stdout
    kid = re.search(r"answer    allowed \(kid ([0-9a-f-]{36})\)", out)
    assert kid is not None, out  # check: the new key's token is allowed
    # The two curl answers: one JSON object a line (the JWKS is indented over several).
    answers = [json.loads(line) for line in out.splitlines() if line.startswith('{"')]
    assert len(answers) == 2, out
    assert str(answers[0]["result"]).startswith("0x")  # through Envoy, with the new key
    demo_kid = (tmp_path / ".demo" / "customer" / "kid").read_text().strip()
    for exported in (kid.group(1), demo_kid):  # keys export: the project's JWKS
        assert f'"kid": "{exported}"' in out
    assert answers[1] == {
        "code": -32013,
        "message": "invalid JWT token (empty configuration)",
        "project": DEMO_PROJECT,
    }
    assert f"removed key {kid.group(1)} from project {DEMO_PROJECT}" in out


def test_make_run_starts_envoy_with_the_checked_in_local_yaml_at_the_default_ports() -> None:
    gate, authz, node, admin = LOCAL_PORTS.values()
    config, source = envoy_config(gate, authz, node, admin)
    assert source == LOCAL_CONFIG
    checked_in = Path(__file__).resolve().parent.parent / LOCAL_CONFIG
    assert config == yaml.safe_load(checked_in.read_text(encoding="utf-8"))
    assert config == render(**local_settings())  # and that file is current


def test_make_run_renders_the_same_config_for_other_ports() -> None:
    config, source = envoy_config(0, 9101, 8645, 0)
    assert source != LOCAL_CONFIG
    assert config == render(**local_settings(0, 9101, 8645, 0))
    ports = {
        cluster["name"]: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"
        ]["socket_address"]["port_value"]
        for cluster in config["static_resources"]["clusters"]
    }
    assert ports == {"authz": 9101, "upstream": 8645}


def test_the_dapp_page_answers_only_by_a_loopback_name() -> None:
    """A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) is the same
    origin as its own name, not the demo's: it gets no page and no token."""
    import http.client

    from authz_server.devtools.dapp import DappPage

    with DappPage("http://127.0.0.1:10000/eth/", DEMO_PROJECT, lambda: "a-token") as page:

        def get(host: str) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=5)
            try:
                connection.request("GET", "/token", headers={"host": host})
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        assert get(f"127.0.0.1:{page.port}") == (200, b'{"token": "a-token"}')
        assert get(f"localhost:{page.port}")[0] == 200
        status, body = get(f"rebound.example:{page.port}")
        assert status == 403
        assert b"a-token" not in body
