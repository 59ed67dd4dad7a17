"""The in-memory bucket store: the `BucketStore` port's in-process adapter.

Runs the same GCRA arithmetic (limits/bucket.py) that gcra.lua runs in Redis, on
a dict, so it is exact within one process and the service's tests need no Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ratelimit_service.limits.bucket import EMPTY_STATE, BucketState, evaluate, must_commit, report
from ratelimit_service.store import Acquired, BucketCall
from sidecar_runtime.clock import Clock, SystemClock


class MemoryStore:
    """Buckets in this process only: exact, but not shared between replicas or workers.

    Time is the injected clock's monotonic time, so tests advance it instead of sleeping.
    Full buckets are dropped by an amortised sweep, so memory follows the active keys.
    A lock makes each call all-or-nothing among threads too (the `sync` stack).
    """

    name = "memory"
    hash_tags = False
    remote = False

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._buckets: dict[str, BucketState] = {}
        self._writes_since_sweep = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def state(self, key: str) -> BucketState | None:
        return self._buckets.get(key)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        return self._acquire(calls)

    def acquire_blocking(self, calls: Sequence[BucketCall], *, timeout_s: float) -> Acquired:
        """`acquire` on the calling thread (in-process: never waits on anything else)."""
        return self._acquire(calls)

    def _acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        with self._lock:
            now = round(self._clock.monotonic() * 1_000_000)
            buckets = self._buckets
            verdicts = [
                evaluate(c.spec, buckets.get(c.key, EMPTY_STATE), cost=c.cost, now_us=now)
                for c in calls
            ]
            committed = must_commit(verdicts, calls)
            if committed:
                for call, verdict in zip(calls, verdicts, strict=True):
                    if verdict.new_state is not None:
                        buckets[call.key] = verdict.new_state
                        self._writes_since_sweep += 1
                self._maybe_sweep(now)
        return Acquired(committed, tuple(report(v, committed=committed) for v in verdicts))

    def _maybe_sweep(self, now: float) -> None:
        # Amortised O(1): a full pass only after as many writes as there are buckets.
        if self._writes_since_sweep < max(1024, len(self._buckets)):
            return
        self._writes_since_sweep = 0
        full = [k for k, s in self._buckets.items() if s.tat_us <= max(now, s.seen_us)]
        for key in full:
            del self._buckets[key]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._buckets.clear()
