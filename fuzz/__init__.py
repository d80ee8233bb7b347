"""Fuzzing of the token parser and the key loader: ``python -m fuzz.run`` (``make fuzz``).

A package, run from the repository root, so that it imports the helpers it shares with
the test suite (``tests.wycheproof``, ``tests.jws_oracle``) without ``sys.path`` edits.
"""
