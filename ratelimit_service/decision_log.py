"""JSON log lines for OVER_LIMIT decisions and store failures, rate-limited.

An attack must not be able to flood the log: lines are admitted by a token bucket (the
same GCRA math as the limiter) and the number suppressed since the last line is carried in
the next one. Descriptor values may be personal data (client addresses, subjects), so they
are logged only as keyed hashes (HMAC-SHA256, truncated): equal values give equal hashes,
which is enough to see one address hammering, without the address itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence

from ratelimit_service.bucket import EMPTY_STATE, BucketSpec, BucketState, evaluate
from sidecar_runtime.clock import Clock

log = logging.getLogger("ratelimit_service.decisions")


class DecisionLog:
    def __init__(
        self, *, lines_per_second: float, clock: Clock, hash_key: bytes | None = None
    ) -> None:
        capacity = max(1, round(lines_per_second))
        self._spec = BucketSpec(interval_us=1_000_000 / lines_per_second, capacity=capacity)
        self._state: BucketState = EMPTY_STATE
        self._clock = clock
        self._key = hash_key or secrets.token_bytes(32)
        self.suppressed = 0
        self.written = 0

    @classmethod
    def from_env(
        cls, *, lines_per_second: float, clock: Clock, hash_key_env: str | None
    ) -> DecisionLog:
        raw = os.environ.get(hash_key_env) if hash_key_env else None
        return cls(
            lines_per_second=lines_per_second, clock=clock, hash_key=raw.encode() if raw else None
        )

    def pseudonym(self, value: str) -> str:
        """A keyed hash standing in for a possibly personal value."""
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:16]

    def _admit(self) -> bool:
        verdict = evaluate(self._spec, self._state, cost=1, now_us=self._clock.monotonic() * 1e6)
        if verdict.new_state is None:
            self.suppressed += 1
            return False
        self._state = verdict.new_state
        return True

    def _emit(self, level: int, msg: str, fields: dict[str, object]) -> None:
        if not self._admit():
            return
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        self.written += 1
        log.log(level, msg, extra={"fields": fields})

    def over_limit(
        self,
        *,
        domain: str,
        entries: Sequence[tuple[str, str]],
        rule: str,
        shadow: bool,
        cost: int,
        retry_after_s: int,
    ) -> None:
        self._emit(
            logging.INFO,
            "shadow_over_limit" if shadow else "over_limit",
            {
                "event": "shadow_over_limit" if shadow else "over_limit",
                "domain": domain,
                "rule": rule,
                "descriptor": {k: self.pseudonym(v) for k, v in entries},
                "hits": cost,
                "retry_after_s": retry_after_s,
            },
        )

    def store_failure(self, *, store: str, error: str, failure_mode: str) -> None:
        self._emit(
            logging.WARNING,
            "store_failure",
            {
                "event": "store_failure",
                "store": store,
                "error": error,
                "failure_mode": failure_mode,
            },
        )
