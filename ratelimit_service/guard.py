"""The store behind its protections: per-call timeout, a cap on calls in flight, a circuit
breaker, and health that follows the store.

A call that cannot be made, or fails, or takes longer than the timeout, returns None: the
service then answers with its failure mode. A store with a deadline of its own
(`DeadlineStore`: the pipelined Redis client) gets the timeout passed in, so a reply that
arrived in time is used even when an overloaded event loop reads it late; other remote
stores run under `asyncio.timeout`; the in-process memory store has no timer at all.

The guard counts and logs every answer of the failure mode (rate-limited), opens the
breaker after repeated failures (gRPC health NOT_SERVING), and a probe or a successful call
closes it again (SERVING), with no restart. Never a queue: when `max_in_flight` calls are
out, the next one is answered at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span

from ratelimit_service.bucket import Outcome
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.errors import StoreError
from ratelimit_service.protection import CircuitBreaker
from ratelimit_service.store import Acquired, BucketCall, BucketStore, DeadlineStore
from ratelimit_service.telemetry import RateLimitTelemetry

log = logging.getLogger(__name__)

HealthCallback = Callable[[bool], Awaitable[None]]


@dataclass
class GuardStats:
    store_calls: int = 0
    store_errors: int = 0
    failure_mode_answers: int = 0
    short_circuited: int = 0
    overloaded: int = 0
    health_changes: int = 0


class StoreGuard:
    def __init__(
        self,
        store: BucketStore,
        *,
        breaker: CircuitBreaker,
        decisions: DecisionLog,
        failure_mode: str,
        call_timeout_s: float,
        probe_timeout_s: float,
        max_in_flight: int,
        on_health: HealthCallback | None = None,
        telemetry: RateLimitTelemetry | None = None,
    ) -> None:
        self.store = store
        self._breaker = breaker
        self._decisions = decisions
        self._failure_mode = failure_mode
        self._call_timeout_s = call_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._max_in_flight = max_in_flight
        self._on_health = on_health
        self._in_flight = 0
        self.stats = GuardStats()
        self._telemetry = telemetry or RateLimitTelemetry()
        self._timed = store if isinstance(store, DeadlineStore) else None

    @property
    def healthy(self) -> bool:
        return self._breaker.is_closed

    async def acquire(self, calls: Sequence[BucketCall]) -> Sequence[Outcome] | None:
        """The store's outcomes, or None when the failure mode must answer."""
        if self._in_flight >= self._max_in_flight:
            self.stats.overloaded += 1
            self._answered_by_failure_mode("too many store calls in flight")
            return None
        if not self._breaker.allow():
            self.stats.short_circuited += 1
            self.stats.failure_mode_answers += 1
            return None
        self._in_flight += 1
        self.stats.store_calls += 1
        started = time.perf_counter()
        try:
            acquired = await self._call_store(calls)
        except TimeoutError:
            await self._failed("timeout")
            return None
        except StoreError as exc:
            await self._failed(str(exc))
            return None
        finally:
            self._in_flight -= 1
            self._telemetry.record_store_call(started)
        if self._breaker.record_success():
            await self._health_changed(True)
        return acquired.outcomes

    def _call_store(self, calls: Sequence[BucketCall]) -> Coroutine[Any, Any, Acquired]:
        store = self.store
        if not store.remote:  # in-process: cannot hang, and a timer per call costs ~10 us
            return store.acquire(calls)
        # A child span only under a recording parent: an unsampled call costs no span.
        if self._telemetry.tracing and get_current_span().is_recording():
            return self._traced(calls)
        return self._bounded(calls)

    def _bounded(self, calls: Sequence[BucketCall]) -> Coroutine[Any, Any, Acquired]:
        if self._timed is not None:
            return self._timed.acquire_within(calls, timeout_s=self._call_timeout_s)
        return self._under_timeout(calls)

    async def _under_timeout(self, calls: Sequence[BucketCall]) -> Acquired:
        async with asyncio.timeout(self._call_timeout_s):
            return await self.store.acquire(calls)

    async def _traced(self, calls: Sequence[BucketCall]) -> Acquired:
        with self._telemetry.tracer.start_as_current_span(
            "ratelimit.store.acquire",
            kind=SpanKind.CLIENT,
            attributes={"db.system": self.store.name, "ratelimit.buckets": len(calls)},
        ) as span:
            try:
                return await self._bounded(calls)
            except (TimeoutError, StoreError) as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    async def probe(self) -> None:
        """One health probe of the store; drives the breaker and gRPC health."""
        try:
            if self._timed is not None:
                # Not a timer around the coroutine: one that expires while a busy loop has
                # not yet resumed us would fail a PONG that came in time, and trip the
                # breaker (every call answered by the failure mode for open_seconds).
                await self._timed.ping_within(timeout_s=self._probe_timeout_s)
            else:
                async with asyncio.timeout(self._probe_timeout_s):
                    await self.store.ping()
        except (StoreError, TimeoutError) as exc:
            if self._breaker.trip():
                self.stats.store_errors += 1
                self._answered_by_failure_mode(f"probe: {exc or 'timeout'}")
                await self._health_changed(False)
            return
        if self._breaker.record_success():
            await self._health_changed(True)

    async def watch(self, interval_s: float) -> None:
        """Probe forever (run as a task): health follows the store even with no traffic."""
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    def _answered_by_failure_mode(self, error: str) -> None:
        self.stats.failure_mode_answers += 1
        self._decisions.store_failure(
            store=self.store.name, error=error, failure_mode=self._failure_mode
        )

    async def _failed(self, error: str) -> None:
        self.stats.store_errors += 1
        self._answered_by_failure_mode(error)
        if self._breaker.record_failure():
            await self._health_changed(False)

    async def _health_changed(self, serving: bool) -> None:
        self.stats.health_changes += 1
        log.warning(
            "store reachable again" if serving else "store unreachable; circuit open",
            extra={
                "fields": {"event": "store_health", "serving": serving, "store": self.store.name}
            },
        )
        if self._on_health is not None:
            await self._on_health(serving)
