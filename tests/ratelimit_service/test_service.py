"""The decision logic over the memory store and doubles of a failing or slow store."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ratelimit_service.circuit_breaker import CircuitBreaker
from ratelimit_service.decision import Code, Decision, FailureMode
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.empty_buckets import EmptyBucketCache
from ratelimit_service.errors import StoreError
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec
from ratelimit_service.limits.config import load_rule_file
from ratelimit_service.limits.planner import DescriptorRequest, Request
from ratelimit_service.limits.rules import RuleSet
from ratelimit_service.service import RateLimitService, StoreRound
from ratelimit_service.store import Acquired, BucketCall, BucketStore
from ratelimit_service.stores.memory import MemoryStore
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.loops import LoopBridge

RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {name: per-address, unit: second, requests_per_unit: 20, burst: 40}
  - key: subject
    rate_limits:
      - {name: subject-rate, unit: second, requests_per_unit: 10, burst: 20}
      - {name: subject-daily, unit: day, requests_per_unit: 25}
  - key: trial
    shadow_mode: true
    rate_limit: {name: trial, unit: second, requests_per_unit: 1}
  - key: blocked
    rate_limit: {name: blocked, unit: minute, requests_per_unit: 0}
  - key: internal
    rate_limit: {unlimited: true}
  - key: tier
    value: gold
    metadata: {tier: gold}
    rate_limit: {unit: second, requests_per_unit: 100}
"""


class CountingStore:
    """Wraps a store and counts the calls that reach it."""

    def __init__(self, inner: BucketStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.hash_tags = inner.hash_tags
        self.remote = inner.remote
        self.calls = 0

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        self.calls += 1
        return await self.inner.acquire(calls)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class BrokenStore:
    """A store that fails, or hangs, until told to work (through a memory store)."""

    name = "broken"
    hash_tags = False
    remote = True

    def __init__(self, clock: ManualClock, *, hang: bool = False) -> None:
        self.memory = MemoryStore(clock)
        self.working = False
        self.hang = hang

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        await self.ping()
        return await self.memory.acquire(calls)

    async def ping(self) -> None:
        if self.working:
            return
        if self.hang:
            await asyncio.sleep(3600)
        raise StoreError("ConnectionError: connection refused")

    async def close(self) -> None:
        return None


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        *,
        store: BucketStore | None = None,
        clock: ManualClock | None = None,
        failure_mode: FailureMode = "fail_open",
        cache: bool = True,
        max_in_flight: int = 256,
    ) -> None:
        path = tmp_path / "edge.yaml"
        path.write_text(RULES)
        self.clock = clock or ManualClock()
        self.store = store if store is not None else CountingStore(MemoryStore(self.clock))
        self.health: list[bool] = []
        self.decisions = DecisionLog(lines_per_second=1000, clock=self.clock, hash_key=b"k")
        self.guard = GuardedStore(
            self.store,
            breaker=CircuitBreaker(failure_threshold=2, open_seconds=1.0, clock=self.clock),
            decisions=self.decisions,
            failure_mode=failure_mode,
            call_timeout_s=0.05,
            probe_timeout_s=0.05,
            max_in_flight=max_in_flight,
            on_health=self._health,
        )
        self.service = RateLimitService(
            RuleSet({"edge": load_rule_file(path)}),
            self.guard,
            decisions=self.decisions,
            failure_mode=failure_mode,
            cache=EmptyBucketCache(max_entries=100, clock=self.clock) if cache else None,
        )

    async def _health(self, serving: bool) -> None:
        self.health.append(serving)

    async def ask(self, *descriptors: tuple[tuple[str, str], ...], hits: int = 0) -> Decision:
        request = Request("edge", tuple(DescriptorRequest(d) for d in descriptors), hits)
        return await self.service.should_rate_limit(request)

    async def admitted(self, count: int, *descriptors: tuple[tuple[str, str], ...]) -> int:
        results = [await self.ask(*descriptors) for _ in range(count)]
        return sum(r.code is Code.OK for r in results)


ADDRESS = (("remote_address", "192.0.2.1"),)
SUBJECT = (("subject", "alice"),)


async def test_burst_then_over_limit_with_statuses(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = await h.ask(ADDRESS)
    assert first.code is Code.OK
    (status,) = first.statuses
    assert status.limit is not None
    assert status.limit.name == "per-address"
    assert (status.remaining, status.reset_us) == (39, 50_000)
    assert await h.admitted(39, ADDRESS) == 39
    denied = await h.ask(ADDRESS)
    assert denied.code is Code.OVER_LIMIT
    assert denied.rule == "per-address"
    assert denied.retry_after_s == 1  # 50 ms rounds up to a whole second
    assert denied.statuses[0].code is Code.OVER_LIMIT
    assert denied.statuses[0].reset_us == 2_000_000
    h.clock.advance(0.05)
    assert (await h.ask(ADDRESS)).code is Code.OK


async def test_all_or_nothing_across_descriptors(tmp_path: Path) -> None:
    h = Harness(tmp_path, cache=False)  # so that the store itself decides
    assert await h.admitted(20, SUBJECT) == 20  # subject-rate empty
    denied = await h.ask(ADDRESS, SUBJECT)
    assert denied.code is Code.OVER_LIMIT
    assert denied.rule == "subject-rate"
    assert [s.code for s in denied.statuses] == [Code.OK, Code.OVER_LIMIT]
    assert denied.statuses[0].remaining == 40  # nothing was taken from the address
    assert await h.admitted(40, ADDRESS) == 40


async def test_several_limits_on_one_descriptor(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    admitted = 0
    for _ in range(10):
        admitted += await h.admitted(30, SUBJECT)
        h.clock.advance(10)  # the per-second bucket refills; the daily one does not
    assert admitted == 25
    denied = await h.ask(SUBJECT)
    assert denied.rule == "subject-daily"
    assert denied.retry_after_s == 3456 - 100  # a token of 25/day every 3456 s; 100 s passed


async def test_shadow_mode_answers_ok_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    trial = (("trial", "t"),)
    assert (await h.ask(trial)).code is Code.OK
    with caplog.at_level(logging.INFO, logger="ratelimit_service.decisions"):
        would = await h.ask(trial)
    assert would.code is Code.OK
    assert (would.reason, would.rule) == ("shadow_over_limit", "trial")
    assert h.service.stats.shadow_over_limit == 1
    (line,) = [r for r in caplog.records if r.getMessage() == "shadow_over_limit"]
    assert line.fields["descriptor"] == {"trial": h.decisions.pseudonym("t")}  # type: ignore[attr-defined]


async def test_shadow_denial_does_not_veto_other_descriptors(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    trial = (("trial", "t"),)
    await h.ask(trial)
    mixed = await h.ask(trial, ADDRESS)
    assert mixed.code is Code.OK
    assert mixed.statuses[1].remaining == 39  # the address was charged


async def test_rules_without_store_calls(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert isinstance(h.store, CountingStore)
    blocked = await h.ask((("blocked", "x"),))
    assert (blocked.code, blocked.rule, blocked.retry_after_s) == (Code.OVER_LIMIT, "blocked", 60)
    unlimited = await h.ask((("internal", "x"),))
    assert unlimited.code is Code.OK
    assert unlimited.statuses[0].remaining == 2**32 - 1
    nothing = await h.ask((("unknown", "x"),))
    assert nothing.statuses[0].limit is None
    other = await h.service.should_rate_limit(
        Request("no-such-domain", (DescriptorRequest(ADDRESS),))
    )
    assert other.code is Code.OK
    assert h.store.calls == 0


async def test_a_blocked_descriptor_stops_the_request_without_charging(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    denied = await h.ask(ADDRESS, (("blocked", "x"),))
    assert denied.code is Code.OVER_LIMIT
    assert (await h.ask(ADDRESS)).statuses[0].remaining == 39


async def test_hits_addend_costs(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert (await h.ask(ADDRESS, hits=41)).code is Code.OVER_LIMIT  # above the burst
    assert (await h.ask(ADDRESS, hits=40)).code is Code.OK
    assert (await h.ask(ADDRESS)).code is Code.OVER_LIMIT
    check = Request("edge", (DescriptorRequest(SUBJECT, hits_addend=0),))
    for _ in range(5):
        assert (await h.service.should_rate_limit(check)).code is Code.OK
    assert (await h.ask(SUBJECT)).statuses[0].remaining == 19  # checks consumed nothing


async def test_the_empty_bucket_cache_spares_the_store(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert isinstance(h.store, CountingStore)
    assert await h.admitted(40, ADDRESS) == 40
    calls = h.store.calls
    assert await h.admitted(100, ADDRESS) == 0
    assert h.store.calls == calls  # the 40th answer said: empty until +50 ms
    assert h.service.stats.cache_hits == 100
    h.clock.advance(0.05)
    assert await h.admitted(2, ADDRESS) == 1
    assert h.store.calls == calls + 1


async def test_a_cached_denial_reports_only_the_limit_that_denied(tmp_path: Path) -> None:
    # Envoy builds x-ratelimit-* from the status with the least remaining: a descriptor
    # the cached denial never asked about must not report 0 remaining.
    h = Harness(tmp_path)
    assert isinstance(h.store, CountingStore)
    assert await h.admitted(40, ADDRESS) == 40  # the address bucket is now known empty
    calls = h.store.calls

    denied = await h.ask(ADDRESS, SUBJECT)

    assert denied.code is Code.OVER_LIMIT
    assert denied.rule == "per-address"
    address, subject = denied.statuses
    assert address.code is Code.OVER_LIMIT
    assert address.limit is not None
    assert address.limit.name == "per-address"
    assert subject.code is Code.OK
    assert subject.limit is None  # not asked: no current_limit, no remaining
    assert h.store.calls == calls  # answered from the empty-bucket cache


async def test_fail_open_then_health_then_recovery(tmp_path: Path) -> None:
    clock = ManualClock()
    store = BrokenStore(clock)
    h = Harness(tmp_path, store=store, clock=clock)
    answer = await h.ask(ADDRESS)
    assert (answer.code, answer.reason) == (Code.OK, "store_failure")
    assert h.health == []
    await h.ask(ADDRESS)
    assert h.health == [False]  # two failures open the breaker
    assert (await h.ask(ADDRESS)).code is Code.OK
    assert h.guard.stats.short_circuited == 1
    store.working = True
    await h.guard.probe()
    assert h.health == [False, True]
    assert (await h.ask(ADDRESS)).reason == "ok"


async def test_fail_closed(tmp_path: Path) -> None:
    h = Harness(tmp_path, store=BrokenStore(ManualClock()), failure_mode="fail_closed")
    answer = await h.ask(ADDRESS, (("internal", "x"),))
    assert (answer.code, answer.reason, answer.retry_after_s) == (
        Code.OVER_LIMIT,
        "store_failure",
        1,
    )
    assert [s.code for s in answer.statuses] == [Code.OVER_LIMIT, Code.OK]


async def test_a_hung_store_is_answered_within_the_timeout(tmp_path: Path) -> None:
    h = Harness(tmp_path, store=BrokenStore(ManualClock(), hang=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await h.ask(ADDRESS)
    assert loop.time() - started < 1.0
    assert answer.reason == "store_failure"
    assert h.guard.stats.store_errors == 1


async def test_the_breaker_half_opens_after_its_cooldown(tmp_path: Path) -> None:
    clock = ManualClock()
    store = BrokenStore(clock)
    h = Harness(tmp_path, store=store, clock=clock)
    await h.ask(ADDRESS)
    await h.ask(ADDRESS)
    assert h.health == [False]
    store.working = True
    assert (await h.ask(ADDRESS)).reason == "store_failure"  # still open
    clock.advance(1.0)
    assert (await h.ask(ADDRESS)).reason == "ok"  # the trial call succeeds
    assert h.health == [False, True]


async def test_calls_in_flight_are_capped(tmp_path: Path) -> None:
    h = Harness(tmp_path, store=BrokenStore(ManualClock(), hang=True), max_in_flight=2)
    answers = await asyncio.gather(*(h.ask(ADDRESS) for _ in range(5)))
    assert all(a.reason == "store_failure" for a in answers)
    assert h.guard.stats.overloaded >= 1


async def test_metadata_of_passed_descriptors(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    answer = await h.ask((("tier", "gold"),))
    assert answer.metadata == {"tier": "gold"}


async def test_swapping_rules_clears_the_cache(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.admitted(41, ADDRESS)
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(RULES.replace("burst: 40", "burst: 45"))
    h.service.swap_rules(RuleSet({"edge": load_rule_file(relaxed)}))
    assert await h.admitted(10, ADDRESS) == 5  # the same bucket, now larger


async def test_swapping_rules_swaps_the_plan_cache(tmp_path: Path) -> None:
    h = Harness(tmp_path, cache=False)
    before = await h.ask(ADDRESS)
    assert before.statuses[0].limit is not None
    assert before.statuses[0].limit.burst == 40
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(RULES.replace("burst: 40", "burst: 45"))
    h.service.swap_rules(RuleSet({"edge": load_rule_file(relaxed)}))
    after = await h.ask(ADDRESS)  # the same request: planned again under the new rules
    assert after.statuses[0].limit is not None
    assert after.statuses[0].limit.burst == 45
    assert h.service.rules.domain("edge") is not None


async def test_a_store_failure_answers_with_the_failure_mode(tmp_path: Path) -> None:
    clock = ManualClock()
    h = Harness(tmp_path, store=BrokenStore(clock), clock=clock, failure_mode="fail_closed")
    answer = await h.ask(ADDRESS)
    assert (answer.code, answer.reason, answer.retry_after_s) == (
        Code.OVER_LIMIT,
        "store_failure",
        1,
    )
    assert answer.statuses[0].code is Code.OVER_LIMIT


QUOTA_RULES = """
domain: edge
descriptors:
  - key: service
    value: one
    quota_mode: true
    metadata: {quota: one}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: service
    value: two
    quota_mode: true
    metadata: {quota: two}
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: subject
    rate_limit: {unit: minute, requests_per_unit: 10}
"""

QUOTA = ((("service", "one"),), (("service", "two"),))


def quota_harness(tmp_path: Path, **options: object) -> Harness:
    h = Harness(tmp_path, **options)  # type: ignore[arg-type]
    path = tmp_path / "quota.yaml"
    path.write_text(QUOTA_RULES)
    h.service.swap_rules(RuleSet({"edge": load_rule_file(path)}))
    return h


async def test_quota_mode_denies_only_when_every_quota_descriptor_is_over(
    tmp_path: Path,
) -> None:
    """The reference's quota mode (its integration script's three requests): one quota
    descriptor over its budget marks its status, the request passes on the other's; when
    both are over, the request is denied and takes nothing."""
    h = quota_harness(tmp_path)
    first = await h.ask(*QUOTA)
    assert (first.code, first.reason, first.metadata) == (
        Code.OK,
        "ok",
        {"quota": "two"},  # merged in order: "one" then "two" overwrites the key
    )
    second = await h.ask(*QUOTA)
    assert (second.code, second.reason) == (Code.OK, "quota_over_limit")
    assert [s.code for s in second.statuses] == [Code.OVER_LIMIT, Code.OK]
    assert second.metadata == {"quota": "two"}  # only descriptors that passed
    third = await h.ask(*QUOTA)
    assert (third.code, third.reason) == (Code.OVER_LIMIT, "over_limit")
    assert third.retry_after_s >= 1
    assert h.service.stats.quota_over_limit == 1


async def test_a_quota_descriptor_does_not_spare_an_enforced_one(tmp_path: Path) -> None:
    h = quota_harness(tmp_path)
    subject = (("subject", "alice"),)
    assert [(await h.ask(subject, hits=10)).code] == [Code.OK]
    denied = await h.ask(QUOTA[1], subject)  # the quota descriptor has room
    assert (denied.code, denied.reason) == (Code.OVER_LIMIT, "over_limit")
    after = await h.ask(QUOTA[1])
    assert after.statuses[0].remaining == 1  # the denied request took nothing from it


async def test_global_quota_mode_makes_every_limit_a_quota(tmp_path: Path) -> None:
    path = tmp_path / "quota.yaml"
    path.write_text(QUOTA_RULES)
    h = Harness(tmp_path)
    h.service = RateLimitService(
        RuleSet({"edge": load_rule_file(path)}),
        h.guard,
        decisions=h.decisions,
        global_quota_mode=True,
    )
    subject = (("subject", "alice"),)
    await h.ask(subject, hits=10)
    passed = await h.ask(QUOTA[1], subject)  # the subject's limit is a quota now
    assert (passed.code, passed.reason) == (Code.OK, "quota_over_limit")


async def test_global_shadow_mode_answers_ok_and_counts(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.service = RateLimitService(
        h.service.rules, h.guard, decisions=h.decisions, global_shadow_mode=True
    )
    blocked = await h.ask((("blocked", "b"),))
    assert (blocked.code, blocked.reason, blocked.rule) == (
        Code.OK,
        "shadow_over_limit",
        "blocked",
    )
    assert blocked.statuses[0].code is Code.OVER_LIMIT  # the status still says so
    assert h.service.stats.global_shadow_mode == 1


class HalfBrokenStore:
    """Answers for every bucket but the ones whose key holds "down" (a failed node of a
    Redis Cluster): the guard's per-call None."""

    name = "half"
    hash_tags = False
    remote = False

    def __init__(self, clock: ManualClock) -> None:
        self.memory = MemoryStore(clock)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        up = [c for c in calls if "down" not in c.key]
        got = iter((await self.memory.acquire(up)).outcomes)
        outcomes = tuple(None if "down" in c.key else next(got) for c in calls)
        return Acquired(True, outcomes)  # type: ignore[arg-type]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("failure_mode", "code", "reason"),
    [("fail_open", Code.OK, "store_failure"), ("fail_closed", Code.OVER_LIMIT, "store_failure")],
)
async def test_a_bucket_without_an_answer_gets_the_failure_mode_alone(
    tmp_path: Path, failure_mode: FailureMode, code: Code, reason: str
) -> None:
    clock = ManualClock()
    h = Harness(tmp_path, store=HalfBrokenStore(clock), clock=clock, failure_mode=failure_mode)
    request = Request(
        "edge",
        (DescriptorRequest(ADDRESS), DescriptorRequest((("remote_address", "down"),))),
    )
    step = h.service.decide_now(request)
    assert isinstance(step, StoreRound)
    outcomes = (await h.store.acquire(step.calls)).outcomes
    decision = h.service.finish(step, outcomes)
    assert (decision.code, decision.reason) == (code, reason)
    assert decision.statuses[0].remaining == 39  # a real answer for the bucket that had one
    down = decision.statuses[1]
    assert down.code is (Code.OK if failure_mode == "fail_open" else Code.OVER_LIMIT)


# -- the synchronous core and the way in from a worker thread (the sync stack) --------------
async def test_decide_now_asks_for_one_round_trip_and_finish_decides(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    request = Request("edge", (DescriptorRequest((("remote_address", "192.0.2.50"),)),), 0)
    step = h.service.decide_now(request)
    assert isinstance(step, StoreRound)
    assert [c.key for c in step.calls] == [c.key for c in step.plan.checks]
    assert isinstance(h.store, CountingStore)
    assert h.store.calls == 0  # asking is not calling
    decision = h.service.finish(step, await h.guard.acquire(step.calls))
    assert (decision.code, decision.statuses[0].remaining) == (Code.OK, 39)
    again = h.service.decide_now(request)
    assert isinstance(again, StoreRound)
    failed = h.service.finish(again, None)
    assert (failed.code, failed.reason) == (Code.OK, "store_failure")  # fail open
    # Nothing to ask the store: a Decision at once.
    blocked = Request("edge", (DescriptorRequest((("blocked", "x"),)),), 0)
    assert isinstance(h.service.decide_now(blocked), Decision)


SPEC = BucketSpec(interval_us=1000.0, capacity=10)


async def test_a_worker_thread_gets_the_loop_s_answer(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    bridge = LoopBridge(asyncio.get_running_loop())
    calls = [BucketCall("rl:thread", SPEC, 1)]
    outcomes = await asyncio.to_thread(h.guard.acquire_from_thread, calls, bridge)
    assert outcomes is not None
    assert outcomes[0].allowed
    assert h.guard.stats.store_calls == 1


async def test_a_hung_store_answers_a_worker_thread_within_the_timeout(tmp_path: Path) -> None:
    h = Harness(tmp_path, store=BrokenStore(ManualClock(), hang=True))
    bridge = LoopBridge(asyncio.get_running_loop())
    started = time.monotonic()
    outcomes = await asyncio.to_thread(
        h.guard.acquire_from_thread, [BucketCall("rl:hung", SPEC, 1)], bridge
    )
    assert outcomes is None  # the failure mode answers
    assert time.monotonic() - started < 2.0  # the 50 ms timeout, not the store (never)
    # The loop's own deadline decided it: a store error, counted and logged once.
    assert (h.guard.stats.store_errors, h.guard.stats.failure_mode_answers) == (1, 1)
    assert h.guard.stats.loop_stuck == 0


async def test_a_stuck_loop_is_given_up_on_and_a_late_call_spares_the_store(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    bridge = LoopBridge(asyncio.get_running_loop())
    calls = [BucketCall("rl:stuck", SPEC, 1)]
    waiting = asyncio.get_running_loop().run_in_executor(
        None, h.guard.acquire_from_thread, calls, bridge
    )
    time.sleep(0.3)  # noqa: ASYNC251 - the loop is stuck: the thread gives up after 1.5 call timeouts
    assert await waiting is None
    assert (h.guard.stats.loop_stuck, h.guard.stats.failure_mode_answers) == (1, 1)
    await asyncio.sleep(0.05)
    assert h.guard.stats.store_calls == 0  # the abandoned call never reached the store
    # A call that reaches the loop after its deadline is not sent to the store either,
    # and is not held against it (the breaker stays closed).
    assert await h.guard._acquire_by(calls, time.monotonic() - 0.001, threading.Event()) is None
    assert (h.guard.stats.late, h.guard.stats.store_calls, h.guard.healthy) == (1, 0, True)


class BlockingBrokenStore(BrokenStore):
    """A broken store that worker threads call themselves (a `BlockingStore`)."""

    def acquire_blocking(self, calls: Sequence[BucketCall], *, timeout_s: float) -> Acquired:
        if not self.working:
            raise StoreError("ConnectionError: connection refused")
        return self.memory._acquire(calls)


async def test_a_blocking_store_is_called_on_the_worker_thread_itself(tmp_path: Path) -> None:
    h = Harness(tmp_path, store=MemoryStore(ManualClock()))
    no_loop = LoopBridge()  # any hand-over to a loop would fail
    outcomes = await asyncio.to_thread(
        h.guard.acquire_on_thread, [BucketCall("rl:own", SPEC, 1)], no_loop
    )
    assert outcomes is not None
    assert outcomes[0].remaining == 9
    assert (h.guard.stats.store_calls, h.guard.stats.failure_mode_answers) == (1, 0)


async def test_health_changes_seen_on_threads_are_reported_on_the_loop(tmp_path: Path) -> None:
    store = BlockingBrokenStore(ManualClock())
    h = Harness(tmp_path, store=store)
    bridge = LoopBridge(asyncio.get_running_loop())
    calls = [BucketCall("rl:health", SPEC, 1)]
    for _ in range(2):  # two failures open the breaker
        assert await asyncio.to_thread(h.guard.acquire_on_thread, calls, bridge) is None
    await asyncio.sleep(0.05)  # the report runs on the loop
    assert h.health == [False]
    assert h.guard.stats.store_errors == 2
    store.working = True
    h.clock.advance(1.0)  # the breaker's open period ends: the next call is its trial
    assert await asyncio.to_thread(h.guard.acquire_on_thread, calls, bridge) is not None
    await asyncio.sleep(0.05)
    assert h.health == [False, True]
