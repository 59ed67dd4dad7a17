"""A small circuit breaker in front of the introspection endpoint.

closed --breaker_failures consecutive failures--> open
open --breaker_open_seconds elapsed; the next call is the trial--> half_open
half_open --success--> closed;  half_open --failure--> open

Pure and clocked like ratelimit_service.circuit_breaker, but single-threaded: the
adapter that uses it runs on one event loop, so it needs no lock.
"""

from __future__ import annotations

from enum import Enum

from sidecar_runtime.clock import Clock


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class EndpointBreaker:
    """Stops calling a failing endpoint for a while, then lets one trial call through."""

    def __init__(self, *, failures: int, open_seconds: float, clock: Clock) -> None:
        self._threshold = failures
        self._open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED
        self.rejected = 0  # calls refused while open, for metrics

    def allow(self) -> bool:
        """May a call go to the endpoint now?"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._open_long_enough():
            self.state = BreakerState.HALF_OPEN
            return True
        self.rejected += 1
        return False  # open, or half-open with the trial still out

    def record_success(self) -> None:
        self._failures = 0
        self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock.monotonic()

    def _open_long_enough(self) -> bool:
        return self._clock.monotonic() - self._opened_at >= self._open_seconds
