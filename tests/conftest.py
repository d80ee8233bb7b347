"""Shared fixtures: real key pairs, generated once per session (RSA generation is slow)."""

from __future__ import annotations

import pytest

from authz_server.tokens import PrivateKey, generate_private_key


@pytest.fixture(scope="session")
def rsa_key() -> PrivateKey:
    return generate_private_key("RS256")


@pytest.fixture(scope="session")
def ec_key() -> PrivateKey:
    return generate_private_key("ES256")


@pytest.fixture(scope="session")
def other_ec_key() -> PrivateKey:
    return generate_private_key("ES256")
