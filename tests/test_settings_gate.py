"""The gate with project settings, in-process on a real key store: the order of the
checks, each setting's effect, report-only, and that neither a broken file nor the
verified-token cache ever loosens a project."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from authz_server.cors import Preflight
from authz_server.facts import RequestFacts
from authz_server.gate import Gate
from authz_server.keystore import KeyStore
from authz_server.settings import SETTINGS_FILE
from authz_server.tokens import PrivateKey, mint
from authz_server.verifier import Allowed, Denied, Policy, Reason
from tests.support import write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
KID = "k1"
CLIENT = "203.0.113.7"
ORIGIN = "https://app.example.com"


class World:
    def __init__(self, keys_dir: Path, key: PrivateKey) -> None:
        self.keys_dir = keys_dir
        self.key = key
        self.store = KeyStore(keys_dir)
        self.gate = Gate(lambda: self.store.snapshot, Policy())

    @property
    def project_dir(self) -> Path:
        return self.keys_dir / PROJECT

    def settings(self, text: str) -> None:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        path = self.project_dir / SETTINGS_FILE
        path.write_text(text)
        # Reloads look at the stat: make a rewrite within one clock tick a change too.
        stamp = time.time_ns() + len(text)
        os.utime(path, ns=(stamp, stamp))
        self.store.reload()

    def add_key(self) -> None:
        write_key(self.project_dir, KID, self.key)
        self.store.reload()

    def token(self, **claims: object) -> str:
        return mint(self.key, KID, {"exp": int(time.time()) + 600, **claims})

    def ask(
        self,
        token: str | None = None,
        *,
        address: str | None = CLIENT,
        origin: str | None = ORIGIN,
        project: str = PROJECT,
    ) -> Allowed | Denied:
        decision = self.gate.decide(
            RequestFacts(
                project,
                None if token is None else f"Bearer {token}",
                "rid",
                "POST",
                origin,
                address,
            )
        )
        assert not isinstance(decision, Preflight)
        return decision


@pytest.fixture
def world(keys_dir: Path, ec_key: PrivateKey) -> World:
    world = World(keys_dir, ec_key)
    world.store.reload()
    return world


def reason(decision: Allowed | Denied | Preflight) -> Reason | None:
    return decision.reason if isinstance(decision, Denied) else None


def test_require_jwt_locks_a_project_without_keys(world: World) -> None:
    assert world.ask() == Allowed(None)
    world.settings("require_jwt = true")
    assert reason(world.ask()) is Reason.MISSING_TOKEN
    assert reason(world.ask(world.token())) is Reason.UNKNOWN_KEY_ID
    assert world.store.snapshot.keys_for(PROJECT) == {}


def test_settings_without_require_jwt_leave_a_keyless_project_open(world: World) -> None:
    world.settings('allowed_ips = ["203.0.113.0/24"]')
    assert world.ask("not-a-jwt") == Allowed(None)
    assert reason(world.ask(address="198.51.100.1")) is Reason.IP_NOT_ALLOWED
    assert world.store.snapshot.keys_for(PROJECT) is None


def test_the_order_is_project_id_ip_origin_table_lifetime(world: World) -> None:
    world.add_key()
    world.settings(
        'allowed_ips = ["203.0.113.0/24"]\nallowed_origins = ["https://app.example.com"]\n'
        'max_token_lifetime = "5m"'
    )
    long_lived = world.token()  # 600 s
    assert reason(world.ask(project="bad;id", address="1.1.1.1")) is Reason.INVALID_PROJECT_ID
    assert reason(world.ask(address="1.1.1.1", origin="https://x.example")) is (
        Reason.IP_NOT_ALLOWED
    )
    assert reason(world.ask(origin="https://x.example")) is Reason.ORIGIN_NOT_ALLOWED
    assert reason(world.ask()) is Reason.MISSING_TOKEN
    expired = mint(world.key, KID, {"exp": int(time.time()) - 10})
    assert reason(world.ask(expired)) is Reason.EXPIRED  # the table before the lifetime
    assert reason(world.ask(long_lived)) is Reason.LIFETIME_TOO_LONG
    assert world.ask(world.token(iat=int(time.time()) + 400)) == Denied(
        Reason.LIFETIME_TOO_LONG, KID
    )  # a future iat counts as now: 600 s from now
    assert world.ask(world.token(iat=int(time.time()) - 100)) == Denied(
        Reason.LIFETIME_TOO_LONG, KID
    )
    short = mint(world.key, KID, {"exp": int(time.time()) + 200})
    assert world.ask(short) == Allowed(KID)


def test_max_token_lifetime_requires_exp_and_counts_from_iat(world: World) -> None:
    world.add_key()
    world.settings('max_token_lifetime = "1h"')
    now = int(time.time())
    assert reason(world.ask(mint(world.key, KID, {}))) is Reason.LIFETIME_TOO_LONG
    assert world.ask(mint(world.key, KID, {"iat": now - 3000, "exp": now + 600})) == Allowed(KID)
    assert reason(world.ask(mint(world.key, KID, {"iat": now - 3300, "exp": now + 600}))) is (
        Reason.LIFETIME_TOO_LONG
    )
    assert world.ask(mint(world.key, KID, {"iat": "soon", "exp": now + 3600})) == Allowed(KID)


def test_audience_suffix_and_leeway_override_the_servers(world: World) -> None:
    world.add_key()
    world.gate = Gate(lambda: world.store.snapshot, Policy(audience_suffix="example.com"))
    token = world.token(aud="rpc.example.org")
    assert reason(world.ask(token)) is Reason.BAD_AUDIENCE
    world.settings('audience_suffix = "example.org"')
    assert world.ask(token) == Allowed(KID)
    world.settings('audience_suffix = ""')  # off for this project
    assert world.ask(world.token(aud="anything")) == Allowed(KID)
    just_expired = mint(world.key, KID, {"exp": int(time.time()) - 20})
    assert reason(world.ask(just_expired)) is Reason.EXPIRED
    world.settings("leeway = 60")
    assert world.ask(just_expired) == Allowed(KID)


@pytest.mark.parametrize(
    "settings",
    [
        'max_token_lifetime = "5m"',
        'audience_suffix = "example.com"',
        'allowed_ips = ["10.0.0.0/8"]',
        'allowed_origins = ["https://other.example"]',
        'leeway = 0\nmax_token_lifetime = "1m"',
    ],
)
def test_a_cached_token_never_bypasses_new_settings(world: World, settings: str) -> None:
    world.add_key()
    token = world.token(aud="rpc.example.org")
    assert world.ask(token) == Allowed(KID)
    assert world.ask(token) == Allowed(KID)
    assert world.gate.verifier.hits >= 1  # the second answer came from the cache
    world.settings(settings)
    assert isinstance(world.ask(token), Denied)
    assert isinstance(world.ask(token), Denied)


def test_a_file_that_never_loaded_denies_every_request_of_the_project(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add_key()
    with caplog.at_level(logging.ERROR, "authz_server.keystore"):
        world.settings("require_jwt = maybe")
    for decision in (world.ask(), world.ask(world.token()), world.ask("x", address=None)):
        assert reason(decision) is Reason.INVALID_SETTINGS
    entry = world.store.snapshot.projects[PROJECT]
    assert entry.settings_refusal is not None
    assert entry.settings_refusal.code == "not_toml"
    assert "settings file" in caplog.text
    assert "refused" in caplog.text
    assert world.ask(project="another-project") == Allowed(None)  # other projects unaffected


def test_a_file_that_never_loaded_denies_a_keyless_project_too(world: World) -> None:
    world.settings("allowed_ips = 7")
    assert reason(world.ask()) is Reason.INVALID_SETTINGS


def test_a_broken_file_keeps_the_last_good_settings(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.settings('allowed_ips = ["203.0.113.0/24"]')
    with caplog.at_level(logging.ERROR, "authz_server.keystore"):
        world.settings('allowed_ips = ["203.0.113.0/24"]\nallowed_ipz = []')
    assert reason(world.ask(address="198.51.100.1")) is Reason.IP_NOT_ALLOWED
    assert world.ask() == Allowed(None)
    refusal = world.store.snapshot.projects[PROJECT].settings_refusal
    assert refusal is not None
    assert refusal.code == "unknown_key"
    assert "keeping the last settings that loaded" in caplog.text
    world.settings('allowed_ips = ["198.51.100.0/24"]')  # fixed: the new file is in force
    assert world.ask(address="198.51.100.1") == Allowed(None)
    assert world.store.snapshot.projects[PROJECT].settings_refusal is None


def test_an_unreadable_settings_file_keeps_the_last_good_settings(world: World) -> None:
    world.settings("require_jwt = true")
    path = world.project_dir / SETTINGS_FILE
    path.unlink()
    path.symlink_to(world.project_dir / "nowhere.toml")  # dangling: a storage fault
    world.store.reload()
    assert reason(world.ask()) is Reason.MISSING_TOKEN


def test_deleting_the_settings_file_restores_the_defaults(world: World) -> None:
    world.settings("require_jwt = true")
    assert reason(world.ask()) is Reason.MISSING_TOKEN
    (world.project_dir / SETTINGS_FILE).unlink()
    world.store.reload()
    assert world.ask() == Allowed(None)
    assert PROJECT not in world.store.snapshot.projects


def test_report_only_passes_and_counts_what_it_would_deny(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add_key()
    world.settings('report_only = true\nallowed_ips = ["10.0.0.0/8"]')
    counter = world.gate.metrics.would_deny
    with caplog.at_level(logging.INFO, "authz_server.service"):
        # A pass that would have been a denial goes upstream without the token it came with.
        without_token = Allowed(None, removed=("authorization",))
        assert world.ask() == without_token  # would deny: ip, and no token
        assert world.ask(world.token()) == Allowed(KID)  # would deny: ip; token verified
        assert world.ask(world.token(), address="10.1.1.1") == Allowed(KID)  # nothing to report
        assert world.ask("garbage", address="10.1.1.1") == without_token
    assert counter[Reason.IP_NOT_ALLOWED]._value.get() == 2
    assert counter[Reason.MALFORMED]._value.get() == 1
    assert world.gate.metrics.denied[Reason.IP_NOT_ALLOWED]._value.get() == 0
    assert "would deny project=" in caplog.text
    assert "reason=ip_not_allowed" in caplog.text
    assert "garbage" not in caplog.text


def test_report_only_still_denies_when_the_settings_never_loaded(world: World) -> None:
    world.settings("report_only = true\nrequire_jwt = 1")
    assert reason(world.ask()) is Reason.INVALID_SETTINGS


def test_claims_go_upstream_as_headers_and_client_copies_are_removed(world: World) -> None:
    world.add_key()
    world.settings('[claims_to_headers]\nsub = "x-jwt-sub"\ntenant = "x-jwt-tenant"')
    decision = world.ask(world.token(sub="user-1", tenant=7))
    assert isinstance(decision, Allowed)
    assert decision.headers == (("x-jwt-sub", "user-1"),)  # tenant is no string: not sent
    assert "x-jwt-tenant" in decision.removed  # ... and no client copy of it goes either
    assert {"x_jwt_sub", "x_jwt-sub", "x-jwt_sub"} <= set(decision.removed)
    assert "x-jwt-sub" not in decision.removed  # set, which replaces any client copy
    newline = world.ask(world.token(sub="a\r\nx-evil: 1"))
    assert isinstance(newline, Allowed)
    assert newline.headers == ()
    # Cached: the same claims come back from the cache.
    again = world.ask(world.token(sub="user-1", tenant=7))
    assert isinstance(again, Allowed)


def test_keys_and_settings_change_in_one_snapshot(world: World) -> None:
    world.add_key()
    before = world.store.snapshot
    world.settings("require_jwt = true")
    after = world.store.snapshot
    assert before.projects[PROJECT].settings is None
    assert after.projects[PROJECT].settings is not None
    assert after.projects[PROJECT].keys is before.projects[PROJECT].keys  # keys not re-read
    assert after.generation == before.generation + 1


def test_a_cors_preflight_is_answered_only_from_allowed_origins_and_addresses(
    world: World,
) -> None:
    world.add_key()
    world.settings(
        'allowed_origins = ["https://app.example.com"]\nallowed_ips = ["203.0.113.0/24"]'
    )

    def preflight(origin: str, address: str = CLIENT) -> Allowed | Denied | Preflight:
        return world.gate.decide(
            RequestFacts(PROJECT, None, "rid", "OPTIONS", origin, address, "POST", None)
        )

    assert isinstance(preflight(ORIGIN), Preflight)
    assert reason(preflight("https://evil.example")) is Reason.ORIGIN_NOT_ALLOWED
    assert reason(preflight(ORIGIN, "198.51.100.1")) is Reason.IP_NOT_ALLOWED
