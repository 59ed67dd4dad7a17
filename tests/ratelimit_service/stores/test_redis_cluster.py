"""The Cluster store against the session's real 3-master cluster: one script call per
slot, the commit rule across slots (refunds), and failed nodes under each failure mode.
The routing through a migration and a failover is in test_cluster_resharding."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ratelimit_service.limits.bucket import BucketSpec, CallMode, Outcome
from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.settings import StoreSettings
from ratelimit_service.store import BucketCall
from ratelimit_service.stores.redis_cluster import (
    ClusterRedisStore,
    global_commit,
    group_by_slot,
    sent_modes,
)
from ratelimit_service.stores.redis_store import FailureMode, open_redis_store
from tests.support.redis_servers import RedisCluster

HOURLY = BucketSpec(interval_us=3_600_000_000 / 5, capacity=5)


def key(value: str, limit: str = "1hour") -> str:
    return bucket_key("rl:", "d", [("k", value)], limit, hash_tag=True)


def test_calls_are_grouped_by_slot_in_order() -> None:
    slots = {"a": 1, "b": 2, "c": 1}
    assert group_by_slot(["a", "b", "c"], slots.__getitem__) == [[0, 2], [1]]


def test_quota_calls_go_as_shadow_only_when_spread_over_slots() -> None:
    q, e = CallMode.QUOTA, CallMode.ENFORCE
    calls = [
        BucketCall("a", HOURLY, 1, q),
        BucketCall("b", HOURLY, 1, q),
        BucketCall("c", HOURLY, 1),
    ]
    assert sent_modes(calls, [[0, 1], [2]]) == [q, q, e]
    assert sent_modes(calls, [[0], [1, 2]]) == [CallMode.SHADOW, CallMode.SHADOW, e]


def test_a_failed_call_admits_under_fail_open_and_denies_under_fail_closed() -> None:
    calls = [BucketCall("a", HOURLY, 1), BucketCall("b", HOURLY, 1, CallMode.SHADOW)]
    answered = Outcome(True, 4, 1)
    assert global_commit(calls, [answered, None], fail_open=True)
    assert not global_commit(calls, [answered, None], fail_open=False)  # even a shadow one
    assert global_commit(calls, [answered, answered], fail_open=False)


@pytest.fixture
async def stores(
    redis_cluster: RedisCluster,
) -> AsyncIterator[dict[FailureMode, ClusterRedisStore]]:
    settings = StoreSettings(type="redis", cluster={"addresses": redis_cluster.addresses})
    made: dict[FailureMode, ClusterRedisStore] = {}
    for mode in ("fail_open", "fail_closed"):
        store = open_redis_store(settings, failure_mode=mode)
        assert isinstance(store, ClusterRedisStore)
        made[mode] = store
    try:
        yield made
    finally:
        for store in made.values():
            await store.close()


async def _on_two_nodes(store: ClusterRedisStore) -> tuple[str, str]:
    """Two bucket values whose keys live on different masters."""
    await store.ping()  # the slot map
    first = key("v0")
    node = store.transport.server_of(first)
    other = next(f"v{i}" for i in range(1, 100) if store.transport.server_of(key(f"v{i}")) != node)
    return "v0", other


@pytest.mark.redis
@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_a_node_that_cannot_be_asked_fails_only_its_calls(
    stores: dict[FailureMode, ClusterRedisStore], mode: FailureMode
) -> None:
    store = stores[mode]
    await store.ping()
    here, there = await _on_two_nodes(store)
    down = store.transport.server_of(key(there))
    calls = [BucketCall(key(here), HOURLY, 2), BucketCall(key(there), HOURLY, 2)]
    answer = await store.acquire_partitioned(
        calls, timeout_s=1.0, node_allowed=lambda node: node != down
    )
    assert answer.outcomes[1] is None
    assert answer.outcomes[0] is not None
    assert answer.outcomes[0].allowed
    after = await store.acquire([BucketCall(key(here), HOURLY, 0)])
    remaining = after.outcomes[0].remaining if after.outcomes[0] else None
    if mode == "fail_open":
        assert answer.committed  # the failed call counts as admitting: the charge stays
        assert remaining == 3
    else:
        assert not answer.committed  # counts as an enforce denial: the charge is refunded
        assert answer.outcomes[0].remaining == 5
        assert remaining == 5


@pytest.mark.redis
@pytest.mark.cluster
async def test_a_denial_on_one_node_refunds_the_others(
    stores: dict[FailureMode, ClusterRedisStore],
) -> None:
    store = stores["fail_open"]
    here, there = await _on_two_nodes(store)
    await store.acquire([BucketCall(key(there), HOURLY, 5)])  # empty
    denied = await store.acquire(
        [BucketCall(key(here), HOURLY, 2), BucketCall(key(there), HOURLY, 1)]
    )
    assert not denied.committed
    assert [o.remaining for o in denied.outcomes if o] == [5, 0]
    check = await store.acquire([BucketCall(key(here), HOURLY, 0)])
    assert check.outcomes[0] is not None
    assert check.outcomes[0].remaining == 5  # refunded


@pytest.mark.redis
@pytest.mark.cluster
async def test_quota_spread_over_nodes_is_decided_by_the_store(
    stores: dict[FailureMode, ClusterRedisStore],
) -> None:
    store = stores["fail_open"]
    here, there = await _on_two_nodes(store)
    quota = CallMode.QUOTA
    await store.acquire([BucketCall(key(here), HOURLY, 5)])
    await store.acquire([BucketCall(key(there), HOURLY, 5)])
    both_empty = [BucketCall(key(here), HOURLY, 1, quota), BucketCall(key(there), HOURLY, 1, quota)]
    assert not (await store.acquire(both_empty)).committed
    fresh = [BucketCall(key(here), HOURLY, 1, quota), BucketCall(key("fresh"), HOURLY, 1, quota)]
    one_admits = await store.acquire([*fresh, BucketCall(key("enforced"), HOURLY, 1)])
    assert one_admits.committed
    assert [o.allowed for o in one_admits.outcomes if o] == [False, True, True]
