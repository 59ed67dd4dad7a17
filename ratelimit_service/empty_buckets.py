"""The empty-bucket cache: what keeps a flood on one bucket from reaching the store.

A pure structure over an injected clock's monotonic time, used from the event loop and
from the worker threads of the `sync` stack: each operation tolerates another thread's
(every entry is only a hint that a bucket is empty, so a lost one costs one store call).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence

from sidecar_runtime.clock import Clock


class EmptyBucketCache:
    """Buckets known to hold less than one token until a monotonic instant.

    A request that needs such a bucket is OVER_LIMIT without asking the store: under a
    flood, each hot key costs one store call per refill interval per process instead of
    one per request. Only an empty verdict from the store itself ever enters the cache,
    and other replicas can only drain a bucket further, so a cached answer is never more
    permissive than the store's. Bounded: the oldest entries go first.
    """

    def __init__(self, *, max_entries: int, clock: Clock) -> None:
        self._max = max_entries
        self._clock = clock
        # key -> (monotonic time of the next whole token, of a full bucket)
        self._until: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def empty_for(self, key: str) -> tuple[float, float]:
        """Seconds until the bucket has a token and until it is full; (0, 0) if the bucket
        is not known to be empty."""
        entry = self._until.get(key)
        if entry is None:
            return 0.0, 0.0
        now = self._clock.monotonic()
        if entry[0] <= now:
            self._until.pop(key, None)
            return 0.0, 0.0
        return entry[0] - now, entry[1] - now

    def knows_any(self, keys: Sequence[str]) -> bool:
        """Is any of these buckets in the cache (perhaps expired: `empty_for` tells)?"""
        until = self._until
        for key in keys:  # noqa: SIM110 - a loop, not any(): no generator per call
            if key in until:
                return True
        return False

    def mark(self, key: str, *, token_in: float, full_in: float) -> None:
        """Remember that `key` has no whole token for `token_in` seconds."""
        if token_in <= 0:
            return
        now = self._clock.monotonic()
        until = self._until
        until[key] = (now + token_in, now + max(full_in, token_in))
        with contextlib.suppress(KeyError):  # another thread may have dropped it meanwhile
            until.move_to_end(key)
            while len(until) > self._max:
                until.popitem(last=False)

    def clear(self) -> None:
        self._until.clear()
