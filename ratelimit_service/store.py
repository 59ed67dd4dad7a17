"""The `BucketStore` port: what the service asks of a bucket store.

A store applies one request's bucket calls all-or-nothing: either every enforced bucket
admits and all are charged, or nothing is written. The decision logic (which limits apply,
what to answer, failure modes) belongs to the service, not to the store. The adapters
(memory, Redis) live in `ratelimit_service.stores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ratelimit_service.limits.bucket import (
    BucketSpec,
    Outcome,
)


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


def refund_outcome(outcome: Outcome, call: BucketCall) -> Outcome:
    """How a bucket looks after a refund of what `call` took (for the reported figures)."""
    spec: BucketSpec = call.spec
    remaining = min(outcome.remaining + call.cost, spec.capacity)
    reset = max(outcome.reset_us - round(call.cost * spec.interval_us), 0)
    return Outcome(outcome.allowed, remaining, reset)
