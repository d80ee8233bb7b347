"""A bounded cache of verified tokens, so a token reused for many requests is checked
with a dictionary look-up instead of a signature verification.

Only successes are cached; failures are cheap to recompute and caching them would let
a flood of garbage evict real entries. An entry remembers the exact key set (the
snapshot's mapping object) it was verified against: once the project's keys change in
any way (a key added, replaced or deleted), the mapping is a new object and the entry
no longer matches, so revocation stays immediate. An entry also remembers the policy
object it was verified under (the server's, or a project's settings over it): a project
whose settings change gets a new policy object, so no entry verified under the old
settings (audience, lifetime, claims sent upstream) is ever used again. ``exp`` and
``nbf`` are re-checked on every hit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Final

from .budget import FailedCheckBudget
from .keys import VerifyKey
from .verifier import Allowed, Decision, Denied, Policy, Reason, check_times, decide

__all__ = ["DEFAULT_MAX_ENTRIES", "MAX_CACHED_TOKEN_LENGTH", "CachingVerifier"]

DEFAULT_MAX_ENTRIES: Final = 32_768
# Real tokens are a few hundred bytes (an RS256 signature alone is 342 characters);
# longer ones are verified every time rather than allowed to fill the memory.
MAX_CACHED_TOKEN_LENGTH: Final = 2048


@dataclass(frozen=True, slots=True)
class _Grant:
    keys: Mapping[str, VerifyKey]
    policy: Policy
    kid: str
    exp: float | None
    nbf: float | None
    headers: tuple[tuple[str, str], ...]


class CachingVerifier:
    """:func:`~authz_server.verifier.decide` with a cache of verified tokens in front."""

    def __init__(
        self,
        policy: Policy,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        budget: FailedCheckBudget | None = None,
    ) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self.budget = budget  # None: failed signature checks are not limited
        self.hits = 0
        self.misses = 0
        # OrderedDict: evicting the oldest with a plain dict's next(iter()) slows down as
        # deleted slots pile up (measured 32 us per insert at 32,768 entries).
        self._entries: OrderedDict[tuple[str, str], _Grant] = OrderedDict()
        self._lock = threading.Lock()  # writers only; reads are single dict look-ups

    def __len__(self) -> int:
        return len(self._entries)

    def decide(
        self,
        project: str,
        token: str | None,
        keys: Mapping[str, VerifyKey] | None,
        now: float,
        policy: Policy | None = None,
    ) -> Decision:
        """The decision under ``policy`` (None: the server's, :attr:`policy`)."""
        if policy is None:
            policy = self.policy
        if keys is None or token is None:
            return decide(token, keys, policy, now)
        if self.max_entries <= 0:
            return self._checked(project, token, keys, now, policy)
        key = (project, token)
        grant = self._entries.get(key)
        if grant is not None and grant.keys is keys and grant.policy is policy:
            self.hits += 1
            reason = check_times(grant.exp, grant.nbf, policy, now)
            if reason is None:
                return Allowed(grant.kid, grant.exp, grant.nbf, grant.headers)
            self._forget(key)
            return Denied(reason, grant.kid)
        self.misses += 1
        decision = self._checked(project, token, keys, now, policy)
        if isinstance(decision, Allowed) and len(token) <= MAX_CACHED_TOKEN_LENGTH:
            assert decision.kid is not None  # a project with keys names the key
            self._remember(
                key,
                _Grant(keys, policy, decision.kid, decision.exp, decision.nbf, decision.headers),
            )
        elif grant is not None:
            self._forget(key)  # verified against an older key set: drop it
        return decision

    def _checked(
        self,
        project: str,
        token: str,
        keys: Mapping[str, VerifyKey],
        now: float,
        policy: Policy,
    ) -> Decision:
        """``decide``, with the project's failed signature checks paid from its budget."""
        budget = self.budget
        if budget is None:
            return decide(token, keys, policy, now)
        start = perf_counter()
        decision = decide(token, keys, policy, now, may_verify=budget.allows(project))
        if isinstance(decision, Denied) and decision.reason is Reason.BAD_SIGNATURE:
            budget.charge(project, perf_counter() - start)
        return decision

    def _remember(self, key: tuple[str, str], grant: _Grant) -> None:
        with self._lock:
            entries = self._entries
            entries.pop(key, None)
            while len(entries) >= self.max_entries:
                entries.popitem(last=False)  # the oldest
            entries[key] = grant

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)
