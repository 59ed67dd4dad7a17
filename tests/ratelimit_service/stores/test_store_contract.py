"""One contract, every store: memory, a real redis-server (through the pipelined client, as
a `url:` gets it; through redis-py, as a URL with query options gets it; both again over
TLS, rediss://; and found through a real Sentinel), and a real 3-master Redis Cluster.

Limits here refill slowly (per hour), so the few milliseconds a test takes against a real
server never add a token and every store must give exactly the same decisions. Every test
runs on asyncio's event loop and on uvloop's (whose transports the pipelined client must
take as they are).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ratelimit_service.limits.bucket import BucketSpec, ttl_ms
from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.settings import StoreSettings
from ratelimit_service.store import BucketCall, BucketStore, CallMode
from ratelimit_service.stores.memory import MemoryStore
from ratelimit_service.stores.redis_store import (
    ClusterRedisStore,
    RedisStore,
    open_redis_store,
    redis_py_store,
)
from sidecar_runtime.clock import ManualClock
from tests.ratelimit_service.stores.pipelined import is_pipelined, is_redis_py
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.redis_servers import RedisCluster, RedisSentinel, RedisServer

HOURLY = BucketSpec(interval_us=3_600_000_000 / 5, capacity=5)  # 5 per hour, burst 5

pytestmark = ALSO_ON_UVLOOP


@dataclass
class StoreUnderTest:
    store: BucketStore
    ttl_ms: Callable[[str], int]  # -2: no such key
    script_loads: Callable[[], list[int]] | None = None  # SCRIPT LOAD calls, per server
    command_calls: Callable[[str], int] | None = None
    flush_scripts: Callable[[], None] | None = None

    def key(self, value: str, domain: str = "contract") -> str:
        return bucket_key("rl:", domain, [("k", value)], "1hour", hash_tag=self.store.hash_tags)

    def call(
        self,
        value: str,
        cost: int = 1,
        *,
        mode: CallMode = CallMode.ENFORCE,
        spec: BucketSpec = HOURLY,
    ) -> BucketCall:
        return BucketCall(self.key(value), spec, cost, mode)


def _memory() -> StoreUnderTest:
    clock = ManualClock()
    store = MemoryStore(clock)

    def ttl(key: str) -> int:
        state = store.state(key)
        return -2 if state is None else ttl_ms(state, round(clock.monotonic() * 1e6))

    return StoreUnderTest(store, ttl)


def _redis(
    server: RedisServer,
    sentinel: RedisSentinel | None = None,
    *,
    redis_py: bool = False,
    ca: Path | None = None,
) -> StoreUnderTest:
    store: BucketStore
    tls = {"ca_file": ca} if ca is not None else None
    url = StoreSettings.model_validate({"type": "redis", "url": server.url, "tls": tls})
    if sentinel is not None:
        found = {"master_name": sentinel.master_name, "addresses": [sentinel.address]}
        store = open_redis_store(StoreSettings(type="redis", sentinel=found))
        assert isinstance(store, RedisStore)
    elif redis_py:
        store = redis_py_store(url)
        assert is_redis_py(store)
    else:
        store = open_redis_store(url)
        assert is_pipelined(store)
    client = server.client()

    def ttl(key: str) -> int:
        return int(client.pttl(key))

    def flush() -> None:
        client.script_flush()

    return StoreUnderTest(
        store,
        ttl,
        script_loads=lambda: [server.command_calls("script|load")],
        command_calls=server.command_calls,
        flush_scripts=flush,
    )


def _cluster(cluster: RedisCluster) -> StoreUnderTest:
    settings = StoreSettings(type="redis", cluster={"addresses": cluster.addresses})
    store = open_redis_store(settings)
    assert isinstance(store, ClusterRedisStore)

    def ttl(key: str) -> int:
        for node in cluster.nodes:
            client = node.client()
            try:
                return int(client.pttl(key))
            except redis.ResponseError:  # MOVED: another node owns the slot
                continue
            finally:
                client.close()
        raise AssertionError(f"no node owns {key}")

    def flush() -> None:
        for node in cluster.nodes:
            client = node.client()
            client.script_flush()
            client.close()

    return StoreUnderTest(
        store,
        ttl,
        script_loads=lambda: [n.command_calls("script|load") for n in cluster.nodes],
        command_calls=cluster.command_calls,
        flush_scripts=flush,
    )


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-py", marks=pytest.mark.redis),
        pytest.param("rediss", marks=pytest.mark.redis),
        pytest.param("rediss-redis-py", marks=pytest.mark.redis),
        pytest.param("sentinel", marks=pytest.mark.redis),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
    ]
)
async def sut(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        under_test = _memory()
    elif request.param == "redis":
        under_test = _redis(request.getfixturevalue("redis_server"))
    elif request.param == "redis-py":
        under_test = _redis(request.getfixturevalue("redis_server"), redis_py=True)
    elif request.param.startswith("rediss"):
        server, pki = request.getfixturevalue("tls_redis"), request.getfixturevalue("pki")
        redis_py = request.param.endswith("redis-py")
        under_test = _redis(server, redis_py=redis_py, ca=pki.ca)
    elif request.param == "sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        under_test = _redis(request.getfixturevalue("redis_server"), sentinel)
    else:
        under_test = _cluster(request.getfixturevalue("redis_cluster"))
    try:
        yield under_test
    finally:
        await under_test.store.close()


async def test_same_decisions_everywhere(sut: StoreUnderTest) -> None:
    decisions = []
    for cost in [1, 2, 1, 1, 1, 0, 3]:
        acquired = await sut.store.acquire([sut.call("a", cost)])
        (outcome,) = acquired.outcomes
        decisions.append((acquired.committed, outcome.allowed, outcome.remaining))
    assert decisions == [
        (True, True, 4),
        (True, True, 2),
        (True, True, 1),
        (True, True, 0),
        (False, False, 0),
        (False, False, 0),  # a check (cost 0) of an empty bucket
        (False, False, 0),
    ]


async def test_a_tuple_of_calls_handed_over_again_and_again(sut: StoreUnderTest) -> None:
    # What a cached plan does: the same tuple on every request (a store may remember
    # what it sent for it). Each call is still decided afresh.
    again = (sut.call("tuple", 2), sut.call("tuple-other", 1))
    answers = [(await sut.store.acquire(again)).committed for _ in range(3)]
    assert answers == [True, True, False]  # 2 + 2 of 5, then 2 more would be 6
    # Fresh tuples, each likely at the address the last one freed, with other costs:
    # each is its own command.
    remaining = []
    for cost in (1, 2, 1):
        calls = (sut.call("reuse", cost), sut.call("reuse-other", 0))
        remaining.append((await sut.store.acquire(calls)).outcomes[0].remaining)
        del calls
    assert remaining == [4, 2, 1]


async def test_all_or_nothing_across_descriptors(sut: StoreUnderTest) -> None:
    await sut.store.acquire([sut.call("empty", 5)])
    values = [f"fresh-{i}" for i in range(8)]  # spread over the cluster's nodes
    calls = [sut.call(v, 2) for v in values] + [sut.call("empty")]
    denied = await sut.store.acquire(calls)
    assert not denied.committed
    assert [o.allowed for o in denied.outcomes] == [True] * 8 + [False]
    assert all(o.remaining == 5 for o in denied.outcomes[:8])
    after = await sut.store.acquire([sut.call(v, 5) for v in values])
    assert after.committed  # every fresh bucket still had all 5 tokens


async def test_a_shadow_denial_does_not_veto(sut: StoreUnderTest) -> None:
    await sut.store.acquire([sut.call("shadow", 5)])
    mixed = await sut.store.acquire([sut.call("shadow", mode=CallMode.SHADOW), sut.call("real")])
    assert mixed.committed
    assert [o.allowed for o in mixed.outcomes] == [False, True]
    assert mixed.outcomes[1].remaining == 4


async def test_cost_above_capacity_takes_nothing(sut: StoreUnderTest) -> None:
    huge = await sut.store.acquire([sut.call("big", 6), sut.call("other")])
    assert not huge.committed
    assert (await sut.store.acquire([sut.call("big", 5)])).committed


async def test_keys_get_ttls_of_the_refill_time(sut: StoreUnderTest) -> None:
    await sut.store.acquire([sut.call("ttl", 2)])
    ttl = sut.ttl_ms(sut.key("ttl"))
    two_tokens_ms = 2 * HOURLY.interval_us / 1000
    assert two_tokens_ms - 5_000 < ttl <= two_tokens_ms + 1
    await sut.store.acquire([sut.call("checked", 0)])
    assert sut.ttl_ms(sut.key("checked")) == -2  # a check writes nothing


async def test_crafted_values_do_not_share_buckets(sut: StoreUnderTest) -> None:
    crafted = [[("a", "b:c")], [("a:b", "c")], [("a", "b"), ("c", "")], [("ab", "c")]]
    keys = [bucket_key("rl:", "d", e, "1hour", hash_tag=sut.store.hash_tags) for e in crafted]
    await sut.store.acquire([BucketCall(keys[0], HOURLY, 5)])
    others = await sut.store.acquire([BucketCall(k, HOURLY, 5) for k in keys[1:]])
    assert others.committed


async def test_remaining_and_reset_report_the_bucket(sut: StoreUnderTest) -> None:
    spec = BucketSpec(interval_us=3_600_000_000, capacity=3)
    first = (await sut.store.acquire([sut.call("r", 1, spec=spec)])).outcomes[0]
    assert first.remaining == 2
    assert 3_600_000_000 - 5_000_000 < first.reset_us <= 3_600_000_000


async def test_quota_mode_one_quota_admitting_is_enough(sut: StoreUnderTest) -> None:
    await sut.store.acquire([sut.call("q-empty", 5)])
    quota = CallMode.QUOTA
    either = await sut.store.acquire(
        [sut.call("q-empty", mode=quota), sut.call("q-full", mode=quota), sut.call("q-enf")]
    )
    assert either.committed
    assert [o.allowed for o in either.outcomes if o] == [False, True, True]
    assert [o.remaining for o in either.outcomes if o] == [0, 4, 4]


async def test_quota_mode_every_quota_denied_vetoes(sut: StoreUnderTest) -> None:
    await sut.store.acquire([sut.call("q-a", 5), sut.call("q-b", 5)])
    quota = CallMode.QUOTA
    calls = [sut.call("q-a", mode=quota), sut.call("q-b", mode=quota), sut.call("q-other")]
    vetoed = await sut.store.acquire(calls)
    assert not vetoed.committed
    assert [o.remaining for o in vetoed.outcomes if o] == [0, 0, 5]  # nothing taken
    shadow = await sut.store.acquire([sut.call("q-a", mode=CallMode.SHADOW), sut.call("q-c")])
    assert shadow.committed  # a shadow denial is no quota veto


async def test_limits_of_one_descriptor_share_one_script_call(sut: StoreUnderTest) -> None:
    if sut.command_calls is None:
        pytest.skip("counts Redis commands")
    keys = [
        bucket_key("rl:", "d", [("k", "v")], tag, hash_tag=sut.store.hash_tags)
        for tag in ("1second", "1day")
    ]
    before = sut.command_calls("evalsha")
    answer = await sut.store.acquire([BucketCall(k, HOURLY, 1) for k in keys])
    assert answer.committed
    assert sut.command_calls("evalsha") - before == 1


@pytest.mark.redis
@pytest.mark.parametrize(
    "sut",
    ["redis", "redis-py", pytest.param("cluster", marks=pytest.mark.cluster)],
    indirect=True,
)
async def test_the_script_is_loaded_once(sut: StoreUnderTest) -> None:
    assert sut.script_loads is not None
    assert sut.command_calls is not None
    assert sut.flush_scripts is not None
    for i in range(20):
        await sut.store.acquire([sut.call(f"s{i % 4}"), sut.call(f"t{i % 7}")])
    assert all(loads <= 1 for loads in sut.script_loads())
    assert sum(sut.script_loads()) >= 1
    assert sut.command_calls("evalsha") >= 20
    assert sut.command_calls("eval") == 0  # never the script text per call
    sut.flush_scripts()  # what a restarted or flushed server looks like: NOSCRIPT
    await sut.store.acquire([sut.call("after-flush")])
    assert all(loads <= 2 for loads in sut.script_loads())
    assert (await sut.store.acquire([sut.call("after-flush")])).committed
