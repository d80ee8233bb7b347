"""Puts ``tests/`` on ``sys.path``: the fuzzer shares its helpers with the test suite
(``wycheproof`` for the vectors and JWKs, ``jws_oracle`` for the signature oracle).

Imported first by the fuzz modules when they run as scripts; under pytest, the
``pythonpath`` setting of pyproject.toml does the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
