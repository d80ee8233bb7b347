"""What every section shares: the options of the run, a scratch directory, the customer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .checks import Customer
from .servers import serve_options

__all__ = ["Context"]


@dataclass
class Context:
    quick: bool
    duration: float  # seconds of load per case in b and c; a uses 0.3 of it per round
    workdir: Path
    customer: Customer = field(init=False)
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        self.customer = Customer.create(self.workdir / "keys")

    @property
    def has_workers(self) -> bool:
        return "--workers" in serve_options()

    @property
    def has_cache(self) -> bool:
        return "--cache-size" in serve_options()

    @property
    def worker_counts(self) -> list[int]:
        """1, and the core count when ``--workers`` exists and there is more than one core."""
        return [1, self.cores] if self.has_workers and self.cores > 1 else [1]

    @property
    def rounds(self) -> int:
        """How many times section a repeats each h2load case (interleaved); medians reported."""
        return 1 if self.quick else 5

    @property
    def tries(self) -> int:
        """Revocation tries (section d): the issue asks for at least 20."""
        return 10 if self.quick else 20

    @property
    def token_pool_cap(self) -> int:
        """At most this many distinct tokens per algorithm (RS256 signing: ~1 ms each)."""
        return 6_000 if self.quick else 40_000

    def path(self, name: str) -> Path:
        return self.workdir / name
