"""JSON lines for OVER_LIMIT decisions and store failures, rate-limited.

Decision lines (over_limit, shadow_over_limit) follow the audit schema both sidecars share
(docs/audit-schema.md) and go to the decision sink (stdout by default), carrying the
decision id, request id and trace id of the call they belong to. Store failures are
operational log lines on stderr.

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
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Protocol

from ratelimit_service.limits.bucket import EMPTY_STATE, BucketSpec, BucketState, evaluate
from sidecar_runtime import correlation
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import Clock

log = logging.getLogger("ratelimit_service.decisions")

AUDIT_SCHEMA_VERSION = 1


class Correlation(Protocol):
    """The ids of the call a decision line belongs to (sidecar_runtime.correlation's
    DecisionContext, or the servicer's lazy stand-in that reads them only when asked)."""

    @property
    def decision_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def trace_id(self) -> str | None: ...
    @property
    def started(self) -> float: ...


# Set by the gRPC adapter for the duration of one call.
current_call: ContextVar[Correlation] = ContextVar("ratelimit_call", default=correlation.NONE)


class DecisionLog:
    def __init__(
        self,
        *,
        lines_per_second: float,
        clock: Clock,
        hash_key: bytes | None = None,
        sink: AuditSink | None = None,
    ) -> None:
        capacity = max(1, round(lines_per_second))
        self._spec = BucketSpec(interval_us=1_000_000 / lines_per_second, capacity=capacity)
        self._state: BucketState = EMPTY_STATE
        self._clock = clock
        self._key = hash_key or secrets.token_bytes(32)
        self._sink = sink
        self.suppressed = 0
        self.written = 0

    @classmethod
    def from_env(
        cls,
        *,
        lines_per_second: float,
        clock: Clock,
        hash_key_env: str | None,
        sink: AuditSink | None = None,
    ) -> DecisionLog:
        raw = os.environ.get(hash_key_env) if hash_key_env else None
        key = raw.encode() if raw else None
        return cls(lines_per_second=lines_per_second, clock=clock, hash_key=key, sink=sink)

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
        if not self._admit():
            return
        ctx = current_call.get()
        reason = "shadow_over_limit" if shadow else "over_limit"
        record: dict[str, object] = {
            "v": AUDIT_SCHEMA_VERSION,
            "ts": time.time(),
            "service": "ratelimit",
            "decision_id": ctx.decision_id,
            "request_id": ctx.request_id,
            "trace_id": ctx.trace_id,
            "decision": "allow" if shadow else "deny",
            "reason": reason,
            "rule": rule,
            "latency_ms": round((time.perf_counter() - ctx.started) * 1000, 3)
            if ctx.started
            else None,
            "domain": domain,
            "descriptor": {k: self.pseudonym(v) for k, v in entries},
            "hits": cost,
            "retry_after_s": retry_after_s,
        }
        if self.suppressed:
            record["suppressed"] = self.suppressed
            self.suppressed = 0
        self.written += 1
        if self._sink is not None:
            self._sink.emit(record)
        else:
            log.info(reason, extra={"fields": record})

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
