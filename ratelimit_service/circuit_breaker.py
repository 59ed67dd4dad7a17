"""The circuit breaker in front of the bucket store: Redis trouble costs no waiting.

A pure state machine over an injected clock's monotonic time, used from the event loop
and from the worker threads of the `sync` stack, so its transitions take a lock. The
guarded store (guarded_store.py) asks it before each call and reports each outcome.

`NodeBreakers`: for a store of several independent nodes (Redis Cluster), one breaker
per node, each made like the store's own, so a failing master opens only its breaker and
only its buckets get the failure mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
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

    def like(self) -> CircuitBreaker:
        """A new, closed breaker with this one's settings and clock."""
        return CircuitBreaker(
            failure_threshold=self._threshold,
            open_seconds=self._open_seconds,
            clock=self._clock,
            failure_span_seconds=self._span,
        )

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


class NodeBreakers:
    """A breaker per node, made on first use like `template`; thread-safe.

    Each method returns True when the node's breaker changed between closed and not
    closed, so the caller re-reads the health (`open_nodes`, `all_open`) only then.
    """

    def __init__(self, template: CircuitBreaker) -> None:
        self._template = template
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def _of(self, node: str) -> CircuitBreaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(node, self._template.like())
        return breaker

    def allow(self, node: str) -> bool:
        return self._of(node).allow()

    def record_success(self, node: str) -> bool:
        return self._of(node).record_success()

    def record_failure(self, node: str) -> bool:
        return self._of(node).record_failure()

    def trip(self, node: str) -> bool:
        return self._of(node).trip()

    def retain(self, nodes: Iterable[str]) -> bool:
        """Forget the breakers of nodes not in `nodes` (no longer masters: a failover).
        True when a forgotten breaker was not closed."""
        keep = set(nodes)
        with self._lock:
            gone = [node for node in self._breakers if node not in keep]
            changed = any(not self._breakers[node].is_closed for node in gone)
            for node in gone:
                del self._breakers[node]
        return changed

    def open_nodes(self) -> tuple[str, ...]:
        """The nodes whose breaker is not closed, sorted."""
        with self._lock:
            return tuple(sorted(n for n, b in self._breakers.items() if not b.is_closed))

    def all_open(self) -> bool:
        """True when breakers exist and none of them is closed (no master reachable)."""
        with self._lock:
            breakers = list(self._breakers.values())
        return bool(breakers) and not any(b.is_closed for b in breakers)
