"""The compiled rule tree and descriptor matching, pure.

Matching follows envoyproxy/ratelimit (`config_impl.go` GetLimit). A configured
descriptor's *composite key* is its `key`, or `key_value` when it has a value. Walk the
request descriptor's entries level by level; at each level try, in order, the composite
`key_value` of the entry, then the level's wildcard composites (any containing `*`) in
config order, then the entry's key alone (the default for any value). The limit applies
only if the walk reaches the descriptor's *last* entry on a node that has one; a request
with more entries than the config is deep gets no limit.

Every request value keeps its own bucket (the bucket key is built from the request's
entries), except under `share_threshold`, where all values matched by one wildcard share
the bucket of the pattern.

A descriptor in `quota_mode` carries `Limit.quota`: over its limit, it denies the request
only when every quota descriptor of the request is over too (the decision is the
service's). Each match also carries the reference's stats keys (`Match.stat_key` and
`stat_base_key`) for its per-descriptor counters; `override_stat_key` gives the key of a
limit Envoy sends in the descriptor.
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
    # The descriptor's `quota_mode`: over this limit, the request is denied only when
    # every quota descriptor of the request is over too (the service decides).
    quota: bool = False
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
    quota: bool = False,
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
        quota=quota,
        tag=tag or f"{unit_multiplier}{unit}",
    )
    if unlimited or requests_per_unit == 0:
        return limit
    interval = limit.window_seconds * 1_000_000 / requests_per_unit
    return dataclasses.replace(limit, spec=BucketSpec(interval_us=interval, capacity=capacity))


class Pattern:
    """A wildcard: `*` matches any run of characters (a trailing `*` is a prefix match).

    The reference matches a level's wildcards against the request entry's composite
    `key_value`, so `text` is a composite key (`path_/api/*`)."""

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
    composite: str  # "key" or "key_value": what the reference indexes its level by
    path: str  # the composite keys from the root, "key_value.key2"
    stat_base_key: str  # "<domain>.<path>", sanitized: the node's stats key in the reference
    limits: tuple[Limit, ...] = ()
    share_threshold: bool = False
    detailed_metric: bool = False
    value_to_metric: bool = False
    metadata: Mapping[str, Any] | None = None
    children: Level | None = None

    @property
    def applies(self) -> bool:
        return bool(self.limits)


@dataclass(frozen=True, slots=True)
class Level:
    """The descriptors configured at one depth, indexed for lookup."""

    nodes: Mapping[str, Node] = field(default_factory=dict)  # by composite key, wildcards too
    wildcards: tuple[tuple[Pattern, Node], ...] = ()  # composites with `*`, in file order

    def find(self, key: str, value: str) -> tuple[Node, MatchKind] | None:
        composite = f"{key}_{value}"
        node = self.nodes.get(composite)
        if node is not None:
            return node, "exact"
        for pattern, candidate in self.wildcards:
            if pattern.matches(composite):
                return candidate, "wildcard"
        node = self.nodes.get(key)
        return (node, "key") if node is not None else None


@dataclass(frozen=True, slots=True)
class Match:
    """A request descriptor resolved to a node with limits."""

    node: Node
    bucket_entries: tuple[tuple[str, str], ...]  # what the bucket key is built from
    kinds: tuple[MatchKind, ...]  # how each entry matched (for `explain`)
    # The key the reference counts this descriptor's hits under (GetLimit's FullKey), and
    # the node's own key from the config alone. They differ only when the first holds
    # request values (detailed_metric, value_to_metric), so a registry must bound those.
    stat_key: str = ""
    stat_base_key: str = ""


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    root: Level
    source: str  # the file it came from (files, comma-separated, for a merged domain)

    def match(self, entries: Sequence[tuple[str, str]]) -> Match | None:
        """The node whose limits apply to this descriptor, or None."""
        level: Level | None = self.root
        steps: list[tuple[Node, MatchKind]] = []
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            found = level.find(key, value) if level is not None else None
            if found is None:
                return None
            steps.append(found)
            if i == last:
                return _resolve(self.name, entries, steps) if found[0].applies else None
            level = found[0].children
        return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every domain, swapped as a whole on reload."""

    domains: Mapping[str, Domain]
    sources: tuple[str, ...] = ()

    def domain(self, name: str) -> Domain | None:
        return self.domains.get(name)


def _resolve(
    domain: str, entries: Sequence[tuple[str, str]], steps: Sequence[tuple[Node, MatchKind]]
) -> Match:
    pairs = list(zip(entries, steps, strict=True))
    shared = [_shared_value(key, node, kind) for (key, _), (node, kind) in pairs]
    bucket = tuple(
        (key, value if pattern is None else pattern)
        for (key, value), pattern in zip(entries, shared, strict=True)
    )
    leaf = steps[-1][0]
    if leaf.detailed_metric:
        path = _detailed_path(entries, shared)
    else:
        path = ".".join(
            _joined(key, _metric_value(key, value, *step)) for (key, value), step in pairs
        )
    # Equal paths mean no request value in the key: reuse the one sanitized at load.
    stat_key = leaf.stat_base_key if path == leaf.path else sanitize_stat_name(f"{domain}.{path}")
    return Match(leaf, bucket, tuple(kind for _, kind in steps), stat_key, leaf.stat_base_key)


def _pattern_value(key: str, node: Node) -> str:
    # GetLimit trims "<request key>_" off the matched wildcard's composite key.
    return node.composite.removeprefix(f"{key}_")


def _shared_value(key: str, node: Node, kind: MatchKind) -> str | None:
    """The value all of a share_threshold wildcard's matches share (bucket and stats)."""
    return _pattern_value(key, node) if kind == "wildcard" and node.share_threshold else None


def _metric_value(key: str, value: str, node: Node, kind: MatchKind) -> str:
    """What GetLimit writes after an entry's key in a stats key without detailed_metric:
    the request's value where it matched one configured or `value_to_metric` asks for it,
    a wildcard's pattern otherwise (share_threshold wins over value_to_metric)."""
    if kind == "wildcard":
        if node.value_to_metric and not node.share_threshold:
            return value
        return _pattern_value(key, node)
    if kind == "exact" or node.value_to_metric:
        return value
    return ""


def _detailed_path(entries: Sequence[tuple[str, str]], shared: Sequence[str | None]) -> str:
    """A detailed_metric leaf's stats path: every entry with the request's value, except
    share_threshold entries, which keep their pattern (the reference then also drops the
    `_` of an empty value, and keeps it otherwise)."""
    if all(pattern is None for pattern in shared):
        return ".".join(f"{key}_{value}" for key, value in entries)
    return ".".join(
        _joined(key, value if pattern is None else pattern)
        for (key, value), pattern in zip(entries, shared, strict=True)
    )


def _joined(key: str, value: str) -> str:
    return f"{key}_{value}" if value else key


def override_stat_key(domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """The stats key of a limit Envoy sent in the descriptor (the reference's
    descriptorKey): every entry as `key_value`, or `key` when the value is empty."""
    return sanitize_stat_name(f"{domain}." + ".".join(_joined(k, v) for k, v in entries))


# The reference's SanitizeStatName: `:` and `|` become `_`, and so do the dots of anything
# shaped like an IPv4 address (Go's `\d` is ASCII only, hence [0-9]).
_IPV4_LIKE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")


def sanitize_stat_name(name: str) -> str:
    """A stats key as the reference names its counters."""
    return _IPV4_LIKE.sub(_undotted, name.replace(":", "_").replace("|", "_"))


def _undotted(found: re.Match[str]) -> str:
    return found.group().replace(".", "_")
