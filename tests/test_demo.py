"""``make run`` works as the README promises: the printed curl commands do what they say."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from authz_server.devtools.demo import DEMO_PROJECT, envoy_config
from authz_server.devtools.envoy_config import LOCAL_CONFIG, LOCAL_PORTS, local_settings, render


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


def test_make_run_prints_curl_commands_that_work_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_GATE_PORT": "0",
        "DEMO_AUTHZ_PORT": "0",
        "DEMO_NODE_PORT": "0",
        "DEMO_ADMIN_PORT": "0",
        "DEMO_DAPP_PORT": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "authz_server.devtools.demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    curls: list[str] = []
    dapp_urls: list[str] = []
    timer = threading.Timer(60, process.kill)  # a bound on a hung start, not a wait
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip().startswith("curl "):
                curls.append(line.strip())
            if "A browser dapp" in line:
                dapp_urls.append(line.split("open ", 1)[1].strip())
            if "Ctrl-C stops everything" in line:
                break
        assert len(curls) == 2, "the demo did not print its two curl commands"
        status, body = _replay(curls[0])
        assert status == 200
        assert str(body["result"]).startswith("0x")
        status, body = _replay(curls[1])
        assert status == 403
        assert body == {"code": -32013, "message": "missing JWT token", "project": DEMO_PROJECT}
        (dapp_url,) = dapp_urls
        with urllib.request.urlopen(dapp_url, timeout=10) as page:
            assert "callGate" in page.read().decode()  # the browser test runs it (test_browser)
        with urllib.request.urlopen(dapp_url + "token", timeout=10) as answer:
            token = json.loads(answer.read())["token"]
        status, body = _replay(f"{curls[1]} -H 'Authorization: Bearer {token}'")
        assert status == 200
        process.send_signal(signal.SIGINT)
        remaining = process.stdout.read()
        assert process.wait(timeout=30) == 0
        assert "stopped" in remaining
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    # The key pair is kept for the next run; the private key is the customer's only.
    private = tmp_path / "demo" / "customer" / "private.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert list((tmp_path / "demo" / "keys" / DEMO_PROJECT).glob("*.pem"))


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
