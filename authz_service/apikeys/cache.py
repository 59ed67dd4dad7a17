"""KeyCache: the records the hot path read recently, bounded in size and in age.

Entries are KeyRecords (verification re-hashes the presented secret every time, ~2 us,
so no secret or verdict is cached). How old an entry may be depends on the invalidation
channel (authz_service.apikeys.events): while it is live, revoke and rotate evict the
key on every replica at once, and an entry lives `cache_seconds`; while it is down, or
not heard from within `LIVENESS_SECONDS`, only entries younger than `FALLBACK_SECONDS`
are used, so a revocation still holds within one second. When the channel comes (back)
up the whole cache is dropped: events may have been missed meanwhile.

Unknown key ids are remembered too (negative entries, for `negative_seconds`, in their
own smaller LRU), so a flood of random ids costs one Redis read per id and can neither
grow memory nor push real keys out.

A fetch that started before an eviction must not put back what the eviction removed:
callers take `generation()` before reading Redis and hand it to `put`, which drops the
record if anything was evicted or cleared since.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from authz_service.apikeys.records import KeyRecord
from sidecar_runtime.clock import Clock

# The channel counts as live if heard from (a message or a PING reply) this recently; the
# subscriber pings more often than that. LIVENESS + FALLBACK stays under one second.
LIVENESS_SECONDS = 0.5
FALLBACK_SECONDS = 0.45
_NEVER = float("-inf")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_entries: int = 10_000
    cache_seconds: float = 30.0
    max_negative_entries: int = 10_000
    negative_seconds: float = 5.0


class KeyCache:
    """Key id -> (record or "unknown", when read). Pure: time comes from `clock`."""

    def __init__(self, limits: CacheLimits, *, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        self._records: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._generation = 0
        self._heard = _NEVER

    def get(self, key_id: str) -> KeyRecord | Missing | None:
        """The cached record, None if the id is known to be unknown, MISSING to fetch."""
        now = self._clock.monotonic()
        entry = self._records.get(key_id)
        if entry is not None:
            if now - entry[1] < self._max_age(now):
                self._records.move_to_end(key_id)
                return entry[0]
            del self._records[key_id]
        read_at = self._unknown.get(key_id)
        if read_at is not None:
            if now - read_at < min(self._limits.negative_seconds, self._max_age(now)):
                return None
            del self._unknown[key_id]
        return MISSING

    def generation(self) -> int:
        """Take before a fetch, hand to `put`."""
        return self._generation

    def put(self, key_id: str, record: KeyRecord | None, *, generation: int) -> None:
        """Remember what Redis said about `key_id` (None: no such key), unless an
        eviction happened since `generation` was taken."""
        if generation != self._generation:
            return
        now = self._clock.monotonic()
        if record is None:
            _bounded_put(self._unknown, key_id, now, self._limits.max_negative_entries)
            self._records.pop(key_id, None)
        else:
            _bounded_put(self._records, key_id, (record, now), self._limits.max_entries)
            self._unknown.pop(key_id, None)

    def evict(self, key_id: str) -> None:
        """Forget one key (a revoke, rotate or create event)."""
        self._generation += 1
        self._records.pop(key_id, None)
        self._unknown.pop(key_id, None)

    def clear(self) -> None:
        self._generation += 1
        self._records.clear()
        self._unknown.clear()

    def channel_up(self) -> None:
        """The invalidation channel (re)subscribed: what is cached may have missed events."""
        self.clear()
        self.channel_heard()

    def channel_heard(self) -> None:
        """A message or a PING reply arrived on the invalidation channel."""
        self._heard = self._clock.monotonic()

    def channel_down(self) -> None:
        self._heard = _NEVER

    def channel_live(self) -> bool:
        return self._clock.monotonic() - self._heard < LIVENESS_SECONDS

    def __len__(self) -> int:
        return len(self._records)

    def unknown_count(self) -> int:
        return len(self._unknown)

    def _max_age(self, now: float) -> float:
        live = now - self._heard < LIVENESS_SECONDS
        return self._limits.cache_seconds if live else FALLBACK_SECONDS


class Missing:
    """The cache has nothing usable for the key id: fetch it."""

    __slots__ = ()


MISSING = Missing()


class LastUsedThrottle:
    """Whether to write a key's `last_used` now: at most once per `interval` per key in
    this process, remembering at most `max_keys` keys (least recently written dropped)."""

    def __init__(self, *, clock: Clock, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self._clock = clock
        self._interval = interval
        self._max_keys = max_keys
        self._written: OrderedDict[str, float] = OrderedDict()

    def due(self, key_id: str) -> bool:
        now = self._clock.monotonic()
        last = self._written.get(key_id)
        if last is not None and now - last < self._interval:
            return False
        _bounded_put(self._written, key_id, now, self._max_keys)
        return True


def _bounded_put(table: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)
