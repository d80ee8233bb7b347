"""The gate's decision for one request, whatever the transport that asked.

:class:`Gate` holds what every transport shares: the current key snapshot, the cache of
verified tokens, the metrics and the denial log line. A transport finds the request's
facts (:class:`~authz_server.facts.RequestFacts`: the project, the ``Authorization``
header, the request id, the origin, the client address, ...) in its own wire format, asks
:meth:`Gate.decide`, and encodes the :class:`~authz_server.verifier.Decision` it gets.
``decide`` never raises: anything unexpected becomes a denial (the gate fails closed).
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from time import perf_counter
from typing import Final

from .budget import DEFAULT_RATE, FailedCheckBudget
from .cache import DEFAULT_MAX_ENTRIES, CachingVerifier
from .cors import Preflight, is_origin
from .facts import RequestFacts
from .keystore import ProjectKeys, Snapshot
from .logtext import printable
from .metrics import CheckMetrics
from .settings import ProjectSettings
from .verifier import (
    Allowed,
    Decision,
    Denied,
    Policy,
    Reason,
    bearer_token,
    deny_body,
    project_id_denial,
)

__all__ = [
    "AUTHZ_PROJECT_HEADER",
    "FORGED_ALIASES",
    "JWT_KID_HEADER",
    "EncodedAnswers",
    "Gate",
    "RequestFacts",
    "cors_denial_headers",
    "denial_body",
    "headers_to_remove",
    "project_from_path",
]

JWT_KID_HEADER: Final = "x-jwt-kid"
AUTHZ_PROJECT_HEADER: Final = "x-authz-project"

# The denial line's logger is the gRPC servicer's of old: log pipelines filter on it.
log = logging.getLogger("authz_server.service")

# Before the first complete scan of the keys directory, every request is denied.
_NOT_READY: Final = Denied(Reason.NOT_READY)
_OPEN: Final = Allowed(kid=None)
_INVALID_SETTINGS: Final = Denied(Reason.INVALID_SETTINGS)

# The longest project text a denial body repeats: no valid id is longer.
_MAX_SHOWN_PROJECT: Final = 128
# Cap on each table of encoded answers (a safety net; real sizes are far lower).
_MAX_ENCODED: Final = 100_000
# Denials whose project a client names freely (any valid id, or any text at all): their
# encodings are not kept, since a client's paths are unbounded. Every other denial is for
# a project with keys, whose number is bounded.
_UNBOUNDED_DENIALS: Final = frozenset(
    {Reason.INVALID_PROJECT_ID, Reason.NOT_READY, Reason.INTERNAL_ERROR}
)


@functools.lru_cache(maxsize=4096)  # the gate's own two, and the projects' claim headers
def _aliases(header: str) -> tuple[str, ...]:
    """``header`` spelled with some of its '-' as '_': CGI and WSGI servers read every
    spelling as one name (``HTTP_X_JWT_KID``), so a client copy of any is a forgery."""
    parts = header.split("-")
    spellings = [parts[0]]
    for part in parts[1:]:
        spellings = [f"{head}{sep}{part}" for head in spellings for sep in "-_"]
    return tuple(name for name in spellings if name != header)


# The headers the gate sets on allowed requests replace every client copy of their own name
# (Envoy's header names are case-insensitive, so case variants too); these other spellings
# an upstream could take for them are removed. They are only removed, never set: whether
# Envoy applies removals before or after additions is then of no consequence.
FORGED_ALIASES: Final = (*_aliases(JWT_KID_HEADER), *_aliases(AUTHZ_PROJECT_HEADER))


def headers_to_remove(kid: str | None, *, forward_jwt: bool) -> tuple[str, ...]:
    """What an allowed request loses on its way upstream. A project without keys
    (``kid`` None) passes untouched: its Authorization header stays, and no key signed
    it, so a client's x-jwt-kid goes."""
    if kid is None:
        return (JWT_KID_HEADER, *FORGED_ALIASES)
    return (*FORGED_ALIASES, *(() if forward_jwt else ("authorization",)))


def denial_body(reason: Reason, project: str) -> str:
    """The JSON body of a denial, repeating at most 128 characters of the project."""
    return deny_body(reason, project[:_MAX_SHOWN_PROJECT])


def cors_denial_headers(origin: str | None) -> tuple[tuple[str, str], ...]:
    """What a denial adds, with ``--cors-denials``, for a request from ``origin``: the
    header that lets the page read the -32013 body, for that origin only (none when the
    request carries no Origin a browser could send)."""
    if not is_origin(origin):
        return ()
    return (("access-control-allow-origin", origin or ""), ("vary", "origin"))


def project_from_path(path: str) -> str:
    """The last non-empty segment of ``path``, without its query string."""
    return path.partition("?")[0].rstrip("/").rpartition("/")[2]


class Gate:
    """Decides requests from the current key snapshot; counts and logs what it decides."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        failed_check_budget: float = DEFAULT_RATE,
        metrics: CheckMetrics | None = None,
        cors_denials: bool = False,
        forward_jwt: bool = False,
    ) -> None:
        self._snapshot = snapshot
        # A report-only project's request that would be denied passes without its token,
        # unless tokens go upstream (--forward-jwt): a failed token is no node's business.
        self._report_only_pass = Allowed(
            kid=None, removed=() if forward_jwt else ("authorization",)
        )
        # Whether the transports add CORS headers to denials (Settings.cors_denials).
        self.cors_denials = cors_denials
        self.metrics = metrics if metrics is not None else CheckMetrics()
        self._allowed_valid = self.metrics.allowed_valid
        self._allowed_no_jwt = self.metrics.allowed_no_jwt
        self._denied_counters = self.metrics.denied
        self._preflights = self.metrics.preflights
        self._would_deny = self.metrics.would_deny
        self._observe = self.metrics.duration.observe
        self._clock = clock
        self.verifier = CachingVerifier(
            policy,
            max_entries=cache_size,
            budget=FailedCheckBudget(rate=failed_check_budget) if failed_check_budget else None,
        )

    def decide(self, facts: RequestFacts) -> Decision | Preflight:
        """The decision for one request. Never raises; the request id only goes into the
        denial's log line.

        A genuine CORS preflight (``OPTIONS`` with an ``Origin`` a browser could send and an
        ``Access-Control-Request-Method``) never carries a token, so it is not asked for one:
        past the checks that need none, the gate answers it itself (:class:`Preflight`) and
        it never reaches the upstream. Every other request, ``OPTIONS`` included, goes on
        to the token.
        """
        start = perf_counter()
        project = facts.project
        denied: Denied
        try:
            decision: Decision
            invalid = project_id_denial(project)
            if invalid is not None:
                decision = Denied(invalid)
            elif (
                facts.method == "OPTIONS"  # first: a field compare, where most requests stop
                and facts.is_cors_preflight
                and is_origin(facts.origin)
                and self._preflight_allowed(facts)
            ):
                self._preflights.inc()
                self._observe(perf_counter() - start)
                return Preflight(facts.origin or "")
            else:
                snapshot = self._snapshot()
                entry = snapshot.projects.get(project)
                if not snapshot.complete:
                    decision = _NOT_READY
                elif entry is None:
                    decision = _OPEN
                elif entry.settings is None:
                    decision = self.verifier.decide(
                        project,
                        bearer_token(facts.authorization),
                        entry.keys if entry.uses_jwt else None,
                        self._clock(),
                    )
                else:
                    decision = self._decide_with_settings(facts, entry, entry.settings)
            if isinstance(decision, Allowed):
                if decision.kid is None:
                    self._allowed_no_jwt.inc()
                else:
                    self._allowed_valid.inc()
                self._observe(perf_counter() - start)
                return decision
            denied = decision
        except Exception as exc:  # noqa: BLE001 - fail closed on anything; message not logged
            self._log_internal_error(project, exc)
            denied = Denied(Reason.INTERNAL_ERROR)
        self._count_denial(denied, project, facts.request_id)
        self._observe(perf_counter() - start)
        return denied

    def _preflight_allowed(self, facts: RequestFacts) -> bool:
        """Whether the project's settings let the gate answer this preflight: a project
        with an IP or origin allowlist answers only preflights that pass them (the others
        go on, and are denied as any request from there)."""
        entry = self._snapshot().projects.get(facts.project)
        settings = None if entry is None else entry.settings
        if settings is None or settings.report_only:
            return True
        if settings.invalid:
            return False
        return settings.request_denial(facts.client_address, facts.origin) is None

    def _decide_with_settings(
        self, facts: RequestFacts, entry: ProjectKeys, settings: ProjectSettings
    ) -> Decision:
        """The gate's order for a project with settings: its settings file loaded, the
        client's address, its origin, the contract's table, the token's lifetime. In
        report-only mode every check runs, the first failure is logged and counted as
        ``would_deny``, and the request passes."""
        if settings.invalid:
            return _INVALID_SETTINGS
        refused = settings.request_denial(facts.client_address, facts.origin)
        report_only = settings.report_only
        if refused is not None and not report_only:
            return Denied(refused)
        policy = settings.policy_over(self.verifier.policy)
        decision = self.verifier.decide(
            facts.project,
            bearer_token(facts.authorization),
            entry.keys if entry.uses_jwt else None,
            self._clock(),
            policy,
        )
        if report_only:
            would = refused or (decision.reason if isinstance(decision, Denied) else None)
            if would is not None:
                self._count_would_deny(would, facts)
                if isinstance(decision, Denied):
                    decision = self._report_only_pass if entry.uses_jwt else _OPEN
        if settings.claims_to_headers and isinstance(decision, Allowed):
            return self._with_claim_headers(decision, settings)
        return decision

    @staticmethod
    def _with_claim_headers(decision: Allowed, settings: ProjectSettings) -> Allowed:
        """The claim headers set, and every client copy of them (any spelling) removed."""
        set_names = {name for name, _value in decision.headers}
        removed = tuple(
            alias
            for name in settings.header_names
            for alias in (*(() if name in set_names else (name,)), *_aliases(name))
        )
        return Allowed(decision.kid, decision.exp, decision.nbf, decision.headers, removed)

    def _count_would_deny(self, reason: Reason, facts: RequestFacts) -> None:
        self._would_deny[reason].inc()
        shown_project = printable(facts.project)
        shown_request_id = printable(facts.request_id or "") or None
        log.info(
            "would deny project=%s reason=%s request_id=%s (report only: allowed)",
            shown_project,
            reason.code,
            shown_request_id or "-",
            extra={
                "event": "would_deny",
                "project": shown_project,
                "reason": reason.code,
                "request_id": shown_request_id,
            },
        )

    def fail(self, project: str, exc: Exception, request_id: str | None = None) -> Denied:
        """The denial for an error a transport met around :meth:`decide` (encoding an
        answer, say): logged and counted as the gate's own internal errors are."""
        self._log_internal_error(project, exc)
        denied = Denied(Reason.INTERNAL_ERROR)
        self._count_denial(denied, project, request_id)
        return denied

    @staticmethod
    def _log_internal_error(project: str, exc: Exception) -> None:
        # The type and the stack, never the message: it may quote the token.
        log.error(
            "internal error on project %s (%s); denied\n%s",
            printable(project),
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
        )

    def _count_denial(self, decision: Denied, project: str, request_id: str | None) -> None:
        reason = decision.reason
        self._denied_counters[reason].inc()
        shown_project = printable(project)
        kid = None if decision.kid is None else printable(decision.kid)
        shown_request_id = printable(request_id or "") or None
        log.info(
            "denied project=%s reason=%s kid=%s request_id=%s",
            shown_project,
            reason.code,
            kid or "-",
            shown_request_id or "-",
            extra={
                "event": "denied",
                "project": shown_project,
                "reason": reason.code,
                "kid": kid,
                "request_id": shown_request_id,
            },
        )


class EncodedAnswers:
    """A transport's wire encoding of the gate's answers, the ones that repeat kept once.

    ``allow(project, kid)`` and ``deny(reason, project)`` encode; the tables are bounded:
    verified kids by the registered keys, open projects (named by clients) by a cap, after
    which they are encoded each time; denials of freely named projects are never kept.
    """

    def __init__(
        self,
        allow: Callable[[str, str | None], bytes],
        deny: Callable[[Reason, str], bytes],
    ) -> None:
        self._encode_allow = allow
        self._encode_deny = deny
        self._allowed: dict[tuple[str, str | None], bytes] = {}
        self._denied: dict[tuple[Reason, str], bytes] = {}

    def allowed(self, project: str, kid: str | None) -> bytes:
        encoded = self._allowed.get((project, kid))
        if encoded is None:
            encoded = self._encode_allow(project, kid)
            if len(self._allowed) < _MAX_ENCODED:
                self._allowed[(project, kid)] = encoded
        return encoded

    def denied(self, reason: Reason, project: str) -> bytes:
        encoded = self._denied.get((reason, project))
        if encoded is None:
            encoded = self._encode_deny(reason, project)
            if reason not in _UNBOUNDED_DENIALS and len(self._denied) < _MAX_ENCODED:
                self._denied[(reason, project)] = encoded
        return encoded
