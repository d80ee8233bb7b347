"""The per-project budget for failed signature checks: a flood at one project is refused
cheaply once its budget is spent, and no other project, nor a verified token, notices."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import grpc
import pytest

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.budget import FailedCheckBudget
from authz_server.cache import CachingVerifier
from authz_server.devtools.requests import check_request
from authz_server.keys import VerifyKey
from authz_server.tokens import PrivateKey, mint
from authz_server.verifier import Allowed, Denied, Policy, Reason
from tests.authz_process import AuthzProcess
from tests.support import BAD_SIGNATURE, verify_key, write_key

NOW = 1_700_000_000
FLOODED = "flooded-project"
QUIET = "quiet-project"
THROTTLED = "authorization throttled (too many invalid signatures for this project)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_project_that_never_failed_may_always_check(clock: Clock) -> None:
    budget = FailedCheckBudget(rate=0.1, burst=0.25, clock=clock)
    assert budget.allows(FLOODED)
    assert budget.throttled == 0


def test_failures_within_the_burst_pass_and_the_one_that_empties_it_stops_the_next(
    clock: Clock,
) -> None:
    budget = FailedCheckBudget(rate=0.1, burst=0.25, clock=clock)
    budget.charge(FLOODED, 0.2)
    assert budget.allows(FLOODED)
    budget.charge(FLOODED, 0.05)
    assert not budget.allows(FLOODED)
    assert budget.allows(QUIET)  # every project has its own bucket
    assert budget.throttled == 1


def test_the_budget_refills_at_its_rate_and_never_beyond_the_burst(clock: Clock) -> None:
    budget = FailedCheckBudget(rate=0.1, burst=0.25, clock=clock)
    budget.charge(FLOODED, 0.45)  # 0.2 s in debt
    clock.now += 1.9  # refilled by 0.19 s: still in debt
    assert not budget.allows(FLOODED)
    clock.now += 0.2
    assert budget.allows(FLOODED)
    clock.now += 3600  # a long quiet spell refills to the burst, no more
    budget.charge(FLOODED, 0.25)
    assert not budget.allows(FLOODED)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 1)])
def test_a_budget_must_be_positive(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        FailedCheckBudget(rate=rate, burst=burst)


@pytest.fixture
def keys(ec_key: PrivateKey) -> MappingProxyType[str, VerifyKey]:
    return MappingProxyType({"k1": verify_key("k1", ec_key)})


def test_a_flood_of_bad_signatures_is_throttled_and_the_other_project_is_not(
    clock: Clock,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    keys: MappingProxyType[str, VerifyKey],
) -> None:
    # A burst smaller than one check: the first failure spends the whole budget.
    cache = CachingVerifier(Policy(), budget=FailedCheckBudget(rate=1.0, burst=1e-9, clock=clock))
    verified = mint(ec_key, "k1", {"exp": NOW + 60})
    assert cache.decide(FLOODED, verified, keys, NOW) == Allowed("k1")  # cached from now on

    forged = mint(other_ec_key, "k1", {})
    assert cache.decide(FLOODED, forged, keys, NOW) == Denied(Reason.BAD_SIGNATURE, "k1")
    for _ in range(3):
        assert cache.decide(FLOODED, forged, keys, NOW) == Denied(Reason.THROTTLED, "k1")
    fresh = mint(ec_key, "k1", {"exp": NOW + 120})
    assert cache.decide(FLOODED, fresh, keys, NOW) == Denied(Reason.THROTTLED, "k1")

    # What needs no signature check is still answered exactly, and so is a verified token.
    assert cache.decide(FLOODED, None, keys, NOW) == Denied(Reason.MISSING_TOKEN)
    assert cache.decide(FLOODED, "a.b", keys, NOW) == Denied(Reason.MALFORMED)
    unknown = mint(ec_key, "nobody", {})
    assert cache.decide(FLOODED, unknown, keys, NOW) == Denied(Reason.UNKNOWN_KEY_ID, "nobody")
    assert cache.decide(FLOODED, verified, keys, NOW) == Allowed("k1")

    # Another project with the same keys checks signatures as ever.
    assert cache.decide(QUIET, fresh, keys, NOW) == Allowed("k1")
    assert cache.decide(QUIET, forged, keys, NOW) == Denied(Reason.BAD_SIGNATURE, "k1")

    clock.now += 1.0  # refilled
    assert cache.decide(FLOODED, fresh, keys, NOW) == Allowed("k1")


def test_valid_tokens_never_spend_the_budget(
    clock: Clock, ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    budget = FailedCheckBudget(rate=1e-6, burst=1e-9, clock=clock)
    cache = CachingVerifier(Policy(), max_entries=0, budget=budget)  # every token checked
    for n in range(50):
        assert cache.decide(FLOODED, mint(ec_key, "k1", {"n": n}), keys, NOW) == Allowed("k1")
    assert budget.allows(FLOODED)


def _check(stub: external_auth_pb2_grpc.AuthorizationStub, project: str, token: str) -> str:
    """The message of the service's answer, or "allowed"."""
    response = stub.Check(check_request(f"/eth/{project}", token=token), timeout=5)
    if response.status.code == 0:
        return "allowed"
    return str(json.loads(response.denied_response.body)["message"])


@pytest.mark.parametrize(("budget", "throttled"), [("0.000001", True), ("0", False)])
def test_serve_takes_the_budget_from_its_option(
    tmp_path: Path,
    ec_key: PrivateKey,
    other_ec_key: PrivateKey,
    budget: str,
    throttled: bool,
) -> None:
    for project in (FLOODED, QUIET):
        write_key(tmp_path / project, "k1", ec_key)
    forged = mint(other_ec_key, "k1", {})
    with (
        AuthzProcess(tmp_path, "--failed-check-budget", budget, "--cache-size", "0") as authz,
        grpc.insecure_channel(authz.address) as channel,
    ):
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        answers = {_check(stub, FLOODED, forged) for _ in range(20)}
        expected = {BAD_SIGNATURE, THROTTLED} if throttled else {BAD_SIGNATURE}
        assert answers == expected
        assert _check(stub, QUIET, mint(ec_key, "k1", {})) == "allowed"
        assert _check(stub, QUIET, forged) == BAD_SIGNATURE


def test_the_burst_is_two_and_a_half_seconds_of_the_rate() -> None:
    assert FailedCheckBudget(rate=0.1).burst == pytest.approx(0.25)
    assert FailedCheckBudget(rate=0.1, burst=1.0).burst == 1.0
