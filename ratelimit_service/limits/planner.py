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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.limits.rules import UNIT_SECONDS, Domain, Limit, Match, RuleSet, make_limit
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


@dataclass(frozen=True, slots=True)
class Plan:
    matches: tuple[Match | None, ...]  # per descriptor (None: no rule, or an override)
    unlimited: tuple[bool, ...]  # per descriptor
    checks: tuple[Check, ...]
    replaced: tuple[Limit, ...]  # switched off by another limit's `replaces`
    # Worked out once per plan for the common case, so a cached plan costs the hot path
    # no per-request planning (see `Direct`).
    direct: Direct | None = None


@dataclass(frozen=True, slots=True)
class Direct:
    """What a plan needs when nothing about it can be answered without the store: every
    limit enforced (no shadow), none refusing everything, every cost within its burst.

    `calls` are the store calls (one per distinct bucket, costs added up), `call_of` the
    call each check reads, `checks_of` each descriptor's checks (by index), and
    `ok_metadata` the descriptors' metadata merged, as it is returned when all pass."""

    calls: tuple[BucketCall, ...]
    keys: tuple[str, ...]  # of `calls`, for the empty-bucket cache
    call_of: tuple[int, ...]
    checks_of: tuple[tuple[int, ...], ...]
    ok_metadata: Mapping[str, Any] | None


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


def plan(domain: Domain, request: Request, *, prefix: str, hash_tags: bool) -> Plan:
    """The checks a request needs, before any store is asked."""
    matches: list[Match | None] = []
    found: list[tuple[int, tuple[tuple[str, str], ...], tuple[Limit, ...]]] = []
    for index, descriptor in enumerate(request.descriptors):
        match: Match | None = None
        if descriptor.override is not None:
            limit = override_limit(domain.name, descriptor.override)
            limits: tuple[Limit, ...] = (limit,) if limit is not None else ()
            entries = descriptor.entries
        else:
            match = domain.match(descriptor.entries)
            limits = match.node.limits if match is not None else ()
            entries = match.bucket_entries if match is not None else ()
        matches.append(match)
        found.append((index, entries, limits))
    replacing = {name for _, _, limits in found for limit in limits for name in limit.replaces}
    checks: list[Check] = []
    replaced: list[Limit] = []
    unlimited = [False] * len(request.descriptors)
    for index, entries, limits in found:
        cost = cost_of(request, request.descriptors[index])
        for limit in limits:
            if limit.name and limit.name in replacing:
                replaced.append(limit)
            elif limit.unlimited:
                unlimited[index] = True
            else:
                key = bucket_key(prefix, domain.name, entries, limit.tag, hash_tag=hash_tags)
                checks.append(Check(index, limit, key, cost))
    return Plan(
        tuple(matches),
        tuple(unlimited),
        tuple(checks),
        tuple(replaced),
        _direct(matches, checks),
    )


def _direct(matches: list[Match | None], checks: list[Check]) -> Direct | None:
    if not checks:
        return None
    for check in checks:
        limit = check.limit
        if limit.shadow or limit.blocks_all or check.cost > limit.burst:
            return None
    calls, needs = store_calls(checks, [True] * len(checks))
    call_of = [call_index for _, call_index in needs]
    checks_of = tuple(
        tuple(i for i, check in enumerate(checks) if check.index == d) for d in range(len(matches))
    )
    merged: dict[str, Any] = {}
    for match in matches:
        if match is not None and match.node.metadata:
            merged.update(match.node.metadata)
    return Direct(
        tuple(calls),
        tuple(call.key for call in calls),
        tuple(call_of),
        checks_of,
        MappingProxyType(merged) if merged else None,
    )


def store_calls(
    checks: Sequence[Check], asks_store: Sequence[bool]
) -> tuple[list[BucketCall], list[tuple[int, int]]]:
    """The store calls for the checks that ask the store: one per distinct bucket, costs
    added up (a shadow limit's call does not enforce); and, per such check, (its index,
    its call's index)."""
    calls: list[BucketCall] = []
    slot: dict[str, int] = {}  # bucket key -> index in calls
    needs: list[tuple[int, int]] = []
    for index, check in enumerate(checks):
        if not asks_store[index]:
            continue
        at = slot.get(check.key)
        if at is None:
            at = slot[check.key] = len(calls)
            calls.append(
                BucketCall(check.key, check.limit.spec, check.cost, not check.limit.shadow)
            )
        else:
            prior = calls[at]
            calls[at] = BucketCall(prior.key, prior.spec, prior.cost + check.cost, prior.enforce)
        needs.append((index, at))
    return calls, needs


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
        self, rules: RuleSet, *, prefix: str, hash_tags: bool, max_plans: int = MAX_PLANS
    ) -> None:
        self.rules = rules
        self._prefix = prefix
        self._hash_tags = hash_tags
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
        fresh = plan(domain, request, prefix=self._prefix, hash_tags=self._hash_tags)
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
