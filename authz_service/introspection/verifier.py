"""IntrospectionVerifier: an opaque bearer token in, a Principal or IntrospectionRefused out.

Synchronous and without I/O, like authz_service.tokens.verifier and
authz_service.apikeys.verifier: when the cache has nothing for the token,
`verify_now` answers `NeedIntrospection`; the adapter (fetching.py) asks the endpoint,
hands the answer to `record`, and the caller decides again with `verify_fetched`, where
a cache still empty means the endpoint could not answer: `unavailable` (503, fail
closed).

    found = verifier.verify_now(token)          # Principal | NeedIntrospection, or raises
    if isinstance(found, NeedIntrospection):
        await fetching.fetch(found)             # one HTTP call per token, however many ask
        found = verifier.verify_fetched(token)  # Principal, or raises

Caching (RFC 7662 §4 lets a resource server cache answers, trading revocation latency for
load): an active answer until min(exp + leeway, now + max_cache_seconds); a refusal decided
from an answer (`inactive`, `wrong_audience`, ...) for negative_cache_seconds; each at
least MIN_HOLD_SECONDS; `unavailable` never.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from authz_service.introspection.answer import AnswerRules, parse_answer, principal_from_answer
from authz_service.introspection.cache import (
    Active,
    IntrospectionCache,
    Outcome,
    Refused,
    token_digest,
)
from authz_service.introspection.errors import IntrospectionRefused, Reason
from authz_service.introspection.settings import IntrospectionIssuerSettings
from authz_service.principal import Principal
from sidecar_runtime.clock import Clock

# RFC 6750 §2.1 b64token: what a bearer token can be. Anything else is refused before it
# costs an HTTP call or a cache slot.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Every recorded outcome is kept at least this long, so the decision made right after the
# fetch (`verify_fetched`) reads it even with a zero negative TTL or a token about to
# expire; the wall-clock `exp` check in `_decide` still refuses an expired token.
MIN_HOLD_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class NeedIntrospection:
    """Nothing cached for this token: the adapter must ask the endpoint about it. The token
    is carried for that one request only and is left out of repr (never logged)."""

    digest: str
    token: str = field(repr=False)


@dataclass(slots=True)
class IntrospectionStats:
    """Plain counters a metrics layer can read."""

    accepted: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    answers: int = 0  # answers recorded (HTTP 200 with a JSON object)
    refused: Counter[str] = field(default_factory=Counter)


class IntrospectionVerifier:
    """Decides on opaque tokens of one issuer from cached introspection answers."""

    def __init__(
        self,
        *,
        rules: AnswerRules,
        cache: IntrospectionCache,
        clock: Clock,
        max_cache_seconds: float,
        negative_cache_seconds: float,
        max_token_chars: int = 4096,
        stats: IntrospectionStats | None = None,
    ) -> None:
        self._rules = rules
        self._clock = clock
        self._max_cache = max_cache_seconds
        self._negative_cache = negative_cache_seconds
        self._max_token_chars = max_token_chars
        self.cache = cache
        self.stats = stats or IntrospectionStats()

    @classmethod
    def from_settings(
        cls,
        settings: IntrospectionIssuerSettings,
        *,
        clock: Clock,
        stats: IntrospectionStats | None = None,
    ) -> IntrospectionVerifier:
        rules = AnswerRules(
            issuer=settings.issuer,
            audiences=frozenset(settings.audiences),
            allow_missing_audience=settings.allow_missing_audience,
            leeway_seconds=settings.leeway_seconds,
            roles_path=tuple(settings.roles_claim.split(".")),
            client_id_as_subject=settings.client_id_as_subject,
            accepted_token_types=frozenset(t.lower() for t in settings.accepted_token_types),
        )
        return cls(
            rules=rules,
            cache=IntrospectionCache(max_entries=settings.cache_entries, clock=clock),
            clock=clock,
            max_cache_seconds=settings.max_cache_seconds,
            negative_cache_seconds=settings.negative_cache_seconds,
            max_token_chars=settings.max_token_chars,
            stats=stats,
        )

    @property
    def issuer(self) -> str:
        return self._rules.issuer

    def verify_now(self, token: str) -> Principal | NeedIntrospection:
        """Decide from the cache; NeedIntrospection if it knows nothing of this token."""
        digest = self._digest(token)
        outcome = self.cache.get(digest)
        if outcome is None:
            self.stats.cache_misses += 1
            return NeedIntrospection(digest, token)
        self.stats.cache_hits += 1
        return self._decide(outcome)

    def verify_fetched(self, token: str) -> Principal:
        """Decide after the adapter asked the endpoint: nothing cached means it could not
        answer (timeout, error, garbage, breaker open), so `unavailable`."""
        outcome = self.cache.get(self._digest(token))
        if outcome is None:
            raise self.refuse("unavailable")
        return self._decide(outcome)

    def record(self, need: NeedIntrospection, body: bytes) -> Reason | None:
        """Cache what an HTTP 200 answer (`body`) says about `need`'s token. Returns the
        refusal reason it holds (None: active), `unavailable` if the body is garbage (then
        nothing is cached)."""
        try:
            answer = parse_answer(body)
        except IntrospectionRefused as exc:
            return exc.reason
        self.stats.answers += 1
        now = self._clock.now()
        try:
            principal = principal_from_answer(
                answer, self._rules, now=now, expires_if_absent=now + self._max_cache
            )
        except IntrospectionRefused as exc:
            held = max(MIN_HOLD_SECONDS, self._negative_cache)
            self.cache.put(need.digest, Refused(exc.reason), seconds=held)
            return exc.reason
        # Until min(exp, now + max_cache_seconds), exp counted with the clock-skew leeway.
        until_exp = principal.expires_at + self._rules.leeway_seconds - now
        held = max(MIN_HOLD_SECONDS, min(self._max_cache, until_exp))
        self.cache.put(need.digest, Active(principal), seconds=held)
        return None

    def refuse(self, reason: Reason) -> IntrospectionRefused:
        """Count a refusal and return it to raise."""
        self.stats.refused[reason] += 1
        return IntrospectionRefused(reason)

    def _digest(self, token: str) -> str:
        if not token or len(token) > self._max_token_chars or not _B64TOKEN.fullmatch(token):
            raise self.refuse("malformed")
        return token_digest(token)

    def _decide(self, outcome: Outcome) -> Principal:
        if isinstance(outcome, Refused):
            raise self.refuse(outcome.reason)
        principal = outcome.principal
        # The cache deadline is min(exp, ...) on the monotonic clock; this catches the
        # wall clock having moved past exp meanwhile.
        if self._clock.now() >= principal.expires_at + self._rules.leeway_seconds:
            raise self.refuse("expired")
        self.stats.accepted += 1
        return principal
