"""The test suite. A package, so that its shared helpers (``tests.support``,
``tests.wycheproof``, ``tests.jws_oracle``, ...) are imported by one name from the tests
and from ``fuzz/`` alike, with the repository root as the only import path."""
