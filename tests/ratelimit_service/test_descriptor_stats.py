"""The reference's per-descriptor counters: its base_limiter rules carried over to a token
bucket, the bound on keys holding request values, and exact counts from several threads."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator

import pytest

from ratelimit_service.descriptor_stats import (
    MAX_UNKNOWN_DOMAINS,
    OTHER_DOMAIN,
    DescriptorStats,
    KeyCounts,
    near_threshold,
)

KEY = "edge.remote_address"


def record(
    stats: DescriptorStats,
    *,
    hits: int = 1,
    capacity: int = 10,
    remaining: int,
    allowed: bool = True,
    shadow: bool = False,
    local: bool = False,
    key: str = KEY,
    base_key: str = KEY,
) -> None:
    stats.record(
        key,
        base_key,
        hits=hits,
        capacity=capacity,
        remaining=remaining,
        allowed=allowed,
        shadow=shadow,
        local=local,
    )


def counts(stats: DescriptorStats, key: str = KEY) -> KeyCounts:
    return stats.snapshot().by_key()[key]


def reference_admitted(*, before: int, hits: int, limit: int, ratio: float) -> KeyCounts:
    """The reference's counters for a request its fixed window admitted: `before` hits
    in the window already, `after = before + hits <= limit` (base_limiter.go, the OK
    branch: within_limit += hits; near_limit += the part of the hits past the threshold)."""
    after = before + hits
    assert after <= limit
    near = math.floor(limit * ratio)
    near_hits = 0
    if after > near:
        near_hits = hits if before >= near else after - near
    return KeyCounts(total_hits=hits, near_limit=near_hits, within_limit=hits)


# -- the counting rules ----------------------------------------------------------------


def test_an_allowed_take_far_from_the_limit_is_within_limit_only() -> None:
    stats = DescriptorStats()
    record(stats, hits=1, capacity=10, remaining=5)  # 5 used of 10; near at 8
    assert counts(stats) == KeyCounts(total_hits=1, within_limit=1)


def test_an_allowed_take_past_the_near_threshold_counts_near_limit() -> None:
    stats = DescriptorStats()
    record(stats, hits=1, capacity=10, remaining=1)  # 8 used before, 9 after: all near
    assert counts(stats) == KeyCounts(total_hits=1, near_limit=1, within_limit=1)


def test_a_take_crossing_the_near_threshold_counts_only_the_part_past_it() -> None:
    stats = DescriptorStats()
    record(stats, hits=3, capacity=10, remaining=0)  # 7 used before, 10 after: 2 past 8
    assert counts(stats) == KeyCounts(total_hits=3, near_limit=2, within_limit=3)


@pytest.mark.parametrize("limit", [1, 5, 10, 20, 40, 100])
@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9, 1.0])
def test_allowed_takes_count_as_the_reference_counts_an_admitted_window(
    limit: int, ratio: float
) -> None:
    for before in range(limit + 1):
        for hits in range(limit - before + 1):
            stats = DescriptorStats(near_limit_ratio=ratio)
            after = before + hits
            record(stats, hits=hits, capacity=limit, remaining=limit - after)
            assert counts(stats) == reference_admitted(
                before=before, hits=hits, limit=limit, ratio=ratio
            ), (before, hits)


def test_a_denied_check_takes_nothing_so_all_its_hits_are_over_limit() -> None:
    # The reference splits a denied request at the limit (it still adds to its window);
    # here a denied request takes no token, so none of its hits is under the limit.
    stats = DescriptorStats()
    record(stats, hits=4, capacity=10, remaining=3, allowed=False)
    assert counts(stats) == KeyCounts(total_hits=4, over_limit=4)


def test_the_local_cache_counts_over_limit_and_over_limit_with_local_cache() -> None:
    stats = DescriptorStats()
    record(stats, hits=2, remaining=0, allowed=False, local=True)
    assert counts(stats) == KeyCounts(total_hits=2, over_limit=2, over_limit_with_local_cache=2)


def test_a_shadow_mode_denial_counts_over_limit_and_shadow_mode() -> None:
    # base_limiter.go: over_limit is counted before the shadow mode turns the answer OK.
    stats = DescriptorStats()
    record(stats, hits=1, remaining=0, allowed=False, shadow=True)
    record(stats, hits=1, remaining=0, allowed=False, shadow=True, local=True)
    assert counts(stats) == KeyCounts(
        total_hits=2, over_limit=2, over_limit_with_local_cache=1, shadow_mode=2
    )


def test_an_allowed_shadow_mode_check_is_counted_like_any_allowed_one() -> None:
    stats = DescriptorStats()
    record(stats, hits=1, remaining=9, shadow=True)
    assert counts(stats) == KeyCounts(total_hits=1, within_limit=1)


def test_a_check_of_zero_hits_adds_nothing_but_makes_the_key() -> None:
    stats = DescriptorStats()
    record(stats, hits=0, remaining=1)
    record(stats, hits=0, remaining=0, allowed=False)
    assert counts(stats) == KeyCounts()


def test_total_hits_adds_every_hit_whatever_the_answer() -> None:
    stats = DescriptorStats()
    record(stats, hits=2, remaining=8)
    record(stats, hits=5, remaining=0, allowed=False)
    record(stats, hits=3, remaining=0, allowed=False, local=True)
    result = counts(stats)
    assert result.total_hits == 10
    assert result.total_hits == result.within_limit + result.over_limit


def test_the_near_threshold_is_computed_in_float32_like_the_reference() -> None:
    # base_limiter.go: floor(float64(float32(limit) * nearLimitRatio)), a float32
    # product. Find a capacity and ratio where that differs from the float64 product.
    differing = [
        (capacity, ratio)
        for capacity in range(1, 2000)
        for ratio in (0.1, 0.2, 0.3, 0.6, 0.7, 0.9)
        if math.floor(capacity * ratio) != near_threshold(capacity, ratio)
    ]
    assert differing, "float32 and float64 agree everywhere: the test proves nothing"
    capacity, ratio = differing[0]
    near = near_threshold(capacity, ratio)
    stats = DescriptorStats(near_limit_ratio=ratio)
    # One hit that leaves exactly `near + 1` used: past the float32 threshold.
    record(stats, hits=1, capacity=capacity, remaining=capacity - near - 1)
    assert counts(stats).near_limit == 1


def test_the_default_threshold_is_the_reference_default() -> None:
    assert near_threshold(10, 0.8) == 8
    assert near_threshold(20, 0.8) == 16
    assert near_threshold(1, 0.8) == 0


@pytest.mark.parametrize(
    "kwargs", [{"near_limit_ratio": 0.0}, {"near_limit_ratio": 1.5}, {"max_detailed_keys": -1}]
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        DescriptorStats(**kwargs)  # type: ignore[arg-type]


def test_domains_not_found_are_counted_per_domain() -> None:
    stats = DescriptorStats()
    stats.domain_not_found("nope")
    stats.domain_not_found("nope")
    stats.domain_not_found("other")
    assert dict(stats.snapshot().domains_not_found) == {"nope": 2, "other": 1}


# -- the bound ---------------------------------------------------------------------------


def test_a_flood_of_distinct_detailed_keys_stays_within_the_bound() -> None:
    stats = DescriptorStats(max_detailed_keys=100)
    for i in range(20_000):
        record(stats, key=f"edge.remote_address_10.0.{i // 256}.{i % 256}", remaining=9)
    snapshot = stats.snapshot()
    by_key = snapshot.by_key()
    assert snapshot.detailed_keys == 100
    assert len(by_key) == 101  # the 100 kept, and the base key the rest count under
    assert snapshot.folded == 19_900
    assert by_key[KEY].total_hits == 19_900
    assert sum(c.total_hits for c in by_key.values()) == 20_000


def test_kept_detailed_keys_go_on_counting_after_the_bound_is_reached() -> None:
    stats = DescriptorStats(max_detailed_keys=1)
    record(stats, key="edge.remote_address_a", remaining=9)
    record(stats, key="edge.remote_address_b", remaining=9)  # folded
    record(stats, key="edge.remote_address_a", remaining=8)
    by_key = stats.snapshot().by_key()
    assert by_key["edge.remote_address_a"].total_hits == 2
    assert by_key[KEY].total_hits == 1
    assert "edge.remote_address_b" not in by_key


def test_keys_from_the_rules_are_never_folded() -> None:
    stats = DescriptorStats(max_detailed_keys=0)
    record(stats, key="edge.subject", base_key="edge.subject", remaining=9)
    record(stats, key="edge.path_/a", base_key="edge.path", remaining=9)
    snapshot = stats.snapshot()
    assert set(snapshot.by_key()) == {"edge.subject", "edge.path"}
    assert snapshot.folded == 1


def test_unknown_domains_are_bounded_too() -> None:
    stats = DescriptorStats()
    for i in range(MAX_UNKNOWN_DOMAINS + 500):
        stats.domain_not_found(f"domain-{i}")
    named = dict(stats.snapshot().domains_not_found)
    assert len(named) == MAX_UNKNOWN_DOMAINS + 1
    assert named[OTHER_DOMAIN] == 500
    assert sum(named.values()) == MAX_UNKNOWN_DOMAINS + 500


# -- threads -----------------------------------------------------------------------------


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads as often as CPython allows, to give lost updates every chance."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_lose_no_count_and_never_pass_the_bound() -> None:
    stats = DescriptorStats(max_detailed_keys=50)
    threads_n, per_thread = 8, 20_000
    start = threading.Barrier(threads_n)

    def work(seed: int) -> None:
        start.wait()
        for i in range(per_thread):
            # 200 distinct detailed keys, created by several threads at once.
            detailed = f"edge.remote_address_{(i * 7 + seed) % 200}"
            record(stats, key=detailed, remaining=i % 10, allowed=i % 3 != 0)
            stats.domain_not_found("nope")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    snapshot = stats.snapshot()
    by_key = snapshot.by_key()
    total = threads_n * per_thread
    assert snapshot.detailed_keys == 50
    assert len(by_key) == 51
    assert sum(c.total_hits for c in by_key.values()) == total
    assert sum(c.within_limit + c.over_limit for c in by_key.values()) == total
    assert dict(snapshot.domains_not_found) == {"nope": total}
