"""The decision: from a plain request to a plain answer.

Synchronous and without I/O (`decide_now`), like h11: a request that needs the store
yields a `StoreRound` (its calls) instead of waiting; the caller makes the round trip
(awaited on the event loop, or handed to it from a worker thread of the `sync` stack) and
hands the outcomes to `finish`. `should_rate_limit` does both for an asyncio caller.

Per request: plan the bucket checks (rules, replaces, hits_addend, keys); answer what can
be answered locally (rules that block everything, costs above the burst, buckets the
empty-bucket cache knows are empty); otherwise ask the store once, all-or-nothing, through
the guard (timeout, breaker, cap on calls in flight). When the guard has no answer, the
configured failure mode answers. Then one status per descriptor, the overall code, the
retry-after, the denying rule, and a (rate-limited) log line for denials.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.empty_buckets import EmptyBucketCache
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec, Outcome, retry_after_us
from ratelimit_service.limits.planner import (
    MAX_UINT32,
    Check,
    Direct,
    Plan,
    Planner,
    Request,
    store_calls,
)
from ratelimit_service.limits.rules import Limit, RuleSet
from ratelimit_service.store import BucketCall

FailureMode = Literal["fail_open", "fail_closed"]


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


@dataclass(frozen=True, slots=True)
class Decision:
    code: Code
    statuses: tuple[Status, ...]
    retry_after_s: int = 0  # set on OVER_LIMIT
    rule: str = ""  # the denying rule, or the would-be denying one under shadow mode
    reason: str = "ok"  # ok | over_limit | shadow_over_limit | store_failure
    metadata: Mapping[str, Any] | None = None


@dataclass
class Stats:
    requests: int = 0
    over_limit: int = 0
    shadow_over_limit: int = 0
    cache_hits: int = 0
    over_limit_by_rule: Counter[str] = field(default_factory=Counter)
    shadow_by_rule: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class StoreRound:
    """A decision waiting for its one store round trip: `calls`, all-or-nothing, through
    the guard; `RateLimitService.finish` takes their outcomes. Either the plan's direct
    path (`direct`), or the general one (`results` known locally, `needs` pairing each
    check still open with its call)."""

    calls: Sequence[BucketCall]
    request: Request
    plan: Plan
    direct: Direct | None
    results: list[_Result | None] | None = None
    needs: tuple[tuple[int, int], ...] = ()


@dataclass(slots=True)
class _Result:
    check: Check
    outcome: Outcome
    retry_us: float = 0.0

    @property
    def denied(self) -> bool:
        return not self.outcome.allowed


class RateLimitService:
    def __init__(
        self,
        rules: RuleSet,
        guard: GuardedStore,
        *,
        decisions: DecisionLog,
        failure_mode: FailureMode = "fail_open",
        key_prefix: str = "rl:",
        cache: EmptyBucketCache | None = None,
    ) -> None:
        self.guard = guard
        self._decisions = decisions
        self._failure_mode = failure_mode
        self._key_prefix = key_prefix
        self._cache = cache
        self._planner = self._planner_for(rules)
        self.stats = Stats()

    def _planner_for(self, rules: RuleSet) -> Planner:
        return Planner(rules, prefix=self._key_prefix, hash_tags=self.guard.store.hash_tags)

    @property
    def rules(self) -> RuleSet:
        return self._planner.rules

    @property
    def healthy(self) -> bool:
        return self.guard.healthy

    def swap_rules(self, rules: RuleSet) -> None:
        """Install a whole new rule set (reload), with a planner of its own (an empty plan
        cache); cached verdicts may no longer hold."""
        self._planner = self._planner_for(rules)
        if self._cache is not None:
            self._cache.clear()

    async def should_rate_limit(self, request: Request) -> Decision:
        """Decide one request, with its one store round trip (if it needs one) awaited
        through the guard."""
        step = self.decide_now(request)
        if isinstance(step, Decision):
            return step
        return self.finish(step, await self.guard.acquire(step.calls))

    def decide_now(self, request: Request) -> Decision | StoreRound:
        """The decision, when no store call is needed; else the store round trip it
        waits for (hand its outcomes to `finish`). No I/O."""
        self.stats.requests += 1
        the_plan = self._planner.plan(request)
        if the_plan is None:  # no rules for the domain
            return Decision(Code.OK, (NO_LIMIT,) * len(request.descriptors))
        direct = the_plan.direct
        if direct is not None and (self._cache is None or not self._cache.knows_any(direct.keys)):
            # The common case, the work precomputed in the plan: the store is asked at once.
            return StoreRound(direct.calls, request, the_plan, direct)
        if not the_plan.checks:
            return self._decide(request, the_plan, [])
        results: list[_Result | None] = [self._local(check) for check in the_plan.checks]
        if any(r is not None and r.denied and not r.check.limit.shadow for r in results):
            # All-or-nothing: nothing will be taken, so the store need not be asked. A
            # bucket not asked gets no status of its own (no current_limit): reporting it
            # with 0 remaining would make Envoy's x-ratelimit-* headers name it, not the
            # limit that denied.
            known = [r for r in results if r is not None]
            return self._decide(request, the_plan, known)
        calls, needs = store_calls(the_plan.checks, [r is None for r in results])
        if not calls:
            return self._decide(request, the_plan, [r for r in results if r is not None])
        # A list, not a tuple: the Redis store remembers packed commands of tuples (plans).
        return StoreRound(calls, request, the_plan, None, results, tuple(needs))

    def finish(self, step: StoreRound, outcomes: Sequence[Outcome] | None) -> Decision:
        """The decision from the store's outcomes for `step.calls` (None: the store gave
        no answer, and the failure mode answers)."""
        if outcomes is None:
            return self._failure_decision(step.request, step.plan)
        if step.direct is not None:
            return self._direct(step.request, step.plan, step.direct, outcomes)
        results = step.results
        assert results is not None  # a StoreRound is either direct or carries results
        for result_index, call_index in step.needs:
            results[result_index] = self._stored(
                step.plan.checks[result_index], outcomes[call_index]
            )
        return self._decide(step.request, step.plan, [r for r in results if r is not None])

    def _direct(
        self, request: Request, the_plan: Plan, direct: Direct, outcomes: Sequence[Outcome]
    ) -> Decision:
        """The common case: when every bucket admits the request the statuses come
        straight from the outcomes. Same decision as the general path (a test compares
        them); any denial goes through the general path's `_decide`."""
        checks = the_plan.checks
        call_of = direct.call_of
        for outcome in outcomes:
            if not outcome.allowed:
                results = [self._stored(c, outcomes[call_of[i]]) for i, c in enumerate(checks)]
                return self._decide(request, the_plan, results)
        if self._cache is not None:
            for call, outcome in zip(direct.calls, outcomes, strict=True):
                self._remember_if_empty(call.key, call.spec, outcome)
        statuses: list[Status] = []
        for index, mine in enumerate(direct.checks_of):
            if not mine:
                statuses.append(UNLIMITED if the_plan.unlimited[index] else NO_LIMIT)
                continue
            best = mine[0]
            closest = outcomes[call_of[best]]
            for other in mine[1:]:
                outcome = outcomes[call_of[other]]
                if outcome.remaining < closest.remaining:
                    best, closest = other, outcome
            statuses.append(
                Status(Code.OK, checks[best].limit, closest.remaining, closest.reset_us)
            )
        return Decision(Code.OK, tuple(statuses), metadata=direct.ok_metadata)

    def _local(self, check: Check) -> _Result | None:
        limit = check.limit
        window_us = limit.window_seconds * 1_000_000
        if limit.blocks_all or check.cost > limit.burst:
            return _Result(check, Outcome(False, 0, 0), float(window_us))
        if self._cache is not None:
            token_in, full_in = self._cache.empty_for(check.key)
            if token_in > 0:
                self.stats.cache_hits += 1
                reset = math.ceil(full_in * 1e6)
                retry = retry_after_us(limit.spec, reset_now_us=reset, need=max(check.cost, 1))
                return _Result(check, Outcome(False, 0, reset), retry)
        return None

    def _remember_if_empty(self, key: str, spec: BucketSpec, outcome: Outcome) -> None:
        """A bucket the store left without a whole token goes into the empty-bucket cache
        until its next token is due."""
        assert self._cache is not None
        token_in = outcome.reset_us + spec.interval_us - spec.tau_us
        if token_in > 0:
            self._cache.mark(key, token_in=token_in / 1e6, full_in=outcome.reset_us / 1e6)

    def _stored(self, check: Check, outcome: Outcome) -> _Result:
        spec = check.limit.spec
        if self._cache is not None:
            self._remember_if_empty(check.key, spec, outcome)
        if outcome.allowed:
            return _Result(check, outcome)
        retry = retry_after_us(spec, reset_now_us=outcome.reset_us, need=max(check.cost, 1))
        return _Result(check, outcome, retry)

    def _failure_decision(self, request: Request, the_plan: Plan) -> Decision:
        n = len(request.descriptors)
        if self._failure_mode == "fail_open":
            statuses = tuple(UNLIMITED if the_plan.unlimited[i] else NO_LIMIT for i in range(n))
            return Decision(Code.OK, statuses, reason="store_failure")
        first: dict[int, Limit] = {}
        for check in the_plan.checks:
            first.setdefault(check.index, check.limit)
        statuses = tuple(
            Status(Code.OVER_LIMIT, first[i]) if i in first else NO_LIMIT for i in range(n)
        )
        return Decision(Code.OVER_LIMIT, statuses, retry_after_s=1, reason="store_failure")

    def _decide(self, request: Request, the_plan: Plan, results: Sequence[_Result]) -> Decision:
        by_descriptor: dict[int, list[_Result]] = {}
        for result in results:
            by_descriptor.setdefault(result.check.index, []).append(result)
        statuses = []
        for i in range(len(request.descriptors)):
            mine = by_descriptor.get(i)
            if mine is None:
                statuses.append(UNLIMITED if the_plan.unlimited[i] else NO_LIMIT)
            else:
                statuses.append(_status(mine))
        denied = [r for r in results if r.denied and not r.check.limit.shadow]
        shadowed = [r for r in results if r.denied and r.check.limit.shadow]
        for r in shadowed:
            self.stats.shadow_by_rule[r.check.limit.rule_id] += 1
            self._log_denial(request, r, shadow=True)
        metadata = _metadata(the_plan, statuses)
        if denied:
            self.stats.over_limit += 1
            self.stats.over_limit_by_rule[denied[0].check.limit.rule_id] += 1
            retry = max(max(math.ceil(r.retry_us / 1e6) for r in denied), 1)
            for r in denied[:1]:
                self._log_denial(request, r, shadow=False, retry_after_s=retry)
            return Decision(
                Code.OVER_LIMIT,
                tuple(statuses),
                retry,
                denied[0].check.limit.rule_id,
                "over_limit",
                metadata,
            )
        if shadowed:
            self.stats.shadow_over_limit += 1
            return Decision(
                Code.OK,
                tuple(statuses),
                0,
                shadowed[0].check.limit.rule_id,
                "shadow_over_limit",
                metadata,
            )
        return Decision(Code.OK, tuple(statuses), metadata=metadata)

    def _log_denial(
        self, request: Request, result: _Result, *, shadow: bool, retry_after_s: int = 0
    ) -> None:
        self._decisions.over_limit(
            domain=request.domain,
            entries=request.descriptors[result.check.index].entries,
            rule=result.check.limit.rule_id,
            shadow=shadow,
            cost=result.check.cost,
            retry_after_s=retry_after_s,
        )


def _status(results: Sequence[_Result]) -> Status:
    for r in results:
        if r.denied and not r.check.limit.shadow:
            return Status(Code.OVER_LIMIT, r.check.limit, r.outcome.remaining, r.outcome.reset_us)
    closest = min(results, key=lambda r: r.outcome.remaining)
    return Status(Code.OK, closest.check.limit, closest.outcome.remaining, closest.outcome.reset_us)


def _metadata(the_plan: Plan, statuses: Sequence[Status]) -> Mapping[str, Any] | None:
    merged: dict[str, Any] = {}
    for match, status in zip(the_plan.matches, statuses, strict=True):
        if match is not None and match.node.metadata and status.code is Code.OK:
            merged.update(match.node.metadata)
    return merged or None
