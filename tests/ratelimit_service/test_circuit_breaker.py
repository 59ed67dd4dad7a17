"""The circuit breaker, on a fake clock."""

from __future__ import annotations

from ratelimit_service.circuit_breaker import BreakerState, CircuitBreaker, NodeBreakers
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


def test_node_breakers_open_one_node_and_leave_the_others() -> None:
    clock = ManualClock()
    nodes = NodeBreakers(CircuitBreaker(failure_threshold=2, open_seconds=1.0, clock=clock))
    assert nodes.allow("a")
    assert not nodes.record_failure("a")
    assert nodes.record_failure("a")  # a's second failure opens a's breaker only
    assert not nodes.allow("a")
    assert nodes.allow("b")
    assert nodes.record_success("b") is False  # b was closed: no change
    assert nodes.open_nodes() == ("a",)
    assert not nodes.all_open()
    clock.advance(1.0)
    assert nodes.allow("a")  # a's trial
    assert nodes.record_success("a")
    assert nodes.open_nodes() == ()


def test_node_breakers_are_made_like_the_template() -> None:
    clock = ManualClock()
    template = CircuitBreaker(
        failure_threshold=3, failure_span_seconds=0.2, open_seconds=5.0, clock=clock
    )
    nodes = NodeBreakers(template)
    for _ in range(3):
        nodes.record_failure("a")
    assert nodes.open_nodes() == ()  # three at one instant do not span 0.2 s
    clock.advance(0.3)
    assert nodes.record_failure("a")
    clock.advance(4.9)
    assert not nodes.allow("a")  # open for the template's 5 s
    assert template.is_closed  # the template itself is untouched


def test_all_open_and_forgetting_former_masters() -> None:
    nodes = NodeBreakers(CircuitBreaker(failure_threshold=1, open_seconds=1.0, clock=ManualClock()))
    assert not nodes.all_open()  # no node known: nothing says the store is down
    nodes.trip("a")
    nodes.trip("b")
    assert nodes.all_open()
    nodes.record_success("c")
    assert not nodes.all_open()
    assert nodes.retain(["c", "d"])  # a and b are gone (a failover): open ones forgotten
    assert nodes.open_nodes() == ()
