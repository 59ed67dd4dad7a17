"""The Redis Cluster bucket store: one script call per hash slot, all slots in parallel.

Routing (redis_transports.ClusterTransport). Every call declares its keys (KEYS) and goes
to its slot's master from redis-py's slot map; MOVED patches the map and the call goes to
the new owner (a migrated slot is served again from the next call on, with no restart),
ASK is followed with ASKING on the same connection, TRYAGAIN (a multi-key call whose keys
are half migrated) is retried for the rest of the call's deadline. Redis refuses declared
keys of several slots in one call, so a request's calls are grouped by slot; bucket keys
carry a hash tag of their descriptor (bucket_keys), so the limits of one descriptor share
a slot and one call. A request's other descriptors are other slots: one call each, all
in parallel, so one round trip of wall time in the normal case.

All-or-nothing across slots. Each slot's call is all-or-nothing for its own keys. The
store then applies the commit rule (limits.bucket.must_commit) to every call's outcome
and refunds, with a second call, each slot that charged its buckets when the rule says
no. QUOTA calls spread over several slots are sent as SHADOW (a slot cannot know whether
another slot's quota admits); the store applies the quota part of the rule. Error bound:
between a charge and its refund (one round trip, at most the call timeout) those buckets
hold up to `cost` tokens too few, so a concurrent request on them may be denied that
would have been admitted; nothing is ever admitted beyond the limit by the store. A
refund that fails or times out leaves those tokens spent until the bucket refills. A
slot migration moves each key with its state and TTL (MIGRATE), so it adds no error; the
calls that meet a slot's keys split between two nodes (TRYAGAIN until the deadline) get
the failure mode, like any failed call, without counting against the node's breaker.

Failure isolation. A slot's call that fails (error, timeout, or its node's breaker open,
`node_allowed`) gives None outcomes for its calls and names its node in `nodes.failed`;
the other slots' answers stand. For the commit rule, a failed call counts as admitting
under fail_open (the others keep their charges) and as an ENFORCE denial under
fail_closed (the others are refunded). Only if the slot map cannot be had at all does the
whole call fail (StoreError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ratelimit_service.errors import StoreError
from ratelimit_service.limits.bucket import CallMode, Outcome, Vote, failed_vote, must_commit
from ratelimit_service.store import Acquired, BucketCall, NodeReport, refund_outcome
from ratelimit_service.stores.redis_script import ScriptRunner, evalsha_args, parse_reply
from ratelimit_service.stores.redis_transports import ClusterTransport, SlotMovingError

_MAP_TIMEOUT_S = 5.0  # reading the slot map, when a call has no deadline of its own


def _any_node(node: str) -> bool:
    return True


@dataclass(slots=True)
class _Slot:
    """The calls of one request that share a hash slot, and what became of them."""

    indexes: list[int]
    node: str
    committed: bool = False
    outcomes: list[Outcome] | None = None  # None: not answered
    error: str | None = None  # set when the node was called and failed
    moving: str | None = None  # set when the slot was being migrated (no node's fault)


def group_by_slot(keys: Sequence[str], slot_of: Callable[[str], int]) -> list[list[int]]:
    """Indexes of `keys`, grouped by hash slot, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(index)
    return list(groups.values())


def sent_modes(calls: Sequence[BucketCall], groups: Sequence[Sequence[int]]) -> list[CallMode]:
    """The mode each call's slot script gets: QUOTA calls in more than one slot go as
    SHADOW (the quota veto is the store's), everything else as it is."""
    quota_slots = sum(1 for g in groups if any(calls[i].mode == CallMode.QUOTA for i in g))
    spread = quota_slots > 1
    return [
        CallMode.SHADOW if spread and call.mode == CallMode.QUOTA else call.mode for call in calls
    ]


def global_commit(
    calls: Sequence[BucketCall], outcomes: Sequence[Outcome | None], *, fail_open: bool
) -> bool:
    """The commit rule over every slot's outcomes; a failed call (None) admits under
    fail_open and is an ENFORCE denial under fail_closed."""
    votes = [_vote(c, o, fail_open=fail_open) for c, o in zip(calls, outcomes, strict=True)]
    return must_commit(votes, votes)


def _vote(call: BucketCall, outcome: Outcome | None, *, fail_open: bool) -> Vote:
    if outcome is not None:
        return Vote(outcome.allowed, call.mode)
    return failed_vote(call.mode, fail_open=fail_open)


class ClusterRedisStore:
    """Buckets in a Redis Cluster; a `PartitionedStore` (per-node failures)."""

    name = "redis-cluster"
    hash_tags = True
    remote = True

    def __init__(
        self,
        transport: ClusterTransport,
        *,
        failure_mode: Literal["fail_open", "fail_closed"] = "fail_open",
    ) -> None:
        self.transport = transport
        self.failure_mode = failure_mode
        self._runner = ScriptRunner(transport)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        return await self.acquire_partitioned(calls, timeout_s=None, node_allowed=_any_node)

    async def acquire_within(
        self, calls: Sequence[BucketCall], *, timeout_s: float | None
    ) -> Acquired:
        return await self.acquire_partitioned(calls, timeout_s=timeout_s, node_allowed=_any_node)

    async def acquire_partitioned(
        self,
        calls: Sequence[BucketCall],
        *,
        timeout_s: float | None,
        node_allowed: Callable[[str], bool],
    ) -> Acquired:
        """See the module's docstring and store.PartitionedStore."""
        transport = self.transport
        await transport.refresh(timeout_s=timeout_s or _MAP_TIMEOUT_S)
        groups = group_by_slot([c.key for c in calls], transport.slot_of)
        modes = sent_modes(calls, groups)
        slots = [_Slot(g, transport.server_of(calls[g[0]].key)) for g in groups]
        jobs = [
            self._take(slot, calls, modes, timeout_s) for slot in slots if node_allowed(slot.node)
        ]
        if len(jobs) == 1:
            await jobs[0]  # one slot (the usual single descriptor): no task to create
        else:
            await asyncio.gather(*jobs)
        outcomes: list[Outcome | None] = [None] * len(calls)
        for slot in slots:
            if slot.outcomes is not None:
                for index, outcome in zip(slot.indexes, slot.outcomes, strict=True):
                    outcomes[index] = outcome
        fail_open = self.failure_mode == "fail_open"
        committed = global_commit(calls, outcomes, fail_open=fail_open)
        if not committed:
            await self._refund([s for s in slots if s.committed], calls, outcomes, timeout_s)
        failed = tuple((s.node, s.error) for s in slots if s.error is not None)
        answered = tuple(dict.fromkeys(s.node for s in slots if s.outcomes is not None))
        moving = tuple(s.moving for s in slots if s.moving is not None)
        return Acquired(committed, tuple(outcomes), NodeReport(answered, failed, moving))

    async def _take(
        self,
        slot: _Slot,
        calls: Sequence[BucketCall],
        modes: Sequence[CallMode],
        timeout_s: float | None,
    ) -> None:
        sent = [
            calls[i] if calls[i].mode == modes[i] else _with_mode(calls[i], modes[i])
            for i in slot.indexes
        ]
        try:
            reply = await self._runner.run(
                evalsha_args("take", sent), server=slot.node, timeout_s=timeout_s
            )
            slot.committed, slot.outcomes = parse_reply(reply, len(sent))
        except TimeoutError:
            slot.error = "timeout"
        except SlotMovingError as exc:
            slot.moving = f"slot of {calls[slot.indexes[0]].key!r}: {exc}"
        except StoreError as exc:
            slot.error = str(exc) or type(exc).__name__

    async def _refund(
        self,
        charged: Sequence[_Slot],
        calls: Sequence[BucketCall],
        outcomes: list[Outcome | None],
        timeout_s: float | None,
    ) -> None:
        """Give back what the slots in `charged` took; best effort (the module's bound)."""
        jobs = []
        for slot in charged:
            taken = [
                i for i in slot.indexes if calls[i].cost > 0 and (o := outcomes[i]) and o.allowed
            ]
            for i in taken:
                outcome = outcomes[i]
                if outcome is not None:
                    outcomes[i] = refund_outcome(outcome, calls[i])
            if taken:
                args = evalsha_args("refund", [calls[i] for i in taken])
                jobs.append(self._runner.run(args, server=slot.node, timeout_s=timeout_s))
        await asyncio.gather(*jobs, return_exceptions=True)

    async def ping(self) -> None:
        """Every primary answering, with the script loaded (StoreError naming the first
        that is not)."""
        for node, error in (await self.ping_nodes(timeout_s=_MAP_TIMEOUT_S)).items():
            if error is not None:
                raise StoreError(f"{node}: {error}")

    async def ping_nodes(self, *, timeout_s: float) -> Mapping[str, str | None]:
        """PING every primary of the slot map and load the script where it is missing:
        node -> None, or why not. StoreError when the slot map cannot be read."""
        transport = self.transport
        await transport.refresh(timeout_s=timeout_s)
        nodes = transport.primaries()
        errors = await asyncio.gather(*(self._ping_node(node, timeout_s) for node in nodes))
        return dict(zip(nodes, errors, strict=True))

    async def _ping_node(self, node: str, timeout_s: float) -> str | None:
        try:
            await self.transport.execute_on(node, ("PING",), timeout_s=timeout_s)
            await self._runner.ensure_loaded(node, timeout_s=timeout_s)
        except TimeoutError:
            return "timeout"
        except StoreError as exc:
            return str(exc) or type(exc).__name__
        return None

    async def close(self) -> None:
        await self.transport.close()


def _with_mode(call: BucketCall, mode: CallMode) -> BucketCall:
    return BucketCall(call.key, call.spec, call.cost, mode)
