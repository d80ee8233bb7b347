"""A real browser: headless Chromium runs the demo dapp page, from another origin, against
the gate behind a real Envoy (both transports).

The system's Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``;
``.ci/run`` installs them), driven by Selenium; nothing is downloaded. Without them the
tests skip, saying why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from authz_server.devtools.dapp import DappPage
from authz_server.devtools.demo_upstream import JsonRpcNode
from authz_server.devtools.envoy_config import Endpoint, render
from authz_server.devtools.envoy_process import EnvoyProcess
from authz_server.tokens import PrivateKey, mint
from tests.authz_process import AuthzProcess
from tests.support import MISSING, TRANSPORTS, write_key

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCKED = "browser-locked"
OPEN = "browser-open"
# Its settings.toml allows calls from the allowed page's origin only (issue 14).
PAGE_ONLY = "browser-page-only"
KID = "0d1c5a5e-1f0b-4a57-8a3e-6c2b9e4f7d21"
# The flags of a quiet, throwaway headless browser: no sandbox (tests run as root in CI),
# and nothing that phones home or downloads while a test runs.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The page's own readiness, not a sleep: it sets data-state once each call has an answer.
PAGE_TIMEOUT_S = 30


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(
    _missing_browser() is not None, reason=_missing_browser() or "browser present"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Site:
    """The gate behind two Envoys: one allowing every origin, one only ``allowed_page``'s."""

    node: JsonRpcNode
    any_origin: EnvoyProcess
    one_origin: EnvoyProcess
    allowed_page: DappPage
    other_page: DappPage

    @staticmethod
    def endpoint(envoy: EnvoyProcess) -> str:
        return f"http://127.0.0.1:{envoy.port}/eth/"


@pytest.fixture(scope="module", params=TRANSPORTS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ec_key: PrivateKey
) -> Iterator[Site]:
    keys_dir = tmp_path_factory.mktemp("keys")
    write_key(keys_dir / LOCKED, KID, ec_key)

    def fresh_token() -> str:
        return mint(ec_key, KID, {})

    with (
        DappPage("", LOCKED, fresh_token) as allowed_page,
        DappPage("", LOCKED, fresh_token) as other_page,
    ):
        allowed_origin = allowed_page.url.rstrip("/")
        # Written before the server starts: its first scan loads it, no reload to wait for.
        write_key(keys_dir / PAGE_ONLY, KID, ec_key)
        (keys_dir / PAGE_ONLY / "settings.toml").write_text(
            f'allowed_origins = ["{allowed_origin}"]\n'
        )
        with (
            JsonRpcNode() as node,
            AuthzProcess(keys_dir, "--http-listen", "127.0.0.1:0") as authz,
        ):

            def envoy(origins: list[str]) -> EnvoyProcess:
                return EnvoyProcess(
                    render(
                        listen=Endpoint("127.0.0.1", 0),
                        authz=Endpoint("127.0.0.1", authz.port_for(request.param)),
                        upstream=Endpoint("127.0.0.1", node.port),
                        admin=Endpoint("127.0.0.1", 0),
                        transport=request.param,
                        cors_origins=origins,
                    )
                )

            with envoy(["*"]) as any_origin, envoy([allowed_origin]) as one_origin:
                yield Site(node, any_origin, one_origin, allowed_page, other_page)


def open_page(browser: Any, page: DappPage, endpoint: str, project: str = LOCKED) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{page.url}?endpoint={endpoint}&project={project}")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda driver: all(
            driver.find_element("id", shown).get_attribute("data-state") != "pending"
            for shown in ("with-token", "without-token")
        )
    )


def shown(browser: Any, element_id: str) -> tuple[str, str]:
    """What the page shows for one call: its state and the answer's body."""
    element = browser.find_element("id", element_id)
    return element.get_attribute("data-state"), element.get_attribute("data-body")


def call(browser: Any, url: str, token: str | None = None) -> dict[str, Any]:
    """The page's own ``callGate`` run in the browser: ``{status, body}`` or ``{error}``."""
    result: dict[str, Any] = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.callGate(arguments[0], arguments[1]).then(done);",
        url,
        token,
    )
    return result


def test_the_dapp_gets_the_nodes_answer_with_a_jwt_and_reads_the_denial_without(
    browser: Any, site: Site
) -> None:
    open_page(browser, site.allowed_page, site.endpoint(site.any_origin))
    state, body = shown(browser, "with-token")
    assert state == "allowed", body
    assert str(json.loads(body)["result"]).startswith("0x")
    state, body = shown(browser, "without-token")
    assert state == "denied", body
    assert json.loads(body) == {"code": -32013, "message": MISSING, "project": LOCKED}


def test_the_dapp_gets_an_open_projects_answer_without_a_jwt(browser: Any, site: Site) -> None:
    open_page(browser, site.allowed_page, site.endpoint(site.any_origin), project=OPEN)
    for element_id in ("with-token", "without-token"):
        state, body = shown(browser, element_id)
        assert state == "allowed", body
        assert str(json.loads(body)["result"]).startswith("0x")


def test_a_listed_origin_is_served_and_another_is_refused_by_the_browser(
    browser: Any, site: Site, ec_key: PrivateKey
) -> None:
    endpoint = site.endpoint(site.one_origin)
    token = mint(ec_key, KID, {})
    open_page(browser, site.allowed_page, endpoint)
    assert shown(browser, "with-token")[0] == "allowed"
    assert shown(browser, "without-token")[0] == "denied"

    seen_before = len(site.node.requests)
    open_page(browser, site.other_page, endpoint)
    for element_id in ("with-token", "without-token"):
        state, body = shown(browser, element_id)
        assert state == "failed", body
    answer = call(browser, endpoint + LOCKED, token)
    assert answer == {"error": "TypeError: Failed to fetch"}
    # Refused at the preflight: the node never saw any of these calls.
    assert len(site.node.requests) == seen_before


def test_a_projects_allowed_origins_let_its_page_in_and_refuse_another_readably(
    browser: Any, site: Site
) -> None:
    endpoint = site.endpoint(site.any_origin)
    open_page(browser, site.allowed_page, endpoint, project=PAGE_ONLY)
    state, body = shown(browser, "with-token")
    assert state == "allowed", body
    seen_before = len(site.node.requests)
    open_page(browser, site.other_page, endpoint, project=PAGE_ONLY)
    for element_id in ("with-token", "without-token"):
        state, body = shown(browser, element_id)
        assert state == "denied", body
        assert json.loads(body) == {
            "code": -32013,
            "message": "origin not allowed",
            "project": PAGE_ONLY,
        }
    assert len(site.node.requests) == seen_before


def test_the_page_sends_its_token_to_no_endpoint_off_this_machine(browser: Any, site: Site) -> None:
    """?endpoint= may name another gate on this machine only: a link to the demo page with an
    endpoint elsewhere would otherwise have the page send a fresh token there."""
    open_page(browser, site.allowed_page, "http://192.0.2.1:9/eth/")
    target = browser.execute_script("return target")
    assert not target.startswith("http://192.0.2.1"), target
    open_page(browser, site.allowed_page, site.endpoint(site.any_origin))
    assert browser.execute_script("return target").startswith("http://127.0.0.1:")
