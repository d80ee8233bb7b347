"""The fuzz targets (``fuzz/``) run in the suite too: over every seed of their corpus and a
fixed, seeded batch of mutants, without atheris. ``make fuzz`` runs them for longer, guided
by coverage; this keeps them working, and the oracle they and the properties share honest."""

from __future__ import annotations

import random

import pytest

from authz_server.tokens import PrivateKey, b64url, mint
from fuzz import corpus, run, targets
from tests.jws_oracle import genuinely_signed
from tests.wycheproof import b64url_decode

MUTANTS = 2000


@pytest.mark.parametrize("name", ["token", "key"])
def test_every_seed_and_a_seeded_batch_of_mutants_pass_the_target(name: str) -> None:
    seeds = tuple(corpus.token_seeds() if name == "token" else corpus.key_seeds())
    assert len(seeds) >= 100, "the Wycheproof vectors should give a real corpus"
    target = run.load_target(name)
    for seed in seeds:
        target(seed)
    rng = random.Random(20261129)  # noqa: S311 - reproducible mutants, not cryptography
    for _ in range(MUTANTS):
        target(run.mutate(rng, rng.choice(seeds), seeds, run.MAX_LEN[name]))


def test_the_token_target_sees_allowed_tokens() -> None:
    """The seeds reach the allow path, where the oracle is consulted (else the target
    would check nothing but refusals)."""
    target = targets.TokenTarget(targets.vector_keys())
    allowed = [
        seed
        for seed in corpus.token_seeds()
        if genuinely_signed(seed.decode("latin-1"), target.oracle_keys)
    ]
    assert len(allowed) >= 10


def test_the_oracle_accepts_a_signature_and_nothing_else(
    ec_key: PrivateKey, rsa_key: PrivateKey
) -> None:
    keys = {"e": ("ES256", ec_key.public_key()), "r": ("RS256", rsa_key.public_key())}
    good_ec, good_rsa = mint(ec_key, "e", {}), mint(rsa_key, "r", {"exp": 1})
    assert genuinely_signed(good_ec, keys)
    assert genuinely_signed(good_rsa, keys)
    header, payload, signature = good_ec.split(".")
    assert not genuinely_signed(f"{header}.{b64url(b'{}  ')}.{signature}", keys)  # payload
    raw = bytearray(b64url_decode(signature))
    raw[5] ^= 1
    assert not genuinely_signed(f"{header}.{payload}.{b64url(bytes(raw))}", keys)
    assert not genuinely_signed(good_ec, {"e": ("RS256", ec_key.public_key())})  # alg
    assert not genuinely_signed(good_ec, {"r": keys["r"]})  # unknown kid
    assert not genuinely_signed(good_ec + "=", keys)  # not canonical base64url
