"""The circuit breaker, the empty-bucket cache and the decision log, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.protection import BreakerState, CircuitBreaker, EmptyBucketCache
from sidecar_runtime.clock import ManualClock


def test_breaker_opens_after_consecutive_failures_and_half_opens() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=2.0, clock=clock)
    assert not breaker.record_failure()
    assert not breaker.record_failure()
    breaker.record_success()  # resets the count
    assert not breaker.record_failure()
    assert not breaker.record_failure()
    assert breaker.record_failure()  # third in a row: opens
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(2.0)
    assert breaker.allow()  # the single trial call
    assert not breaker.allow()  # nobody else while it is out
    assert not breaker.record_failure()  # trial failed: open again, already unhealthy
    assert breaker.state is BreakerState.OPEN
    clock.advance(2.0)
    assert breaker.allow()
    assert breaker.record_success()  # trial succeeded: closed
    assert breaker.allow()


def test_a_burst_of_failures_at_one_instant_does_not_open_the_breaker() -> None:
    # One stall longer than the call timeout fails every call in flight at once.
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_threshold=5, failure_span_seconds=0.2, open_seconds=1.0, clock=clock
    )
    for _ in range(40):
        assert not breaker.record_failure()
    assert breaker.is_closed
    breaker.record_success()  # the store answers again: the burst is forgotten
    clock.advance(0.15)
    assert not breaker.record_failure()
    clock.advance(0.15)
    assert not breaker.record_failure()  # 0.15 s since the first failure of this run
    # Five in a row now, but they span 0.15 s: counted from the burst (0.3 s ago) they
    # would open it; the success started a new run.
    for _ in range(3):
        assert not breaker.record_failure()
    assert breaker.is_closed


def test_failures_that_span_the_window_open_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_threshold=5, failure_span_seconds=0.2, open_seconds=1.0, clock=clock
    )
    for _ in range(4):
        assert not breaker.record_failure()
        clock.advance(0.1)
    # Five in a row, the first 0.4 s ago: the store keeps failing, so open.
    assert breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(1.0)
    assert breaker.allow()  # the trial
    assert not breaker.record_failure()  # a failed trial re-opens at once, span or not
    assert breaker.state is BreakerState.OPEN


def test_many_failures_inside_the_span_wait_for_the_span() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_threshold=2, failure_span_seconds=0.2, open_seconds=1.0, clock=clock
    )
    for _ in range(10):
        assert not breaker.record_failure()
        clock.advance(0.01)
    clock.advance(0.11)
    assert breaker.record_failure()  # 0.21 s after the first


def test_trip_opens_at_once() -> None:
    breaker = CircuitBreaker(failure_threshold=100, open_seconds=1.0, clock=ManualClock())
    assert breaker.trip()
    assert not breaker.trip()
    assert not breaker.is_closed


def test_cache_remembers_until_the_next_token() -> None:
    clock = ManualClock()
    cache = EmptyBucketCache(max_entries=10, clock=clock)
    cache.mark("k", token_in=0.5, full_in=2.0)
    assert cache.empty_for("k") == (0.5, 2.0)
    clock.advance(0.25)
    assert cache.empty_for("k") == (0.25, 1.75)
    clock.advance(0.25)
    assert cache.empty_for("k") == (0.0, 0.0)
    assert len(cache) == 0  # expired entries are dropped when seen
    cache.mark("ignored", token_in=0.0, full_in=1.0)
    assert len(cache) == 0


def test_cache_is_bounded() -> None:
    cache = EmptyBucketCache(max_entries=3, clock=ManualClock())
    for i in range(10):
        cache.mark(f"k{i}", token_in=60, full_in=60)
    assert len(cache) == 3
    assert cache.empty_for("k0") == (0.0, 0.0)
    assert cache.empty_for("k9")[0] > 0


def test_decision_log_is_rate_limited_and_hashes_values(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    log = DecisionLog(lines_per_second=2, clock=clock, hash_key=b"key")
    with caplog.at_level(logging.INFO, logger="ratelimit_service.decisions"):
        for _ in range(50):
            log.over_limit(
                domain="edge",
                entries=[("remote_address", "192.0.2.1")],
                rule="per-client-address",
                shadow=False,
                cost=1,
                retry_after_s=1,
            )
        clock.advance(1.0)
        log.store_failure(store="redis", error="timeout", failure_mode="fail_open")
    records = [r for r in caplog.records if r.name == "ratelimit_service.decisions"]
    assert len(records) == 3  # a burst of 2, then one more after a second
    assert log.written == 3
    fields = [r.fields for r in records]  # type: ignore[attr-defined]
    assert fields[0]["descriptor"] == {"remote_address": log.pseudonym("192.0.2.1")}
    assert "192.0.2.1" not in str(fields)
    assert fields[2]["event"] == "store_failure"
    assert fields[2]["suppressed"] == 48


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    clock = ManualClock()
    a = DecisionLog(lines_per_second=1, clock=clock, hash_key=b"one")
    b = DecisionLog(lines_per_second=1, clock=clock, hash_key=b"two")
    assert a.pseudonym("alice") == a.pseudonym("alice")
    assert a.pseudonym("alice") != a.pseudonym("bob")
    assert a.pseudonym("alice") != b.pseudonym("alice")
