"""Shared fixtures: real key pairs, generated once per session (RSA generation is slow), and
the keys directory."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """An empty keys directory, ``<tmp_path>/keys``. A module whose tests need keys in it
    has its own fixture, named for what it holds, that writes them into this one."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return directory
