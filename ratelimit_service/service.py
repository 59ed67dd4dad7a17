"""The rate-limit service: from a plain request to a plain answer, with its one store
round trip.

Synchronous and without I/O (`decide_now`), like h11: a request that needs the store
yields a `StoreRound` (its calls) instead of waiting; the caller makes the round trip
(awaited on the event loop, or from a worker thread of the `sync` stack) and hands the
outcomes to `finish`. `should_rate_limit` does both for an asyncio caller.

Per request: the plan (rules, replaces, hits_addend, keys; cached per request); the local
answers (a rule that refuses everything, a cost above the burst, a bucket the empty-bucket
cache knows is empty); when they do not already deny the request, one all-or-nothing
store round trip for the other checks, through the guard (timeout, breakers, cap on calls
in flight). Every check then has a result, and `decision.decide` (pure) makes the answer;
the failure mode stands in for a bucket the store could not answer for. Then counters, the
reference's per-descriptor stats, and a (rate-limited) log line for denials.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ratelimit_service.decision import (
    NO_LIMIT,
    CheckResult,
    Code,
    Decision,
    FailureMode,
    decide,
    failed,
    in_shadow,
    request_denied,
)
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.empty_buckets import EmptyBucketCache
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec, CallMode, Outcome, retry_after_us
from ratelimit_service.limits.planner import Check, Plan, Planner, Request, store_calls
from ratelimit_service.limits.rules import RuleSet
from ratelimit_service.store import BucketCall

if TYPE_CHECKING:
    from ratelimit_service.descriptor_stats import DescriptorStats

# What the guard answers for one round trip: None when the store gave no answer at all;
# else one entry per call, None where that call's node failed (Redis Cluster).
StoreAnswer = Sequence[Outcome | None] | None


@dataclass
class Stats:
    requests: int = 0
    over_limit: int = 0
    shadow_over_limit: int = 0
    cache_hits: int = 0
    quota_over_limit: int = 0
    global_shadow_mode: int = 0  # OVER_LIMIT answered OK by the global shadow mode
    over_limit_by_rule: Counter[str] = field(default_factory=Counter)
    shadow_by_rule: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class StoreRound:
    """A decision waiting for its one store round trip: `calls`, all-or-nothing, through
    the guard; `RateLimitService.finish` takes their outcomes. `local` holds the checks
    answered without the store; `call_of` pairs every other check with its call."""

    calls: Sequence[BucketCall]
    request: Request
    plan: Plan
    local: tuple[CheckResult, ...]
    asked: tuple[Check, ...]
    call_of: tuple[int, ...]


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
        descriptor_stats: DescriptorStats | None = None,
        global_shadow_mode: bool = False,
        global_quota_mode: bool = False,
    ) -> None:
        self.guard = guard
        self._decisions = decisions
        self._failure_mode: FailureMode = failure_mode
        self._key_prefix = key_prefix
        self._cache = cache
        self._descriptor_stats = descriptor_stats
        self._global_shadow = global_shadow_mode
        self._global_quota = global_quota_mode
        self._planner = self._planner_for(rules)
        self.stats = Stats()

    def _planner_for(self, rules: RuleSet) -> Planner:
        return Planner(
            rules,
            prefix=self._key_prefix,
            hash_tags=self.guard.store.hash_tags,
            all_quota=self._global_quota,
        )

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
            if self._descriptor_stats is not None:
                self._descriptor_stats.domain_not_found(request.domain)
            return Decision(Code.OK, (NO_LIMIT,) * len(request.descriptors))
        checks = the_plan.checks
        if not checks:
            return self._decided(request, the_plan, ())
        cache = self._cache
        if the_plan.store_ready and (cache is None or not cache.knows_any(the_plan.keys)):
            # The common case: every check asks the store, with the plan's own calls.
            return StoreRound(the_plan.calls, request, the_plan, (), checks, the_plan.call_of)
        local: list[CheckResult] = []
        asked: list[Check] = []
        for check in checks:
            result = self._local(check)
            if result is None:
                asked.append(check)
            else:
                local.append(result)
        # The checks still to ask count as admitting: only a denial that holds whatever
        # they answer spares the store.
        if not asked or request_denied([*local, *(CheckResult(c, None) for c in asked)]):
            # All-or-nothing: a request the local answers deny takes nothing, so the store
            # is not asked. A check not asked gets no status of its own (reporting it with
            # 0 remaining would make Envoy's x-ratelimit-* headers name it, not the limit
            # that denied).
            return self._decided(request, the_plan, local)
        calls, call_of = store_calls(asked)
        return StoreRound(calls, request, the_plan, tuple(local), tuple(asked), tuple(call_of))

    def finish(self, step: StoreRound, outcomes: StoreAnswer) -> Decision:
        """The decision from the store's outcomes for `step.calls` (None, or a None entry:
        no answer, and the failure mode answers for those buckets)."""
        results = list(step.local)
        if outcomes is None:
            results += [failed(check, self._failure_mode) for check in step.asked]
            return self._decided(step.request, step.plan, results)
        if self._cache is not None:
            for call, outcome in zip(step.calls, outcomes, strict=True):
                if outcome is not None:
                    self._remember_if_empty(call.key, call.spec, outcome)
        for check, at in zip(step.asked, step.call_of, strict=True):
            outcome = outcomes[at]
            if outcome is None:
                results.append(failed(check, self._failure_mode))
            elif outcome.allowed:
                results.append(CheckResult(check, outcome))
            else:
                need = max(check.cost, 1)
                retry = retry_after_us(check.limit.spec, reset_now_us=outcome.reset_us, need=need)
                results.append(CheckResult(check, outcome, retry))
        return self._decided(step.request, step.plan, results)

    def _local(self, check: Check) -> CheckResult | None:
        limit = check.limit
        if check.answered_locally:
            window_us = limit.window_seconds * 1_000_000
            return CheckResult(check, Outcome(False, 0, 0), float(window_us))
        if self._cache is not None:
            token_in, full_in = self._cache.empty_for(check.key)
            if token_in > 0:
                self.stats.cache_hits += 1
                reset = math.ceil(full_in * 1e6)
                retry = retry_after_us(limit.spec, reset_now_us=reset, need=max(check.cost, 1))
                return CheckResult(check, Outcome(False, 0, reset), retry, local=True)
        return None

    def _remember_if_empty(self, key: str, spec: BucketSpec, outcome: Outcome) -> None:
        """A bucket the store left without a whole token goes into the empty-bucket cache
        until its next token is due."""
        assert self._cache is not None
        token_in = outcome.reset_us + spec.interval_us - spec.tau_us
        if token_in > 0:
            self._cache.mark(key, token_in=token_in / 1e6, full_in=outcome.reset_us / 1e6)

    def _decided(
        self, request: Request, the_plan: Plan, results: Sequence[CheckResult]
    ) -> Decision:
        """`decide`, then the global shadow mode, counters, stats and log lines."""
        decision = decide(len(request.descriptors), the_plan, results)
        if decision.code is Code.OVER_LIMIT and self._global_shadow:
            self.stats.global_shadow_mode += 1
            decision = in_shadow(decision)
        if self._descriptor_stats is not None:
            self._record(self._descriptor_stats, results)
        self._count(request, decision)
        return decision

    def _count(self, request: Request, decision: Decision) -> None:
        stats = self.stats
        for shadowed in decision.shadowed:
            stats.shadow_by_rule[shadowed.check.limit.rule_id] += 1
            self._log_denial(request, shadowed, shadow=True)
        reason = decision.reason
        if reason == "over_limit":
            stats.over_limit += 1
            stats.over_limit_by_rule[decision.rule] += 1
            if decision.denied_by is not None:
                self._log_denial(
                    request,
                    decision.denied_by,
                    shadow=False,
                    retry_after_s=decision.retry_after_s,
                )
        elif reason == "shadow_over_limit":
            stats.shadow_over_limit += 1
        elif reason == "quota_over_limit":
            stats.quota_over_limit += 1

    @staticmethod
    def _record(into: DescriptorStats, results: Sequence[CheckResult]) -> None:
        """The reference's per-descriptor counters, for every check the store or a local
        answer decided (a bucket the store could not answer for is not counted)."""
        for result in results:
            outcome = result.outcome
            if outcome is None or result.failed:
                continue
            check = result.check
            into.record(
                check.stat_key,
                check.stat_base_key,
                hits=check.cost,
                capacity=check.limit.burst,
                remaining=outcome.remaining,
                allowed=outcome.allowed,
                shadow=check.mode is CallMode.SHADOW,
                local=result.local,
            )

    def _log_denial(
        self, request: Request, result: CheckResult, *, shadow: bool, retry_after_s: int = 0
    ) -> None:
        self._decisions.over_limit(
            domain=request.domain,
            entries=request.descriptors[result.check.index].entries,
            rule=result.check.limit.rule_id,
            shadow=shadow,
            cost=result.check.cost,
            retry_after_s=retry_after_s,
        )
