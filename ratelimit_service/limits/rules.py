"""The compiled rule tree and descriptor matching, pure.

Matching follows envoyproxy/ratelimit (`config_impl.go` GetLimit): walk the request
descriptor's entries level by level; at each level try, in order, the exact `key_value`,
then the wildcard values of that level in config order, then the key alone (the default
for any value). The limit applies only if the walk reaches the descriptor's *last* entry
on a node that has one; a request with more entries than the config is deep gets no limit.

Every request value keeps its own bucket (the bucket key is built from the request's
entries), except under `share_threshold`, where all values matched by one wildcard share
the bucket of the pattern.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ratelimit_service.limits.bucket import BucketSpec

# Seconds per unit. A token bucket spreads a month or a year evenly, so these are fixed
# lengths (30 and 365 days), not calendar periods as in the reference's fixed windows.
UNIT_SECONDS: Mapping[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 604_800,
    "month": 30 * 86_400,
    "year": 365 * 86_400,
}

MatchKind = Literal["exact", "wildcard", "key"]

# The spec of limits that never reach a bucket (unlimited, or 0 per unit).
NO_BUCKET = BucketSpec(interval_us=1.0, capacity=0)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one descriptor node, ready for the hot path."""

    rule_id: str  # the name, or "<domain>.<path>" (+ "[i]" for the i-th of several limits)
    name: str
    requests_per_unit: int
    unit: str
    unit_multiplier: int = 1
    burst: int = 0
    shadow: bool = False
    unlimited: bool = False
    replaces: frozenset[str] = frozenset()
    tag: str = ""  # distinguishes the buckets of several limits on one node
    # Precomputed for the hot path; a placeholder for limits that never reach a bucket.
    spec: BucketSpec = NO_BUCKET

    @property
    def blocks_all(self) -> bool:
        """`requests_per_unit: 0` is the reference's way to refuse every request."""
        return not self.unlimited and self.requests_per_unit == 0

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[self.unit] * self.unit_multiplier


def make_limit(
    *,
    rule_id: str,
    requests_per_unit: int,
    unit: str,
    name: str = "",
    unit_multiplier: int = 1,
    burst: int | None = None,
    shadow: bool = False,
    unlimited: bool = False,
    replaces: frozenset[str] = frozenset(),
    tag: str = "",
) -> Limit:
    """A Limit with the burst defaulted to `requests_per_unit` (a classic token bucket)."""
    capacity = requests_per_unit if burst is None else burst
    limit = Limit(
        rule_id=rule_id,
        name=name,
        requests_per_unit=requests_per_unit,
        unit=unit,
        unit_multiplier=unit_multiplier,
        burst=capacity,
        shadow=shadow,
        unlimited=unlimited,
        replaces=replaces,
        tag=tag or f"{unit_multiplier}{unit}",
    )
    if unlimited or requests_per_unit == 0:
        return limit
    interval = limit.window_seconds * 1_000_000 / requests_per_unit
    return dataclasses.replace(limit, spec=BucketSpec(interval_us=interval, capacity=capacity))


class Pattern:
    """A wildcard value: `*` matches any run of characters (trailing `*` = prefix match)."""

    __slots__ = ("_prefix", "_regex", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        head = text[:-1]
        self._prefix = head if text.endswith("*") and "*" not in head else None
        parts = (re.escape(p) for p in text.split("*"))
        self._regex = re.compile(".*".join(parts), re.DOTALL)

    def matches(self, value: str) -> bool:
        if self._prefix is not None:
            return value.startswith(self._prefix)
        return self._regex.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Node:
    key: str
    value: str | None  # None: matches the key with any value
    path: str  # "key_value.key2" as in the reference's stats keys
    limits: tuple[Limit, ...] = ()
    share_threshold: bool = False
    metadata: Mapping[str, Any] | None = None
    children: Level | None = None

    @property
    def applies(self) -> bool:
        return bool(self.limits)


@dataclass(frozen=True, slots=True)
class Level:
    """The descriptors configured at one depth, indexed for lookup."""

    exact: Mapping[tuple[str, str], Node] = field(default_factory=dict)
    wildcards: tuple[tuple[Pattern, Node], ...] = ()
    by_key: Mapping[str, Node] = field(default_factory=dict)

    def find(self, key: str, value: str) -> tuple[Node, MatchKind] | None:
        node = self.exact.get((key, value))
        if node is not None:
            return node, "exact"
        for pattern, candidate in self.wildcards:
            if candidate.key == key and pattern.matches(value):
                return candidate, "wildcard"
        node = self.by_key.get(key)
        return (node, "key") if node is not None else None


@dataclass(frozen=True, slots=True)
class Match:
    """A request descriptor resolved to a node with limits."""

    node: Node
    bucket_entries: tuple[tuple[str, str], ...]  # what the bucket key is built from
    kinds: tuple[MatchKind, ...]  # how each entry matched (for `explain`)


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    root: Level
    source: str  # the file it came from

    def match(self, entries: Sequence[tuple[str, str]]) -> Match | None:
        """The node whose limits apply to this descriptor, or None."""
        level: Level | None = self.root
        bucket: list[tuple[str, str]] = []
        kinds: list[MatchKind] = []
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            found = level.find(key, value) if level is not None else None
            if found is None:
                return None
            node, kind = found
            shared = kind == "wildcard" and node.share_threshold and node.value is not None
            bucket.append((key, node.value if shared and node.value is not None else value))
            kinds.append(kind)
            if i == last:
                return Match(node, tuple(bucket), tuple(kinds)) if node.applies else None
            level = node.children
        return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every domain, swapped as a whole on reload."""

    domains: Mapping[str, Domain]
    sources: tuple[str, ...] = ()

    def domain(self, name: str) -> Domain | None:
        return self.domains.get(name)
