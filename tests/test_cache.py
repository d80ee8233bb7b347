"""The verified-token cache: successes only, bounded, and never outliving a key change."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from authz_server.cache import MAX_CACHED_TOKEN_LENGTH, CachingVerifier
from authz_server.keys import VerifyKey
from authz_server.tokens import PrivateKey, mint
from authz_server.verifier import Allowed, Denied, Policy, Reason
from tests.support import verify_key

NOW = 1_700_000_000
PROJECT = "p"


def keyset(**keys: VerifyKey) -> MappingProxyType[str, VerifyKey]:
    return MappingProxyType(dict(keys))


@pytest.fixture
def keys(ec_key: PrivateKey) -> MappingProxyType[str, VerifyKey]:
    return keyset(k1=verify_key("k1", ec_key))


def test_a_repeated_valid_token_is_answered_from_the_cache(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    token = mint(ec_key, "k1", {"exp": NOW + 60})
    assert cache.decide(PROJECT, token, keys, NOW) == Allowed("k1")
    assert cache.decide(PROJECT, token, keys, NOW) == Allowed("k1")
    assert (cache.hits, cache.misses) == (1, 1)


def test_failures_are_never_cached(
    other_ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    forged = mint(other_ec_key, "k1", {})
    for _ in range(3):
        assert cache.decide(PROJECT, forged, keys, NOW) == Denied(Reason.BAD_SIGNATURE, "k1")
    assert len(cache) == 0
    assert cache.hits == 0


def test_exp_is_rechecked_on_every_hit(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy(leeway=2))
    token = mint(ec_key, "k1", {"exp": NOW + 10})
    assert isinstance(cache.decide(PROJECT, token, keys, NOW), Allowed)
    assert isinstance(cache.decide(PROJECT, token, keys, NOW + 11), Allowed)  # leeway
    assert cache.decide(PROJECT, token, keys, NOW + 12) == Denied(Reason.EXPIRED, "k1")
    assert len(cache) == 0  # an expired entry is dropped


def test_nbf_is_rechecked_on_every_hit(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    token = mint(ec_key, "k1", {"nbf": NOW})
    assert isinstance(cache.decide(PROJECT, token, keys, NOW), Allowed)
    # A clock stepped backwards must not let the cache skip the check.
    assert cache.decide(PROJECT, token, keys, NOW - 1) == Denied(Reason.NOT_YET_VALID, "k1")


def test_any_change_to_the_projects_key_set_invalidates_its_entries(
    ec_key: PrivateKey, other_ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    token = mint(ec_key, "k1", {})
    assert isinstance(cache.decide(PROJECT, token, keys, NOW), Allowed)
    revoked = keyset(k2=verify_key("k2", other_ec_key))
    assert cache.decide(PROJECT, token, revoked, NOW) == Denied(Reason.UNKNOWN_KEY_ID, "k1")
    replaced = keyset(k1=verify_key("k1", other_ec_key))
    assert cache.decide(PROJECT, token, replaced, NOW) == Denied(Reason.BAD_SIGNATURE, "k1")
    assert len(cache) == 0
    # An unrelated addition is still a new key set: verified again, then cached again.
    grown = keyset(k1=keys["k1"], k3=verify_key("k3", other_ec_key))
    assert isinstance(cache.decide(PROJECT, token, grown, NOW), Allowed)
    assert cache.misses == 4


def test_entries_are_per_project(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    token = mint(ec_key, "k1", {})
    assert isinstance(cache.decide("a", token, keys, NOW), Allowed)
    assert cache.decide("b", token, keyset(), NOW) == Denied(Reason.UNKNOWN_KEY_ID, "k1")
    # Neither b's denial nor a third project with the same key displaces a's entry.
    same_key = keyset(**keys)
    assert cache.decide("c", token, same_key, NOW) == Allowed("k1")
    misses = cache.misses
    assert cache.decide("a", token, keys, NOW) == Allowed("k1")
    assert cache.decide("c", token, same_key, NOW) == Allowed("k1")
    assert (cache.hits, cache.misses) == (2, misses)


def test_the_cache_is_bounded_and_evicts_the_oldest(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy(), max_entries=3)
    tokens = [mint(ec_key, "k1", {"n": i}) for i in range(5)]
    for token in tokens:
        cache.decide(PROJECT, token, keys, NOW)
    assert len(cache) == 3
    cache.decide(PROJECT, tokens[4], keys, NOW)
    assert cache.hits == 1
    cache.decide(PROJECT, tokens[0], keys, NOW)
    assert cache.hits == 1  # evicted: verified again


def test_long_tokens_are_verified_but_not_cached(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy())
    token = mint(ec_key, "k1", {"pad": "x" * MAX_CACHED_TOKEN_LENGTH})
    assert isinstance(cache.decide(PROJECT, token, keys, NOW), Allowed)
    assert len(cache) == 0


def test_size_zero_disables_the_cache(
    ec_key: PrivateKey, keys: MappingProxyType[str, VerifyKey]
) -> None:
    cache = CachingVerifier(Policy(), max_entries=0)
    token = mint(ec_key, "k1", {})
    for _ in range(2):
        assert isinstance(cache.decide(PROJECT, token, keys, NOW), Allowed)
    assert len(cache) == 0


def test_projects_without_keys_and_missing_tokens_bypass_the_cache(
    keys: MappingProxyType[str, VerifyKey],
) -> None:
    cache = CachingVerifier(Policy())
    assert cache.decide(PROJECT, "anything", None, NOW) == Allowed(None)
    assert cache.decide(PROJECT, None, keys, NOW) == Denied(Reason.MISSING_TOKEN)
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)
