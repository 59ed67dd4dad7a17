"""The circuit breaker in front of the bucket store: Redis trouble costs no waiting.

A pure state machine over an injected clock's monotonic time, used from the event loop
and from the worker threads of the `sync` stack, so its transitions take a lock. The
guarded store (guarded_store.py) asks it before each call and reports each outcome.
"""

from __future__ import annotations

import threading
from enum import Enum

from sidecar_runtime.clock import Clock


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling a failing store for a while, then lets one trial call through.

    closed --(failure_threshold consecutive failures spanning failure_span_seconds,
              or trip())--> open
    open --(open_seconds elapsed; next allow() is the trial)--> half_open
    half_open --success--> closed;  half_open --failure--> open

    Why a span: under load a process keeps dozens of calls in flight, and one stall of
    the process (or of Redis) longer than the call timeout fails all of them at once.
    Counted as calls, that burst would open the breaker and answer every call for
    `open_seconds` with the failure mode (fail-open: no limit at all) although the store
    is fine. A store that is really down keeps failing over time, and opens it then.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        open_seconds: float,
        clock: Clock,
        failure_span_seconds: float = 0.0,
    ) -> None:
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._span = failure_span_seconds
        self._clock = clock
        self._failures = 0
        self._first_failure_at = 0.0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED
        # The event loop (probes) and the sync stack's worker threads (calls) share it.
        self._lock = threading.Lock()

    @property
    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def allow(self) -> bool:
        """May a call go to the store now?"""
        with self._lock:
            if self.state is BreakerState.CLOSED:
                return True
            if self.state is BreakerState.OPEN:
                if self._clock.monotonic() - self._opened_at >= self._open_seconds:
                    self.state = BreakerState.HALF_OPEN
                    return True
                return False
            return False  # half-open: the trial call is still out

    def record_success(self) -> bool:
        """Returns True when this success closes the breaker."""
        with self._lock:
            self._failures = 0
            if self.state is BreakerState.CLOSED:
                return False
            self.state = BreakerState.CLOSED
            return True

    def record_failure(self) -> bool:
        """Returns True when this failure opens a closed breaker."""
        with self._lock:
            now = self._clock.monotonic()
            if self._failures == 0:
                self._first_failure_at = now
            self._failures += 1
            if self.state is BreakerState.HALF_OPEN:
                return self._trip()
            if self.state is BreakerState.CLOSED:
                span_ok = now - self._first_failure_at >= self._span
                if self._failures >= self._threshold and span_ok:
                    return self._trip()
            else:
                self._opened_at = now
            return False

    def trip(self) -> bool:
        """Open now (e.g. a health probe failed). Returns True if it was closed."""
        with self._lock:
            return self._trip()

    def _trip(self) -> bool:
        was_closed = self.state is BreakerState.CLOSED
        self.state = BreakerState.OPEN
        self._opened_at = self._clock.monotonic()
        return was_closed
