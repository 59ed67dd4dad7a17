"""decision.decide, pure: results in, the answer out (no store, no clock)."""

from __future__ import annotations

import pytest

from ratelimit_service.decision import (
    NO_LIMIT,
    UNLIMITED,
    CheckResult,
    Code,
    decide,
    failed,
    in_shadow,
    request_denied,
)
from ratelimit_service.limits.bucket import CallMode, Outcome
from ratelimit_service.limits.planner import Check, Plan
from ratelimit_service.limits.rules import Limit, make_limit
from ratelimit_service.store import BucketCall
from ratelimit_service.stores.redis_cluster import global_commit

PER_SECOND = make_limit(
    rule_id="per-second", name="per-second", requests_per_unit=10, unit="second"
)
DAILY = make_limit(rule_id="daily", name="daily", requests_per_unit=1000, unit="day")


def check(index: int = 0, mode: CallMode = CallMode.ENFORCE, limit: Limit = PER_SECOND) -> Check:
    return Check(index, limit, f"rl:{index}:{limit.name}:{mode.name}", 1, mode)


def plan(size: int, unlimited: tuple[bool, ...] | None = None) -> Plan:
    return Plan((None,) * size, unlimited or (False,) * size, (), ())


def ok(remaining: int, reset_us: int = 100_000) -> Outcome:
    return Outcome(True, remaining, reset_us)


DENIED = Outcome(False, 0, 900_000)


def test_all_admitted_is_ok_with_the_closest_limit_per_descriptor() -> None:
    results = [
        CheckResult(check(0), ok(9)),
        CheckResult(check(0, limit=DAILY), ok(3)),
        CheckResult(check(1), ok(5)),
    ]
    decision = decide(3, plan(3, (False, False, True)), results)
    assert decision.code is Code.OK
    assert decision.reason == "ok"
    assert decision.statuses[0].limit is DAILY  # 3 left beats 9 left
    assert decision.statuses[1].remaining == 5
    assert decision.statuses[2] == UNLIMITED  # no check: the descriptor's default


def test_an_enforced_denial_denies_with_its_rule_and_retry() -> None:
    results = [
        CheckResult(check(0), ok(9)),
        CheckResult(check(1), DENIED, retry_us=2_300_000),
    ]
    decision = decide(2, plan(2), results)
    assert (decision.code, decision.reason, decision.rule) == (
        Code.OVER_LIMIT,
        "over_limit",
        "per-second",
    )
    assert decision.retry_after_s == 3  # rounded up
    assert [s.code for s in decision.statuses] == [Code.OK, Code.OVER_LIMIT]
    assert decision.denied_by is results[1]


def test_a_shadow_denial_passes_and_is_reported() -> None:
    shadow = CheckResult(check(0, CallMode.SHADOW), DENIED, retry_us=1)
    decision = decide(1, plan(1), [shadow])
    assert (decision.code, decision.reason, decision.rule) == (
        Code.OK,
        "shadow_over_limit",
        "per-second",
    )
    assert decision.shadowed == (shadow,)
    assert decision.statuses[0].code is Code.OK


@pytest.mark.parametrize(
    ("quota_outcomes", "denied"),
    [
        ([DENIED, ok(1)], False),  # one quota over: the request passes
        ([DENIED, DENIED], True),  # every quota over: denied
        ([ok(1)], False),
        ([DENIED], True),
    ],
)
def test_quota_mode_denies_only_when_every_quota_check_denies(
    quota_outcomes: list[Outcome], denied: bool
) -> None:
    results = [
        CheckResult(check(i, CallMode.QUOTA), outcome, retry_us=1e6)
        for i, outcome in enumerate(quota_outcomes)
    ]
    assert request_denied(results) is denied
    decision = decide(len(results), plan(len(results)), results)
    assert decision.code is (Code.OVER_LIMIT if denied else Code.OK)
    if not denied:
        assert decision.reason == ("quota_over_limit" if DENIED in quota_outcomes else "ok")


def test_a_quota_check_without_an_answer_counts_as_admitting_when_failing_open() -> None:
    results = [
        CheckResult(check(0, CallMode.QUOTA), DENIED),
        failed(check(1, CallMode.QUOTA), "fail_open"),
    ]
    assert not request_denied(results)
    decision = decide(2, plan(2), results)
    assert (decision.code, decision.reason) == (Code.OK, "store_failure")
    assert decision.statuses[1] == NO_LIMIT


def test_failing_closed_denies_without_a_rule_and_retries_after_a_second() -> None:
    decision = decide(1, plan(1), [failed(check(0), "fail_closed")])
    assert (decision.code, decision.reason, decision.rule, decision.retry_after_s) == (
        Code.OVER_LIMIT,
        "store_failure",
        "",
        1,
    )
    assert decision.denied_by is None


@pytest.mark.parametrize("mode", [CallMode.SHADOW, CallMode.QUOTA])
def test_failing_closed_denies_whatever_the_limit_s_mode_as_the_stores_commit(
    mode: CallMode,
) -> None:
    """The Cluster store counts a failed call as an enforced denial under fail_closed
    (limits.bucket.failed_vote) and refunds the other slots; the decision must agree, or
    an admitted request would have had its tokens given back."""
    decision = decide(
        2, plan(2), [CheckResult(check(0), ok(3)), failed(check(1, mode), "fail_closed")]
    )
    assert (decision.code, decision.reason) == (Code.OVER_LIMIT, "store_failure")
    assert decision.statuses[1].code is Code.OVER_LIMIT
    answered = Outcome(True, 3, 1)
    calls = [BucketCall("a", PER_SECOND.spec, 1), BucketCall("b", PER_SECOND.spec, 1, mode)]
    assert not global_commit(calls, [answered, None], fail_open=False)


def test_a_real_denial_is_named_before_a_failed_bucket() -> None:
    results = [failed(check(0), "fail_closed"), CheckResult(check(1), DENIED, retry_us=5e6)]
    decision = decide(2, plan(2), results)
    assert (decision.reason, decision.rule, decision.retry_after_s) == (
        "over_limit",
        "per-second",
        5,
    )


def test_in_shadow_answers_ok_keeping_the_statuses() -> None:
    denied = decide(1, plan(1), [CheckResult(check(0), DENIED, retry_us=1e6)])
    shadowed = in_shadow(denied)
    assert (shadowed.code, shadowed.reason, shadowed.rule) == (
        Code.OK,
        "shadow_over_limit",
        "per-second",
    )
    assert shadowed.statuses == denied.statuses
    assert shadowed.retry_after_s == 0
