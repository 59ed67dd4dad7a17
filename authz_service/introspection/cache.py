"""The bounded cache of introspection outcomes, keyed by a SHA-256 of the token.

The token itself is never stored (a heap dump or a debug print of the cache holds no
credential). An entry is either the Principal an active answer stood for, kept until
min(exp, now + max_cache_seconds), or the reason a token was refused, kept for
negative_cache_seconds. Least recently used entries go first when it is full, so a flood
of random tokens costs memory bounded by `max_entries`. Deadlines use the monotonic clock
(a wall-clock step cannot stretch them); `exp` itself is checked on the wall clock by the
verifier.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from authz_service.introspection.errors import Reason
from authz_service.principal import Principal
from sidecar_runtime.clock import Clock


def token_digest(token: str) -> str:
    """The cache key of a token: SHA-256, hex. Also safe to log as a correlation id."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Active:
    principal: Principal


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason


Outcome = Active | Refused


@dataclass(frozen=True, slots=True)
class _Entry:
    outcome: Outcome
    deadline: float  # monotonic


class IntrospectionCache:
    """LRU map digest -> Outcome with a per-entry deadline."""

    def __init__(self, *, max_entries: int, clock: Clock) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> Outcome | None:
        """The live outcome for `digest`, or None (absent or past its deadline)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock.monotonic() >= entry.deadline:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.outcome

    def put(self, digest: str, outcome: Outcome, *, seconds: float) -> None:
        """Keep `outcome` for `seconds` (nothing is kept for 0 or less)."""
        if seconds <= 0:
            self._entries.pop(digest, None)
            return
        self._entries[digest] = _Entry(outcome, self._clock.monotonic() + seconds)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
