"""The empty-bucket cache, on a fake clock."""

from __future__ import annotations

from ratelimit_service.empty_buckets import EmptyBucketCache
from sidecar_runtime.clock import ManualClock


def test_cache_remembers_until_the_next_token() -> None:
    clock = ManualClock()
    cache = EmptyBucketCache(max_entries=10, clock=clock)
    cache.mark("k", token_in=0.5, full_in=2.0)
    assert cache.empty_for("k") == (0.5, 2.0)
    clock.advance(0.25)
    assert cache.empty_for("k") == (0.25, 1.75)
    clock.advance(0.25)
    assert cache.empty_for("k") == (0.0, 0.0)
    assert len(cache) == 0  # expired entries are dropped when seen
    cache.mark("ignored", token_in=0.0, full_in=1.0)
    assert len(cache) == 0


def test_cache_is_bounded() -> None:
    cache = EmptyBucketCache(max_entries=3, clock=ManualClock())
    for i in range(10):
        cache.mark(f"k{i}", token_in=60, full_in=60)
    assert len(cache) == 3
    assert cache.empty_for("k0") == (0.0, 0.0)
    assert cache.empty_for("k9")[0] > 0
