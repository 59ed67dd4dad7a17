"""The GCRA arithmetic, driven by a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from ratelimit_service.limits.bucket import (
    EMPTY_STATE,
    BucketSpec,
    BucketState,
    CallMode,
    Verdict,
    evaluate,
    must_commit,
    refund,
    report,
    retry_after_us,
    ttl_ms,
)
from ratelimit_service.store import BucketCall
from sidecar_runtime.clock import ManualClock


class Bucket:
    """One bucket and a fake clock, stepping the pure functions like a store would."""

    def __init__(self, *, per_second: float, capacity: int) -> None:
        self.spec = BucketSpec(interval_us=1_000_000 / per_second, capacity=capacity)
        self.state = EMPTY_STATE
        self.clock = ManualClock()

    @property
    def now_us(self) -> int:
        return round(self.clock.now() * 1_000_000)

    def take(self, cost: int = 1) -> Verdict:
        verdict = evaluate(self.spec, self.state, cost=cost, now_us=self.now_us)
        if verdict.new_state is not None:
            self.state = verdict.new_state
        return verdict

    def admitted(self, count: int, cost: int = 1) -> int:
        return sum(self.take(cost).allowed for _ in range(count))


def test_a_full_bucket_admits_its_burst_then_denies() -> None:
    bucket = Bucket(per_second=20, capacity=40)
    assert bucket.admitted(40) == 40
    denied = bucket.take()
    assert not denied.allowed
    assert denied.new_state is None
    assert denied.remaining_now == 0


def test_refill_is_one_token_per_interval() -> None:
    bucket = Bucket(per_second=10, capacity=10)
    assert bucket.admitted(10) == 10
    bucket.clock.advance(0.1)
    assert bucket.admitted(3) == 1
    bucket.clock.advance(0.35)
    assert bucket.admitted(10) == 3
    bucket.clock.advance(60)
    assert bucket.admitted(20) == 10  # never more than the capacity


def test_exact_boundary_in_microseconds() -> None:
    bucket = Bucket(per_second=10, capacity=1)
    assert bucket.take().allowed
    bucket.clock.advance(0.099_999)
    assert not bucket.take().allowed
    bucket.clock.advance(0.000_001)  # exactly one interval after the first request
    assert bucket.take().allowed


def test_interval_that_does_not_divide_a_second() -> None:
    bucket = Bucket(per_second=3, capacity=3)
    assert bucket.admitted(4) == 3
    bucket.clock.advance(0.333_333)
    assert not bucket.take().allowed
    bucket.clock.advance(0.000_001)
    assert bucket.take().allowed


def test_remaining_and_reset_describe_the_bucket_after_the_request() -> None:
    bucket = Bucket(per_second=10, capacity=5)
    first = bucket.take()
    assert (first.remaining_after, first.reset_after_us) == (4, 100_000)
    second = bucket.take(cost=2)
    assert (second.remaining_after, second.reset_after_us) == (2, 300_000)
    assert (second.remaining_now, second.reset_now_us) == (4, 100_000)


def test_fixed_window_artefact_is_absent() -> None:
    # A fixed one-second window would admit N at t=0.99 and N more at t=1.01.
    n = 100
    bucket = Bucket(per_second=n, capacity=n)
    bucket.clock.advance(0.99)
    assert bucket.admitted(n) == n
    bucket.clock.advance(0.02)
    assert bucket.admitted(n) == 2  # only what 20 ms refill at 100/s


def test_clock_stepping_backwards_neither_drains_nor_refills() -> None:
    bucket = Bucket(per_second=1, capacity=2)
    assert bucket.take().allowed  # one token left
    before = bucket.clock.now()
    bucket.clock.set_wall(before - 3600)  # NTP steps an hour back
    still = bucket.take()
    assert still.allowed  # the remaining token was not drained by the step
    assert not bucket.take().allowed  # and the step did not refill anything
    bucket.clock.set_wall(before + 0.5)
    assert not bucket.take().allowed
    bucket.clock.set_wall(before + 1.0)
    assert bucket.take().allowed  # refill resumes from the latest time seen


def test_elapsed_time_is_clamped_in_the_state() -> None:
    spec = BucketSpec(interval_us=1_000, capacity=5)
    state = BucketState(tat_us=10_000.0, seen_us=8_000.0)
    past = evaluate(spec, state, cost=1, now_us=1_000)
    at_seen = evaluate(spec, state, cost=1, now_us=8_000)
    assert past == at_seen


def test_huge_hits_addend_is_denied_without_consuming() -> None:
    bucket = Bucket(per_second=10, capacity=10)
    huge = bucket.take(cost=2**64 - 1)
    assert not huge.allowed
    assert huge.new_state is None
    assert bucket.admitted(10) == 10


def test_cost_above_capacity_is_denied_even_when_full() -> None:
    bucket = Bucket(per_second=10, capacity=10)
    assert not bucket.take(cost=11).allowed
    assert bucket.take(cost=10).allowed


def test_cost_zero_checks_without_consuming() -> None:
    bucket = Bucket(per_second=10, capacity=2)
    check = bucket.take(cost=0)
    assert check.allowed
    assert check.new_state is None
    assert check.remaining_after == 2
    assert bucket.admitted(2) == 2
    empty = bucket.take(cost=0)
    assert not empty.allowed  # a check reports an empty bucket


def test_must_commit_ignores_shadow_denials() -> None:
    spec = BucketSpec(interval_us=1_000, capacity=1)
    ok = evaluate(spec, EMPTY_STATE, cost=1, now_us=0)
    no = evaluate(spec, EMPTY_STATE, cost=2, now_us=0)
    shadow = BucketCall("k", spec, 2, CallMode.SHADOW)
    enforced = BucketCall("k", spec, 2, CallMode.ENFORCE)
    assert must_commit([ok, no], [enforced, shadow])
    assert not must_commit([ok, no], [enforced, enforced])


@pytest.mark.parametrize(
    ("votes", "commit"),
    [
        ([], True),
        ([(True, "E")], True),
        ([(False, "E")], False),
        ([(False, "S")], True),
        ([(False, "Q")], False),  # the only quota denies
        ([(True, "Q")], True),
        ([(False, "Q"), (True, "Q")], True),  # one quota admitting is enough
        ([(False, "Q"), (False, "Q"), (True, "E")], False),  # every quota denied
        ([(True, "Q"), (False, "E")], False),  # an enforce denial vetoes anyway
        ([(False, "S"), (True, "Q"), (True, "E")], True),
        ([(False, "S"), (True, "E")], True),  # no quota calls: no quota veto
    ],
)
def test_the_commit_rule(votes: list[tuple[bool, str]], commit: bool) -> None:
    modes = {"S": CallMode.SHADOW, "E": CallMode.ENFORCE, "Q": CallMode.QUOTA}
    spec = BucketSpec(interval_us=1_000, capacity=1)
    verdicts = [evaluate(spec, EMPTY_STATE, cost=1 if ok else 2, now_us=0) for ok, _ in votes]
    calls = [BucketCall(f"k{i}", spec, 1, modes[m]) for i, (_, m) in enumerate(votes)]
    assert must_commit(verdicts, calls) is commit


def test_call_modes_are_what_the_script_reads() -> None:
    assert [int(m) for m in (CallMode.SHADOW, CallMode.ENFORCE, CallMode.QUOTA)] == [0, 1, 2]
    assert BucketCall("k", BucketSpec(1.0, 1), 1).mode is CallMode.ENFORCE


def test_report_shows_the_bucket_as_it_is_when_not_committed() -> None:
    spec = BucketSpec(interval_us=1_000, capacity=3)
    verdict = evaluate(spec, EMPTY_STATE, cost=1, now_us=0)
    assert report(verdict, committed=True).remaining == 2
    assert report(verdict, committed=False).remaining == 3


def test_refund_gives_back_what_was_taken() -> None:
    spec = BucketSpec(interval_us=1_000, capacity=3)
    taken = evaluate(spec, EMPTY_STATE, cost=2, now_us=0)
    assert taken.new_state is not None
    assert refund(spec, taken.new_state, cost=2, now_us=0) is None  # full again
    once = evaluate(spec, taken.new_state, cost=1, now_us=0)
    assert once.new_state is not None
    back = refund(spec, once.new_state, cost=1, now_us=0)
    assert back == taken.new_state


def test_ttl_is_about_the_time_to_refill_fully() -> None:
    spec = BucketSpec(interval_us=50_000, capacity=40)
    state = EMPTY_STATE
    for _ in range(40):
        verdict = evaluate(spec, state, cost=1, now_us=1_000_000)
        assert verdict.new_state is not None
        state = verdict.new_state
    assert ttl_ms(state, 1_000_000) == 2_001  # 40 tokens at 20/s, plus a millisecond


@pytest.mark.parametrize(
    ("reset_now_us", "need", "expected"), [(0, 1, 0.0), (100_000, 1, 50_000.0)]
)
def test_retry_after(reset_now_us: int, need: int, expected: float) -> None:
    spec = BucketSpec(interval_us=50_000, capacity=2)
    assert retry_after_us(spec, reset_now_us=reset_now_us, need=need) == expected
