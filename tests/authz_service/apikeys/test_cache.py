from __future__ import annotations

from authz_service.apikeys.cache import (
    FALLBACK_SECONDS,
    LIVENESS_SECONDS,
    MISSING,
    CacheLimits,
    KeyCache,
    LastUsedThrottle,
)
from authz_service.apikeys.records import KeyRecord
from sidecar_runtime.clock import ManualClock


def _record(key_id: str) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        prefix="eg_live",
        pepper_id="p1",
        digest="0" * 64,
        subject="svc",
        scopes=frozenset(),
        roles=frozenset(),
        tenant="",
        plan="",
        created=0.0,
        expires=1e12,
    )


def _live_cache(clock: ManualClock, **limits: float) -> KeyCache:
    cache = KeyCache(CacheLimits(**limits), clock=clock)  # type: ignore[arg-type]
    cache.channel_up()
    return cache


def _keep_alive(cache: KeyCache, clock: ManualClock, seconds: float) -> None:
    """Advance time with the channel heard from all along."""
    for _ in range(int(seconds / 0.1)):
        clock.advance(0.1)
        cache.channel_heard()


def test_an_entry_lives_cache_seconds_while_the_channel_is_live() -> None:
    clock = ManualClock()
    cache = _live_cache(clock, cache_seconds=30.0)
    cache.put("a", _record("a"), generation=cache.generation())
    _keep_alive(cache, clock, 29.5)
    assert cache.get("a") == _record("a")
    _keep_alive(cache, clock, 1.0)
    assert cache.get("a") is MISSING


def test_without_the_channel_entries_are_reread_within_one_second() -> None:
    clock = ManualClock()
    cache = KeyCache(CacheLimits(), clock=clock)  # never subscribed
    cache.put("a", _record("a"), generation=cache.generation())
    assert cache.get("a") is not MISSING
    clock.advance(FALLBACK_SECONDS)
    assert cache.get("a") is MISSING


def test_a_silent_channel_counts_as_down() -> None:
    clock = ManualClock()
    cache = _live_cache(clock)
    cache.put("a", _record("a"), generation=cache.generation())
    clock.advance(LIVENESS_SECONDS)  # no PING reply since
    assert not cache.channel_live()
    assert cache.get("a") is MISSING
    assert LIVENESS_SECONDS + FALLBACK_SECONDS < 1.0


def test_channel_up_drops_everything_cached_before() -> None:
    clock = ManualClock()
    cache = _live_cache(clock)
    cache.put("a", _record("a"), generation=cache.generation())
    cache.channel_down()
    cache.channel_up()
    assert cache.get("a") is MISSING


def test_evict_forgets_a_key_and_a_fetch_from_before_it_is_not_cached() -> None:
    clock = ManualClock()
    cache = _live_cache(clock)
    cache.put("a", _record("a"), generation=cache.generation())
    before = cache.generation()
    cache.evict("a")
    assert cache.get("a") is MISSING
    cache.put("a", _record("a"), generation=before)  # read before the revoke landed
    assert cache.get("a") is MISSING


def test_positive_entries_are_bounded_least_recently_used_first() -> None:
    clock = ManualClock()
    cache = _live_cache(clock, max_entries=3)
    for key_id in "abc":
        cache.put(key_id, _record(key_id), generation=cache.generation())
    assert cache.get("a") is not MISSING  # a is now the most recent
    cache.put("d", _record("d"), generation=cache.generation())
    assert len(cache) == 3
    assert cache.get("b") is MISSING
    assert cache.get("a") is not MISSING


def test_unknown_ids_are_remembered_briefly_and_boundedly() -> None:
    clock = ManualClock()
    cache = _live_cache(clock, max_negative_entries=100, negative_seconds=5.0)
    cache.put("real", _record("real"), generation=cache.generation())
    for n in range(10_000):  # a flood of random ids
        cache.put(f"guess{n}", None, generation=cache.generation())
    assert cache.unknown_count() == 100
    assert cache.get("guess9999") is None
    assert cache.get("real") is not MISSING  # not pushed out by the flood
    _keep_alive(cache, clock, 5.0)
    assert cache.get("guess9999") is MISSING


def test_a_created_key_replaces_its_negative_entry_on_the_event() -> None:
    clock = ManualClock()
    cache = _live_cache(clock)
    cache.put("a", None, generation=cache.generation())
    cache.evict("a")  # the create event
    assert cache.get("a") is MISSING


def test_last_used_is_due_once_a_minute_per_key_and_bounded() -> None:
    clock = ManualClock()
    throttle = LastUsedThrottle(clock=clock, interval=60.0, max_keys=2)
    assert throttle.due("a")
    assert not throttle.due("a")
    clock.advance(59)
    assert not throttle.due("a")
    clock.advance(1)
    assert throttle.due("a")
    assert throttle.due("b")
    assert throttle.due("c")  # a is dropped: at worst one extra write, never unbounded
    assert throttle.due("a")
