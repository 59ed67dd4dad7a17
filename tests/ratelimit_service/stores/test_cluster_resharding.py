"""Redis Cluster under change, with a real 3-master cluster with replicas: a slot of live
buckets migrated to another master under traffic, and a master killed under traffic.

Traffic is bounded (a fixed number of rounds, a few seconds), to loopback only, and goes
through the guard as the service's calls do: a None outcome is a failure-mode answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ratelimit_service.circuit_breaker import CircuitBreaker
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec, Outcome
from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.settings import StoreSettings
from ratelimit_service.store import BucketCall
from ratelimit_service.stores.redis_store import ClusterRedisStore, open_redis_store
from sidecar_runtime.clock import SystemClock
from tests.support.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.slow]

RATE_PER_S = 20
CAPACITY = 10
SPEC = BucketSpec(interval_us=1_000_000 / RATE_PER_S, capacity=CAPACITY)
# Generous: a failure-mode answer here must come from routing (a slot moving, a node down),
# not from a loaded machine's scheduling; a map re-read makes every connection reconnect,
# which on a busy CI machine once took a control call past a 50 ms deadline.
CALL_TIMEOUT_S = 0.25
ROUND_S = 0.01  # between a worker's calls


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """3 masters, 3 replicas: the resharding tests share it (the kill test has its own)."""
    started = RedisCluster.start(tmp_path_factory.mktemp("resharding"), masters=3, replicas=1)
    try:
        yield started
    finally:
        started.stop()


def _guard(store: ClusterRedisStore) -> GuardedStore:
    clock = SystemClock()
    return GuardedStore(
        store,
        breaker=CircuitBreaker(
            failure_threshold=3, failure_span_seconds=0.1, open_seconds=0.3, clock=clock
        ),
        decisions=DecisionLog(lines_per_second=5, clock=clock, hash_key=b"k"),
        failure_mode=store.failure_mode,
        call_timeout_s=CALL_TIMEOUT_S,
        probe_timeout_s=0.25,
        max_in_flight=64,
    )


@pytest.fixture
async def guard(cluster: RedisCluster) -> AsyncIterator[GuardedStore]:
    settings = StoreSettings(type="redis", cluster={"addresses": cluster.addresses})
    store = open_redis_store(settings)
    assert isinstance(store, ClusterRedisStore)
    guard = _guard(store)
    await guard.probe()  # the slot map read, the script loaded on every master
    try:
        yield guard
    finally:
        await store.close()


def bucket(value: str, limit: str = "per-second") -> str:
    return bucket_key("rl:", "edge", [("user", value)], limit, hash_tag=True)


@dataclass
class Answer:
    at: float  # seconds since the traffic started
    outcomes: tuple[Outcome | None, ...] | None  # None: the failure mode, for all


@dataclass
class Traffic:
    """Workers calling the guard in rounds; every answer kept with its time."""

    guard: GuardedStore
    calls: list[BucketCall]
    answers: list[Answer] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    async def run(self, *, workers: int, rounds: int) -> None:
        await asyncio.gather(*(self._worker(rounds) for _ in range(workers)))

    async def _worker(self, rounds: int) -> None:
        for _ in range(rounds):
            outcomes = await self.guard.acquire(self.calls)
            at = time.monotonic() - self.started
            self.answers.append(Answer(at, None if outcomes is None else tuple(outcomes)))
            await asyncio.sleep(ROUND_S)

    def failed(self, index: int, *, after: float = 0.0) -> list[float]:
        """When call `index` got the failure mode (since `after`)."""
        return [
            a.at
            for a in self.answers
            if a.at >= after and (a.outcomes is None or a.outcomes[index] is None)
        ]

    def admitted(self, index: int) -> int:
        return sum(1 for a in self.answers if a.outcomes and (o := a.outcomes[index]) and o.allowed)

    @property
    def elapsed(self) -> float:
        return self.answers[-1].at if self.answers else 0.0


def _bound(elapsed_s: float) -> float:
    """What a bucket can admit in `elapsed_s`: full at the start, plus the refill."""
    return CAPACITY + RATE_PER_S * elapsed_s


async def test_a_migrated_slot_is_enforced_again_at_once(
    cluster: RedisCluster, guard: GuardedStore
) -> None:
    # Two limits of one descriptor (one slot, one multi-key script call) and a control
    # bucket, requested apart (each request's calls must share a slot's fate here).
    moved_keys = [bucket("alice", "per-second"), bucket("alice", "burst")]
    slot = int(cluster.primaries()[0].client().cluster("keyslot", moved_keys[0]))
    assert int(cluster.primaries()[0].client().cluster("keyslot", moved_keys[1])) == slot
    source = cluster.owner(slot)
    target = next(n for n in cluster.primaries() if n is not source)
    moved = Traffic(guard, [BucketCall(k, SPEC, 1) for k in moved_keys])
    control = Traffic(guard, [BucketCall(bucket("control"), SPEC, 1)], started=moved.started)

    traffic = asyncio.gather(moved.run(workers=3, rounds=300), control.run(workers=1, rounds=300))
    await asyncio.sleep(1.0)  # live buckets, keys on the source
    assert cluster.owner(slot) is source
    began = time.monotonic() - moved.started
    # Slowly (0.25 s per step), so that calls meet the slot half moved: ASK for a key
    # already on the target, TRYAGAIN for the two keys split between the nodes.
    keys_moved = await asyncio.to_thread(cluster.migrate_slot, slot, to=target, pause_s=0.25)
    done = time.monotonic() - moved.started
    await traffic

    assert keys_moved == 2
    assert cluster.owner(slot) is target
    assert cluster.misplaced_keys() == []
    late = moved.failed(0, after=done + 1.0)
    during = moved.failed(0, after=began)
    admitted = [moved.admitted(0), moved.admitted(1), control.admitted(0)]
    bound = _bound(moved.elapsed)
    last_failure = max(during, default=began)
    print(
        f"\nresharding: {len(moved.answers)} requests on the moved slot over "
        f"{moved.elapsed:.2f} s, migration {began:.2f}-{done:.2f} s; admitted per bucket "
        f"{admitted[0]}, {admitted[1]} (moved), {admitted[2]} (control) <= bound "
        f"{bound:.0f} (capacity {CAPACITY} + {RATE_PER_S}/s x elapsed); failure-mode "
        f"answers on the moved slot: {len(during)}, the last at {last_failure:.2f} s"
    )
    assert moved.elapsed > done + 1.5  # the traffic went on well after the move
    assert late == []  # enforced again within a second of the move: no failure mode
    assert not moved.failed(0, after=done + 0.2)
    assert control.failed(0) == []  # other slots never noticed
    for count in admitted:
        assert count <= bound + 1  # + 1: the token that refills between two clock reads
    assert guard.healthy
    assert not guard.stats.degraded


async def test_bucket_state_survives_a_migration(
    cluster: RedisCluster, guard: GuardedStore
) -> None:
    # Bucket state survives the move: what was taken before is still taken after.
    key = bucket("bob")
    slot = int(cluster.primaries()[0].client().cluster("keyslot", key))
    first = await guard.acquire([BucketCall(key, SPEC, 6)])
    assert first is not None
    assert first[0] is not None
    assert first[0].remaining == CAPACITY - 6
    target = next(n for n in cluster.primaries() if n is not cluster.owner(slot))
    await asyncio.to_thread(cluster.migrate_slot, slot, to=target)
    after = await guard.acquire([BucketCall(key, SPEC, 0)])
    assert after is not None
    assert after[0] is not None
    assert after[0].remaining <= CAPACITY - 6 + 2  # at most the refill of the last moments


async def test_calls_follow_ask_while_the_slot_is_half_moved(
    cluster: RedisCluster, guard: GuardedStore
) -> None:
    # Many connections to every node first: redis-py's own ASK handling fails when the
    # target has several free connections (its ASKING goes on another one).
    warm = [BucketCall(bucket(f"warm-{i}"), SPEC, 1) for i in range(40)]
    await asyncio.gather(*(guard.acquire([c]) for c in warm))
    moved_key, fresh_key = bucket("carol"), bucket("carol", "burst")  # one slot
    slot = int(cluster.primaries()[0].client().cluster("keyslot", moved_key))
    first = await guard.acquire([BucketCall(moved_key, SPEC, 3)])
    assert first is not None
    target = next(n for n in cluster.primaries() if n is not cluster.owner(slot))
    source = cluster.begin_migration(slot, to=target)
    try:
        assert cluster.move_keys(slot, source=source, to=target) == 1
        # The key is on the target, the slot still the source's: the source answers ASK.
        answers = await asyncio.gather(
            *(guard.acquire([BucketCall(moved_key, SPEC, 0)]) for _ in range(20)),
            *(guard.acquire([BucketCall(fresh_key, SPEC, 1)]) for _ in range(5)),
        )
    finally:
        cluster.end_migration(slot, source=source, to=target)
    assert all(a is not None and a[0] is not None for a in answers)
    checked = [a[0] for a in answers[:20] if a is not None]
    assert all(o is not None and o.remaining <= CAPACITY - 3 + 1 for o in checked)
    assert int(target.client().exists(moved_key, fresh_key)) == 2  # written on the target
    assert cluster.misplaced_keys() == []


@pytest.fixture
def fast_failover_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    started = RedisCluster.start(tmp_path, masters=3, replicas=1, node_timeout_ms=1000)
    try:
        yield started
    finally:
        started.stop()


async def test_a_killed_master_fails_only_its_buckets_until_a_replica_takes_over(
    fast_failover_cluster: RedisCluster,
) -> None:
    cluster = fast_failover_cluster
    settings = StoreSettings(type="redis", cluster={"addresses": cluster.addresses})
    store = open_redis_store(settings)
    assert isinstance(store, ClusterRedisStore)
    guard = _guard(store)
    await guard.probe()
    primaries = cluster.primaries()
    keys: dict[int, str] = {}  # one bucket per master
    for i in range(200):
        key = bucket(f"user-{i}")
        owner = cluster.owner(int(primaries[0].client().cluster("keyslot", key)))
        keys.setdefault(owner.port, key)
        if len(keys) == len(primaries):
            break
    victim = primaries[0]
    roomy = BucketSpec(interval_us=1_000, capacity=1_000)  # admits all: only failures show
    per_master = {port: Traffic(guard, [BucketCall(k, roomy, 1)]) for port, k in keys.items()}
    started = time.monotonic()
    for traffic in per_master.values():
        traffic.started = started

    async def probing() -> None:
        while time.monotonic() - started < 9.0:
            await guard.probe()
            await asyncio.sleep(0.1)

    runs = asyncio.gather(*(t.run(workers=2, rounds=400) for t in per_master.values()), probing())
    try:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic() - started
        cluster.kill(victim)
        new_master = await asyncio.to_thread(cluster.wait_for_failover, victim)
        promoted_at = time.monotonic() - started
        degraded_seen = guard.stats.degraded or bool(guard.stats.open_nodes)
    finally:
        await runs
        await store.close()
    victim_traffic = per_master[victim.port]
    others = [t for port, t in per_master.items() if port != victim.port]
    failed = victim_traffic.failed(0, after=killed_at)
    healed = [
        a.at for a in victim_traffic.answers if a.at > promoted_at and a.outcomes and a.outcomes[0]
    ]
    print(
        f"\nmaster kill: killed at {killed_at:.2f} s, replica {new_master.address} promoted "
        f"at {promoted_at:.2f} s; failure-mode answers for the victim's bucket "
        f"{len(failed)} (last at {max(failed, default=0):.2f} s), first real answer after "
        f"promotion at {min(healed, default=float('nan')):.2f} s; other masters' buckets: "
        f"{sum(len(t.answers) for t in others)} answers, "
        f"{sum(len(t.failed(0)) for t in others)} failure-mode"
    )
    assert failed  # the dead master's bucket got the failure mode...
    for traffic in others:
        assert traffic.failed(0) == []  # ...and nobody else's
        assert all(a.outcomes and a.outcomes[0] and a.outcomes[0].allowed for a in traffic.answers)
    assert healed  # real answers again, no restart
    assert not victim_traffic.failed(0, after=healed[0] + 1.0)
    assert degraded_seen
    assert guard.healthy
