"""Client-side pacing for the e2e suite against a stack it cannot reset (docs/testing.md).

A self-started stack gets full buckets before every test (a fresh source address, Redis
FLUSHALL). An external one may allow neither, so the client keeps token buckets of its own
that mirror the edge's (config/ratelimit/rules/edge.yaml), at `SHARE` of their rate and
burst: a client that never outruns them never empties one of the edge's buckets that
started full, so no test finds a bucket the one before it drained. The rest of the edge's
capacity is headroom for the few requests that do not go through the pacer (raw sockets,
nghttp, gRPC channels).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.stack import REPO

DEMO_RULES = REPO / "config" / "ratelimit" / "rules" / "edge.yaml"
SHARE = 0.75
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float

    @property
    def refill_seconds(self) -> float:
        """From empty to full."""
        return self.burst / self.rate


def rule_limits(path: Path = DEMO_RULES) -> dict[str, Limit]:
    """Every named, finite rate limit of an envoyproxy/ratelimit rules file, by name."""
    data = yaml.safe_load(path.read_text())
    return {
        rule["name"]: Limit(
            rate=rule["requests_per_unit"] / _UNIT_SECONDS[rule["unit"]],
            burst=rule.get("burst", rule["requests_per_unit"]),
        )
        for rule in _rate_limits(data.get("descriptors", []))
        if "name" in rule and not rule.get("unlimited")
    }


def _rate_limits(descriptors: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in descriptors:
        limits = node.get("rate_limit")
        yield from limits if isinstance(limits, list) else [limits] if limits else []
        yield from _rate_limits(node.get("descriptors", []))


class Pacer:
    """Token buckets keyed like the edge's; `acquire` waits until each has a token."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        *,
        share: float = SHARE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._limits = {n: Limit(lim.rate * share, lim.burst * share) for n, lim in limits.items()}
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def acquire(self, keys: Mapping[str, str]) -> None:
        """Take a token from each bucket `keys` names (bucket key -> rule name)."""
        with self._lock:  # held while waiting: paced requests go one after another
            while True:
                now = self._clock()
                tokens = {key: self._tokens(key, rule, now) for key, rule in keys.items()}
                short = [
                    (1 - left) / self._limits[keys[key]].rate
                    for key, left in tokens.items()
                    if left < 1
                ]
                if not short:
                    self._buckets.update({key: (left - 1, now) for key, left in tokens.items()})
                    return
                self._sleep(max(short))

    def refill(self) -> None:
        """Every bucket full: the edge's are known to be full again."""
        with self._lock:
            self._buckets.clear()

    def _tokens(self, key: str, rule: str, now: float) -> float:
        limit = self._limits[rule]
        left, when = self._buckets.get(key, (limit.burst, now))
        return min(limit.burst, left + (now - when) * limit.rate)
