"""The `BucketStore` port: what the service asks of a bucket store.

A store applies one request's bucket calls all-or-nothing by the commit rule of
`limits.bucket.must_commit` (no ENFORCE call denied, and not every QUOTA call denied):
either the buckets that admit are all charged, or nothing is written. The decision logic
(which limits apply, what to answer) belongs to the service, not to the store. The
adapters (memory, Redis) live in `ratelimit_service.stores`.

A partitioned store (`PartitionedStore`: Redis Cluster) may fail for some calls and not
others: those calls' outcomes are None, and the nodes that failed are named, so the guard
keeps a circuit breaker per node and only that node's buckets get the failure mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ratelimit_service.limits.bucket import BucketSpec, CallMode, Outcome

__all__ = [
    "Acquired",
    "BlockingStore",
    "BucketCall",
    "BucketStore",
    "CallMode",
    "DeadlineStore",
    "NodeReport",
    "PartitionedStore",
    "refund_outcome",
]


@dataclass(frozen=True, slots=True)
class BucketCall:
    """Take `cost` tokens from the bucket at `key` (0: check that one is available)."""

    key: str
    spec: BucketSpec
    cost: int
    mode: CallMode = CallMode.ENFORCE  # how a denial here weighs (limits.bucket.must_commit)


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What became of a partitioned store's nodes in one `acquire`."""

    answered: tuple[str, ...] = ()  # nodes that answered
    failed: tuple[tuple[str, str], ...] = ()  # (node, reason): called, and failed
    unsettled: tuple[str, ...] = ()  # reasons of calls no node is to blame for (migration)


NO_NODES = NodeReport()


@dataclass(frozen=True, slots=True)
class Acquired:
    """A store's answer. `outcomes` has one entry per call, in order; an entry is None
    only from a `PartitionedStore`, for a call whose node failed or was not called (its
    breaker open), or whose slot was being migrated (see `nodes`)."""

    committed: bool  # True when the commit rule held and the tokens were taken
    outcomes: tuple[Outcome | None, ...]
    # One field for a partitioned store's extras: each field of a frozen dataclass costs
    # every Acquired on the hot path about 0.1 us to set.
    nodes: NodeReport = NO_NODES


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


@runtime_checkable
class PartitionedStore(Protocol):
    """Optional ability: a store of several independent nodes (Redis Cluster). A node
    that fails costs only the calls whose keys it serves; the guard keeps a breaker per
    node (`nodes`) and tells the store which nodes it may call now (`node_allowed`)."""

    async def acquire_partitioned(
        self,
        calls: Sequence[BucketCall],
        *,
        timeout_s: float | None,
        node_allowed: Callable[[str], bool],
    ) -> Acquired:
        """`acquire` with a deadline per node: a node that errs, times out, or is not
        allowed gives None outcomes for its calls and appears in `nodes.failed`. Raises
        StoreError only when the store as a whole cannot be used (no slot map)."""
        ...

    async def ping_nodes(self, *, timeout_s: float) -> Mapping[str, str | None]:
        """Probe every primary: node -> None (answering, script loaded) or the reason.
        Raises StoreError when not even the node list can be had."""
        ...


def refund_outcome(outcome: Outcome, call: BucketCall) -> Outcome:
    """How a bucket looks after a refund of what `call` took (for the reported figures)."""
    spec: BucketSpec = call.spec
    remaining = min(outcome.remaining + call.cost, spec.capacity)
    reset = max(outcome.reset_us - round(call.cost * spec.interval_us), 0)
    return Outcome(outcome.allowed, remaining, reset)
