"""The `BucketStore` port and the in-memory store.

A store applies one request's bucket calls all-or-nothing: either every enforced bucket
admits and all are charged, or nothing is written. The decision logic (which limits apply,
what to answer, failure modes) belongs to the service, not to the store.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ratelimit_service.bucket import (
    EMPTY_STATE,
    BucketSpec,
    BucketState,
    Outcome,
    evaluate,
    must_commit,
    report,
)
from sidecar_runtime.clock import Clock, SystemClock


@dataclass(frozen=True, slots=True)
class BucketCall:
    """Take `cost` tokens from the bucket at `key` (0: check that one is available)."""

    key: str
    spec: BucketSpec
    cost: int
    enforce: bool = True  # False: shadow mode, a denial here does not veto the others


@dataclass(frozen=True, slots=True)
class Acquired:
    committed: bool  # True when no enforced bucket denied, and the tokens were taken
    outcomes: tuple[Outcome, ...]  # one per call, in order


class BucketStore(Protocol):
    """Where buckets live. Keys within one `acquire` call must be distinct."""

    name: str
    hash_tags: bool  # whether bucket keys should carry a cluster hash tag
    remote: bool  # whether calls can hang (then the service bounds them with a timeout)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        """Apply the calls all-or-nothing; raises StoreError when the store fails."""
        ...

    async def ping(self) -> None:
        """Raise StoreError unless the store is reachable."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class DeadlineStore(Protocol):
    """Optional ability of a remote store: it bounds a call by a deadline of its own.

    The service's timeout then belongs to the store, which can tell a reply that arrived
    in time but was read late (an overloaded event loop: still a valid answer) from one
    that did not arrive; a timer around the whole coroutine cannot (docs/benchmarks.md, R3).
    """

    async def acquire_within(
        self, calls: Sequence[BucketCall], *, timeout_s: float | None
    ) -> Acquired:
        """`acquire`, raising TimeoutError when no answer came within `timeout_s`."""
        ...

    async def ping_within(self, *, timeout_s: float) -> None:
        """`ping` (the health probe), with the same deadline rule."""
        ...


@runtime_checkable
class BlockingStore(Protocol):
    """Optional ability: a store that a worker thread of the `sync` stack calls itself,
    blocking, safe from several threads at once (no hand-over to the event loop)."""

    def acquire_blocking(self, calls: Sequence[BucketCall], *, timeout_s: float) -> Acquired:
        """`acquire` on the calling thread; TimeoutError when no answer came within
        `timeout_s`, StoreError when the store fails."""
        ...


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


def refund_outcome(outcome: Outcome, call: BucketCall) -> Outcome:
    """How a bucket looks after a refund of what `call` took (for the reported figures)."""
    spec: BucketSpec = call.spec
    remaining = min(outcome.remaining + call.cost, spec.capacity)
    reset = max(outcome.reset_us - round(call.cost * spec.interval_us), 0)
    return Outcome(outcome.allowed, remaining, reset)
