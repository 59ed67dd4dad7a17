"""The rate-limit decision, pure: a request's plan and one result per bucket check in, the
answer out. No I/O, no clock, no store.

Every check gets a result before `decide` runs, wherever its answer came from: the store
(an `Outcome`), a local answer (a rule that refuses everything, a cost above the burst, a
bucket the empty-bucket cache knows is empty: a denying `Outcome` made on the spot), or
nothing (`outcome=None`: the store gave no answer for that bucket, and the failure mode
speaks for it). There is one way to turn results into an answer:

- fail_open: a bucket with no answer is as if unchecked; fail_closed: it denies, and
  the request is retried after a second.
- The request is OVER_LIMIT when an enforced check denied, or when the request has checks
  in quota mode and every one of them denied (envoyproxy/ratelimit's quota mode: a quota
  limit alone over its budget only marks its descriptor). A shadow-mode check never denies
  the request; its denial is reported as `shadow_over_limit`.
- One status per descriptor: the first of its checks that denied (shadow mode aside), else
  the one closest to its limit, so Envoy's x-ratelimit-* headers name the binding limit.
- retry-after: the longest wait among the checks that made the request OVER_LIMIT.
- Dynamic metadata: the `metadata` of every descriptor that passed, merged in order.

The same rule decides what a store commits (limits.bucket.must_commit), so a request
denied here took no token anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, Literal

from ratelimit_service.limits.bucket import CallMode, Outcome, Vote, failed_vote, must_commit
from ratelimit_service.limits.planner import MAX_UINT32, Check, Plan
from ratelimit_service.limits.rules import Limit

FailureMode = Literal["fail_open", "fail_closed"]

# How long a client told to retry after a store failure (fail_closed) waits.
FAILURE_RETRY_US = 1_000_000.0


class Code(IntEnum):
    """Same numbers as envoy.service.ratelimit.v3.RateLimitResponse.Code."""

    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class Status:
    """One descriptor's answer: the limit closest to (or over) its edge."""

    code: Code
    limit: Limit | None = None
    remaining: int = 0
    reset_us: int = 0


NO_LIMIT = Status(Code.OK)
UNLIMITED = Status(Code.OK, None, MAX_UINT32, 0)

# ok | over_limit | shadow_over_limit | quota_over_limit | store_failure
Reason = str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's answer: `outcome` None when the store gave none for its bucket."""

    check: Check
    outcome: Outcome | None
    retry_us: float = 0.0  # when a denied check's bucket could take its cost
    local: bool = False  # answered by the empty-bucket cache, not the store
    failed: bool = False  # the store gave no answer; the failure mode made this one

    @property
    def denied(self) -> bool:
        return self.outcome is not None and not self.outcome.allowed


@dataclass(frozen=True, slots=True)
class Decision:
    code: Code
    statuses: tuple[Status, ...]
    retry_after_s: int = 0  # set on OVER_LIMIT
    rule: str = ""  # the denying rule, or the would-be denying one under shadow or quota mode
    reason: Reason = "ok"
    metadata: Mapping[str, Any] | None = None
    # For logs and counters: the check that denied (or would have, under shadow mode).
    denied_by: CheckResult | None = None
    shadowed: tuple[CheckResult, ...] = ()


def failed(check: Check, failure_mode: FailureMode) -> CheckResult:
    """The result of a check whose bucket the store could not answer for: nothing under
    fail_open; under fail_closed a denial with the mode the stores' commit rule gives it
    (limits.bucket.failed_vote: enforced, even for a shadow or quota limit)."""
    vote = failed_vote(check.mode, fail_open=failure_mode == "fail_open")
    if vote.allowed:
        return CheckResult(check, None, failed=True)
    if vote.mode is not check.mode:
        check = replace(check, mode=vote.mode)
    return CheckResult(check, Outcome(False, 0, 0), FAILURE_RETRY_US, failed=True)


def request_denied(results: Sequence[CheckResult]) -> bool:
    """The stores' commit rule (limits.bucket.must_commit), negated, over results: an
    enforced check denied, or every quota check did. A check with no outcome (not asked
    yet, or failed under fail_open) counts as admitting."""
    votes = [Vote(r.outcome is None or r.outcome.allowed, r.check.mode) for r in results]
    return not must_commit(votes, votes)


def decide(request_size: int, plan: Plan, results: Sequence[CheckResult]) -> Decision:
    """The answer for a request of `request_size` descriptors, from one result per check
    that has one (a check left out was not asked: its status is its descriptor's
    default)."""
    statuses = _statuses(request_size, plan, results)
    metadata = _metadata(plan, statuses)
    if all(r.outcome is None or r.outcome.allowed for r in results) and not any(
        r.failed for r in results
    ):
        return Decision(Code.OK, statuses, metadata=metadata)  # the common answer
    shadowed = tuple(r for r in results if r.denied and r.check.mode is CallMode.SHADOW)
    if request_denied(results):
        binding = [r for r in results if r.denied and r.check.mode is not CallMode.SHADOW]
        first = next((r for r in binding if not r.failed), binding[0])
        retry = max(max(math.ceil(r.retry_us / 1e6) for r in binding), 1)
        real = not first.failed
        return Decision(
            Code.OVER_LIMIT,
            statuses,
            retry,
            first.check.limit.rule_id if real else "",
            "over_limit" if real else "store_failure",
            metadata,
            first if real else None,
            shadowed,
        )
    if any(r.failed for r in results):
        return Decision(Code.OK, statuses, reason="store_failure", metadata=metadata)
    if shadowed:
        rule = shadowed[0].check.limit.rule_id
        return Decision(Code.OK, statuses, 0, rule, "shadow_over_limit", metadata, None, shadowed)
    quota = next((r for r in results if r.denied and r.check.mode is CallMode.QUOTA), None)
    if quota is not None:
        rule = quota.check.limit.rule_id
        return Decision(Code.OK, statuses, 0, rule, "quota_over_limit", metadata, quota)
    return Decision(Code.OK, statuses, metadata=metadata)


def in_shadow(decision: Decision) -> Decision:
    """An OVER_LIMIT decision answered OK (the global shadow mode), its statuses kept."""
    return Decision(
        Code.OK,
        decision.statuses,
        0,
        decision.rule,
        "shadow_over_limit",
        decision.metadata,
        None,
        (*decision.shadowed, *((decision.denied_by,) if decision.denied_by else ())),
    )


def _statuses(request_size: int, plan: Plan, results: Sequence[CheckResult]) -> tuple[Status, ...]:
    """Per descriptor: the first of its checks that denied (shadow mode aside), else the
    one with the fewest tokens left (the first of equals); the default without one."""
    chosen: list[CheckResult | None] = [None] * request_size
    over = [False] * request_size
    fewest = [0] * request_size  # tokens left at the chosen check
    for r in results:
        outcome = r.outcome
        index = r.check.index
        if outcome is None or over[index]:
            continue
        if not outcome.allowed and r.check.mode is not CallMode.SHADOW:
            chosen[index], over[index] = r, True
            continue
        if chosen[index] is None or outcome.remaining < fewest[index]:
            chosen[index], fewest[index] = r, outcome.remaining
    return tuple(
        _status(r, over[i]) if r is not None else (UNLIMITED if plan.unlimited[i] else NO_LIMIT)
        for i, r in enumerate(chosen)
    )


def _status(result: CheckResult, over: bool) -> Status:
    outcome = result.outcome
    assert outcome is not None  # only answered checks are chosen
    code = Code.OVER_LIMIT if over else Code.OK
    return Status(code, result.check.limit, outcome.remaining, outcome.reset_us)


def _metadata(plan: Plan, statuses: Sequence[Status]) -> Mapping[str, Any] | None:
    merged: dict[str, Any] = {}
    for match, status in zip(plan.matches, statuses, strict=True):
        if match is not None and match.node.metadata and status.code is Code.OK:
            merged.update(match.node.metadata)
    return merged or None
