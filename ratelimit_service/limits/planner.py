"""From a request to the bucket checks it needs, pure.

Resolves each descriptor to its limits (rule tree, or the request's own override),
applies `replaces` across the whole request as the reference does (a matched limit that
names another in `replaces` switches that one off for this request), works out each
descriptor's cost from `hits_addend`, and builds the bucket keys. `Planner` caches the
plans of requests that repeat (bounded, per rule set).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ratelimit_service.limits.bucket import CallMode
from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.limits.rules import (
    UNIT_SECONDS,
    Domain,
    Limit,
    Match,
    RuleSet,
    make_limit,
    override_stat_key,
)
from ratelimit_service.store import BucketCall

MAX_UINT32 = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Override:
    """A limit sent by Envoy in the descriptor itself (`RateLimitDescriptor.limit`)."""

    requests_per_unit: int
    unit: str  # "second" .. "year"


@dataclass(frozen=True, slots=True)
class DescriptorRequest:
    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None = None  # None: not set (falls back to the request's)
    override: Override | None = None


@dataclass(frozen=True, slots=True)
class Request:
    domain: str
    descriptors: tuple[DescriptorRequest, ...]
    hits_addend: int = 0
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # Remembered: the servicer hands the same Request back for bytes that repeat,
        # and the plan cache looks it up on every call.
        cached = self._hash
        if not cached:
            cached = hash((self.domain, self.descriptors, self.hits_addend)) or 1
            object.__setattr__(self, "_hash", cached)
        return cached


@dataclass(frozen=True, slots=True)
class Check:
    """One bucket to consult for one descriptor."""

    index: int  # of the descriptor in the request
    limit: Limit
    key: str
    cost: int
    mode: CallMode = CallMode.ENFORCE  # how a denial weighs (limits.bucket.must_commit)
    # The reference's counter key for this descriptor, and the same from the config alone
    # (they differ when request values are in it: detailed_metric, value_to_metric).
    stat_key: str = ""
    stat_base_key: str = ""

    @property
    def answered_locally(self) -> bool:
        """Denied without asking the store: the limit refuses everything (0 per unit), or
        the cost is more than the bucket can ever hold."""
        return self.limit.blocks_all or self.cost > self.limit.burst


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request needs, worked out once (and cached) so that a repeated request
    costs no planning: its checks, and the store calls for all of them (one per distinct
    bucket, costs added up; `call_of` gives each check's call). `store_ready` is False when
    some check is answered locally; then the calls are worked out per request."""

    matches: tuple[Match | None, ...]  # per descriptor (None: no rule, or an override)
    unlimited: tuple[bool, ...]  # per descriptor
    checks: tuple[Check, ...]
    replaced: tuple[Limit, ...]  # switched off by another limit's `replaces`
    calls: tuple[BucketCall, ...] = ()
    call_of: tuple[int, ...] = ()
    store_ready: bool = True
    keys: tuple[str, ...] = ()  # of `calls`, for the empty-bucket cache


def cost_of(request: Request, descriptor: DescriptorRequest) -> int:
    """hits_addend rules: a per-descriptor value wins, explicit 0 included (check only);
    otherwise the request's, where 0 (the proto default) means 1."""
    if descriptor.hits_addend is not None:
        return descriptor.hits_addend
    return max(request.hits_addend, 1)


def override_limit(domain: str, override: Override) -> Limit | None:
    if override.unit not in UNIT_SECONDS:
        return None
    return make_limit(
        rule_id=f"{domain}.override",
        requests_per_unit=override.requests_per_unit,
        unit=override.unit,
        tag=f"override:{override.requests_per_unit}/{override.unit}",
    )


def plan(
    domain: Domain, request: Request, *, prefix: str, hash_tags: bool, all_quota: bool = False
) -> Plan:
    """The checks a request needs, before any store is asked. `all_quota`: every limit in
    quota mode (the global quota mode)."""
    matches: list[Match | None] = []
    found: list[_Found] = []
    for index, descriptor in enumerate(request.descriptors):
        match: Match | None = None
        if descriptor.override is not None:
            limit = override_limit(domain.name, descriptor.override)
            stat_key = override_stat_key(domain.name, descriptor.entries)
            limits: tuple[Limit, ...] = (limit,) if limit is not None else ()
            found.append(_Found(index, descriptor.entries, limits, stat_key, stat_key))
        elif (match := domain.match(descriptor.entries)) is not None:
            found.append(
                _Found(
                    index,
                    match.bucket_entries,
                    match.node.limits,
                    match.stat_key,
                    match.stat_base_key,
                )
            )
        matches.append(match)
    replacing = {name for f in found for limit in f.limits for name in limit.replaces}
    checks: list[Check] = []
    replaced: list[Limit] = []
    unlimited = [False] * len(request.descriptors)
    for f in found:
        cost = cost_of(request, request.descriptors[f.index])
        for limit in f.limits:
            if limit.name and limit.name in replacing:
                replaced.append(limit)
            elif limit.unlimited:
                unlimited[f.index] = True
            else:
                key = bucket_key(prefix, domain.name, f.entries, limit.tag, hash_tag=hash_tags)
                mode = _mode(limit, all_quota=all_quota)
                checks.append(Check(f.index, limit, key, cost, mode, f.stat_key, f.stat_base_key))
    store_ready = not any(check.answered_locally for check in checks)
    calls, call_of = store_calls(checks) if store_ready else ((), ())
    return Plan(
        tuple(matches),
        tuple(unlimited),
        tuple(checks),
        tuple(replaced),
        tuple(calls),
        tuple(call_of),
        store_ready,
        tuple(call.key for call in calls),
    )


@dataclass(frozen=True, slots=True)
class _Found:
    """A descriptor's limits, before `replaces` is applied."""

    index: int
    entries: tuple[tuple[str, str], ...]  # what the bucket keys are built from
    limits: tuple[Limit, ...]
    stat_key: str
    stat_base_key: str


def _mode(limit: Limit, *, all_quota: bool) -> CallMode:
    # Shadow mode wins: the reference answers a shadow limit OK before quota mode counts it.
    if limit.shadow:
        return CallMode.SHADOW
    if limit.quota or all_quota:
        return CallMode.QUOTA
    return CallMode.ENFORCE


def store_calls(checks: Sequence[Check]) -> tuple[list[BucketCall], list[int]]:
    """The store calls for `checks`: one per distinct bucket, costs added up (checks of
    one bucket share its mode: the limit that made the key sets it); and, per check, the
    index of its call."""
    calls: list[BucketCall] = []
    slot: dict[str, int] = {}  # bucket key -> index in calls
    call_of: list[int] = []
    for check in checks:
        at = slot.get(check.key)
        if at is None:
            at = slot[check.key] = len(calls)
            calls.append(BucketCall(check.key, check.limit.spec, check.cost, check.mode))
        else:
            prior = calls[at]
            calls[at] = BucketCall(prior.key, prior.spec, prior.cost + check.cost, prior.mode)
        call_of.append(at)
    return calls, call_of


# A cached plan is kept only for requests this small, so the cache's memory is bounded by
# MAX_PLANS * MAX_CACHED_CHARS whatever clients send.
MAX_PLANS = 4096
MAX_CACHED_DESCRIPTORS = 8
MAX_CACHED_CHARS = 1024


class Planner:
    """The rules of one configuration, planning requests, with recent plans cached.

    Envoy sends the same descriptors call after call (one client address, one subject),
    and planning (rule match, length-prefixed and hashed bucket keys) is the same work
    each time. A plan depends only on the request and the rules, so it is cached in a
    bounded LRU keyed by the request; a reload builds a new Planner, and with it an empty
    cache. Requests too large to cache are planned every time.
    """

    def __init__(
        self,
        rules: RuleSet,
        *,
        prefix: str,
        hash_tags: bool,
        all_quota: bool = False,
        max_plans: int = MAX_PLANS,
    ) -> None:
        self.rules = rules
        self._prefix = prefix
        self._hash_tags = hash_tags
        self._all_quota = all_quota
        self._max_plans = max_plans
        self._plans: OrderedDict[Request, Plan] = OrderedDict()

    def __len__(self) -> int:
        return len(self._plans)

    def plan(self, request: Request) -> Plan | None:
        """The request's plan, or None when no rule file has its domain."""
        plans = self._plans
        cached = plans.get(request)
        if cached is not None:
            # Threads of the `sync` stack share the cache: another may have evicted the
            # entry since the get (KeyError), or emptied it (a plan is a plan either way).
            with contextlib.suppress(KeyError):
                plans.move_to_end(request)
            return cached
        domain = self.rules.domain(request.domain)
        if domain is None:
            return None
        fresh = plan(
            domain,
            request,
            prefix=self._prefix,
            hash_tags=self._hash_tags,
            all_quota=self._all_quota,
        )
        if _cacheable(request):
            plans[request] = fresh
            if len(plans) > self._max_plans:
                with contextlib.suppress(KeyError):
                    plans.popitem(last=False)
        return fresh


def _cacheable(request: Request) -> bool:
    if len(request.descriptors) > MAX_CACHED_DESCRIPTORS:
        return False
    chars = len(request.domain)
    for descriptor in request.descriptors:
        for key, value in descriptor.entries:
            chars += len(key) + len(value)
    return chars <= MAX_CACHED_CHARS
