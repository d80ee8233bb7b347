"""An Envoy external authorizer that locks JSON-RPC endpoints to per-project JWTs.

Modules, one concept each:

- ``verifier``: the decision table of docs/contract.md as one pure function.
- ``keys``: what a key file may hold, and signature checks with one key.
- ``keystore``: the watched keys directory, published as immutable snapshots.
- ``service``: the gRPC ``Authorization/Check`` and health services around them.
- ``cli``: ``authz-server`` and its settings.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
