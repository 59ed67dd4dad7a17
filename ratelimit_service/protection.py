"""What keeps Redis trouble and floods cheap: a circuit breaker and the empty-bucket cache.

Both are pure state machines over an injected clock's monotonic time, used from the event
loop and from the worker threads of the `sync` stack: the breaker's transitions take a
lock; each of the cache's operations tolerates another thread's (every entry is only a
hint that a bucket is empty, so a lost one costs one store call).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
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


class EmptyBucketCache:
    """Buckets known to hold less than one token until a monotonic instant.

    A request that needs such a bucket is OVER_LIMIT without asking the store: under a
    flood, each hot key costs one store call per refill interval per process instead of
    one per request. Only an empty verdict from the store itself ever enters the cache,
    and other replicas can only drain a bucket further, so a cached answer is never more
    permissive than the store's. Bounded: the oldest entries go first.
    """

    def __init__(self, *, max_entries: int, clock: Clock) -> None:
        self._max = max_entries
        self._clock = clock
        # key -> (monotonic time of the next whole token, of a full bucket)
        self._until: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def empty_for(self, key: str) -> tuple[float, float]:
        """Seconds until the bucket has a token and until it is full; (0, 0) if the bucket
        is not known to be empty."""
        entry = self._until.get(key)
        if entry is None:
            return 0.0, 0.0
        now = self._clock.monotonic()
        if entry[0] <= now:
            self._until.pop(key, None)
            return 0.0, 0.0
        return entry[0] - now, entry[1] - now

    def knows_any(self, keys: Sequence[str]) -> bool:
        """Is any of these buckets in the cache (perhaps expired: `empty_for` tells)?"""
        until = self._until
        for key in keys:  # noqa: SIM110 - a loop, not any(): no generator per call
            if key in until:
                return True
        return False

    def mark(self, key: str, *, token_in: float, full_in: float) -> None:
        """Remember that `key` has no whole token for `token_in` seconds."""
        if token_in <= 0:
            return
        now = self._clock.monotonic()
        until = self._until
        until[key] = (now + token_in, now + max(full_in, token_in))
        with contextlib.suppress(KeyError):  # another thread may have dropped it meanwhile
            until.move_to_end(key)
            while len(until) > self._max:
                until.popitem(last=False)

    def clear(self) -> None:
        self._until.clear()
