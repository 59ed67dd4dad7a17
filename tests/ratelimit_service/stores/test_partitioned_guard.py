"""The guard in front of a partitioned store (Redis Cluster's shape): a breaker per node,
None for the calls of a failed node only, and health that is degraded, not down, while
some masters are unreachable. A store double on a fake clock: no sockets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import pytest

from ratelimit_service.circuit_breaker import CircuitBreaker
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.errors import StoreError
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec, Outcome
from ratelimit_service.store import Acquired, BucketCall, NodeReport, PartitionedStore
from sidecar_runtime.clock import ManualClock

SPEC = BucketSpec(interval_us=1_000_000, capacity=10)


class TwoNodes:
    """Keys "n1:..." live on node n1, "n2:..." on n2; `down` nodes fail."""

    name = "two-nodes"
    hash_tags = True
    remote = True
    failure_mode = "fail_open"

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.asked: list[str] = []  # nodes called, in order
        self.map_lost = False

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        raise AssertionError("the guard calls acquire_partitioned")

    async def acquire_partitioned(
        self,
        calls: Sequence[BucketCall],
        *,
        timeout_s: float | None,
        node_allowed: Callable[[str], bool],
    ) -> Acquired:
        if self.map_lost:
            raise StoreError("no slot map")
        outcomes: list[Outcome | None] = []
        failed: dict[str, str] = {}
        answered: list[str] = []
        allowed: dict[str, bool] = {}
        for call in calls:
            node = call.key.split(":")[0]
            if node not in allowed:
                allowed[node] = node_allowed(node)
                if allowed[node]:
                    self.asked.append(node)
            if not allowed[node]:
                outcomes.append(None)
            elif node in self.down:
                failed[node] = "connection refused"
                outcomes.append(None)
            else:
                answered.append(node)
                outcomes.append(Outcome(True, 9, 1_000_000))
        report = NodeReport(tuple(dict.fromkeys(answered)), tuple(failed.items()))
        return Acquired(True, tuple(outcomes), report)

    async def ping_nodes(self, *, timeout_s: float) -> Mapping[str, str | None]:
        if self.map_lost:
            raise StoreError("no slot map")
        return {n: ("refused" if n in self.down else None) for n in ("n1", "n2")}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def test_the_double_is_a_partitioned_store() -> None:
    assert isinstance(TwoNodes(), PartitionedStore)


class Health:
    def __init__(self) -> None:
        self.reports: list[bool] = []

    async def __call__(self, serving: bool) -> None:
        self.reports.append(serving)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def guard_for(store: TwoNodes, clock: ManualClock, health: Health | None = None) -> GuardedStore:
    return GuardedStore(
        store,
        breaker=CircuitBreaker(failure_threshold=2, open_seconds=1.0, clock=clock),
        decisions=DecisionLog(lines_per_second=100, clock=clock, hash_key=b"k"),
        failure_mode="fail_open",
        call_timeout_s=0.01,
        probe_timeout_s=0.25,
        max_in_flight=8,
        on_health=health,
    )


CALLS = [BucketCall("n1:a", SPEC, 1), BucketCall("n2:b", SPEC, 1), BucketCall("n1:c", SPEC, 1)]


async def test_only_the_failed_node_s_calls_get_the_failure_mode(clock: ManualClock) -> None:
    store = TwoNodes()
    guard = guard_for(store, clock)
    store.down.add("n1")
    outcomes = await guard.acquire(CALLS)
    assert outcomes is not None
    assert [o is None for o in outcomes] == [True, False, True]
    assert guard.stats.partial_answers == 1
    assert guard.stats.store_errors == 1
    assert guard.stats.failure_mode_answers == 1
    assert guard.healthy


async def test_a_node_s_breaker_opens_alone_and_health_is_degraded_not_down(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = TwoNodes()
    health = Health()
    guard = guard_for(store, clock, health)
    store.down.add("n1")
    caplog.set_level(logging.WARNING, logger="ratelimit_service.guarded_store")
    for _ in range(2):
        await guard.acquire(CALLS)
    assert (guard.stats.degraded, guard.stats.open_nodes) == (True, ("n1",))
    assert [r.message for r in caplog.records].count("store degraded: some nodes unreachable") == 1
    store.asked.clear()
    outcomes = await guard.acquire(CALLS)
    assert outcomes is not None
    assert store.asked == ["n2"]  # n1 not even asked while its breaker is open
    assert outcomes[1] is not None
    assert guard.stats.short_circuited == 1
    assert guard.healthy  # SERVING: a master is reachable
    assert health.reports == []  # nothing to tell gRPC health
    store.down.clear()
    clock.advance(1.0)
    await guard.acquire(CALLS)  # n1's trial call succeeds
    assert (guard.stats.degraded, guard.stats.open_nodes) == (False, ())
    assert "store no longer degraded" in [r.message for r in caplog.records]


async def test_every_node_down_is_not_serving_and_the_answer_is_none(clock: ManualClock) -> None:
    store = TwoNodes()
    health = Health()
    guard = guard_for(store, clock, health)
    store.down.update({"n1", "n2"})
    assert await guard.acquire(CALLS) is None
    await guard.acquire(CALLS)
    assert not guard.healthy
    assert health.reports == [False]
    assert not guard.stats.degraded  # down, not degraded
    store.down.clear()
    clock.advance(1.0)
    assert await guard.acquire(CALLS) is not None
    assert guard.healthy
    assert health.reports == [False, True]


async def test_a_store_without_a_slot_map_fails_as_a_whole(clock: ManualClock) -> None:
    store = TwoNodes()
    health = Health()
    guard = guard_for(store, clock, health)
    store.map_lost = True
    assert await guard.acquire(CALLS) is None
    assert await guard.acquire(CALLS) is None
    assert health.reports == [False]  # the store's own breaker opened


async def test_probes_drive_each_node_s_breaker(clock: ManualClock) -> None:
    store = TwoNodes()
    health = Health()
    guard = guard_for(store, clock, health)
    store.down.add("n2")
    await guard.probe()
    assert (guard.stats.degraded, guard.stats.open_nodes) == (True, ("n2",))
    assert guard.healthy
    store.down.clear()
    await guard.probe()
    assert (guard.stats.degraded, guard.stats.open_nodes) == (False, ())
    store.map_lost = True
    await guard.probe()
    assert not guard.healthy
    assert health.reports == [False]
    store.map_lost = False
    await guard.probe()
    assert health.reports == [False, True]


def test_a_store_built_for_another_failure_mode_is_refused(clock: ManualClock) -> None:
    store = TwoNodes()
    store.failure_mode = "fail_closed"
    with pytest.raises(ValueError, match="fail_closed"):
        guard_for(store, clock)
