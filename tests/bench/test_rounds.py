"""bench.rounds' arithmetic on made-up loads (no servers, no h2load)."""

from __future__ import annotations

from typing import Any

from bench.rounds import (
    Group,
    fill_saturation,
    markdown,
    median_load,
    round_order,
    summarize,
)

GROUP = Group("targets-w1", "floor-w1", ("check-pool-rs256-w1", "rl-redis-w1"), 4)


def _load(rate: float, **extra: Any) -> dict[str, Any]:
    return {"rate_rps": rate, "latency": {"p50_ms": 1.0}, **extra}


def _loads() -> dict[str, list[dict[str, Any]]]:
    return {
        "floor-w1": [_load(r) for r in (1000, 2000, 1000, 1000)],
        "check-pool-rs256-w1": [_load(r) for r in (800, 1500, 700, 900)],
        "rl-redis-w1": [
            _load(r, redis_calls_per_request=c)
            for r, c in ((600, 1.0), (1200, 0.99), (500, 0.5), (700, 1.0))
        ],
    }


def test_the_order_reverses_every_round() -> None:
    names = ["floor", "a", "b"]
    assert round_order(names, 0) == ["floor", "a", "b"]
    assert round_order(names, 1) == ["b", "a", "floor"]
    assert round_order(names, 2) == ["floor", "a", "b"]


def test_each_round_gives_one_ratio_and_the_verdict_takes_their_median() -> None:
    section = summarize(GROUP, _loads())
    assert section["reference_rates"] == [1000, 2000, 1000, 1000]
    check, rl = section["candidates"]
    assert check["ratios"] == [0.8, 0.75, 0.7, 0.9]
    assert check["ratio_median"] == 0.775
    assert rl["ratios"] == [0.6, 0.6, 0.5, 0.7]
    assert rl["redis_calls_per_request"] == [1.0, 0.99, 0.5, 1.0]
    assert "redis_calls_per_request" not in check
    # A ratio of overall means (3900 / 5000 = 0.78) would let the fast second round weigh
    # more; the per-round median does not.


def test_the_median_load_is_the_lower_middle_one_with_every_rate() -> None:
    section = {"groups": [summarize(GROUP, _loads())]}
    load = median_load(section, "check-pool-rs256-w1")
    assert load is not None
    assert load["rate_rps"] == 800  # sorted 700, 800, 900, 1500: the lower middle
    assert load["from_rounds"] == [800, 1500, 700, 900]
    assert median_load(section, "not-there") is None


def test_rows_without_their_own_saturation_take_the_median_round() -> None:
    sidecars = {
        "rows": [
            {"name": "floor-w1", "kind": "floor", "workers": 1},
            {"name": "check-pool-rs256-w1", "kind": "authz", "workers": 1},
            {
                "name": "rl-memory-w1",
                "kind": "ratelimit",
                "workers": 1,
                "saturation": _load(650),
            },
        ]
    }
    fill_saturation(sidecars, {"groups": [summarize(GROUP, _loads())]})
    floor, check, memory = sidecars["rows"]
    assert floor["saturation"]["rate_rps"] == 1000
    assert check["saturation"]["rate_rps"] == 800
    assert memory["saturation"]["rate_rps"] == 650  # its own run is kept
    assert check["ratio_to_floor"] == 0.8
    assert memory["ratio_to_floor"] == 0.65


def test_targets_are_judged_on_the_rounds_median_and_failure_mode_answers_fail_them() -> None:
    from bench.report import evaluate_targets

    result = {"sections": {"rounds": {"groups": [summarize(GROUP, _loads())]}}}
    targets = {t["target"]: t for t in evaluate_targets(result)}
    check = targets["Check, RS256 pool, 1 worker(s) >= 0.75x floor"]
    assert check["holds"] is True  # median 0.775
    assert check["measured"].startswith("0.78x (median of 4 alternating rounds: 0.80, 0.75")
    rl = targets["ShouldRateLimit, Redis, 1 worker(s) >= 0.6x floor"]
    # Median 0.6 would hold, but only answers that went to Redis count: 0.6, 0.594, 0.25,
    # 0.7 -> median 0.597.
    assert rl["holds"] is False
    assert rl["measured"].startswith("0.60x counting only the answers that went to Redis")
    assert "per round: 0.60, 0.59, 0.25, 0.70" in rl["measured"]
    assert targets["Check, EdDSA pool, 1 worker(s) >= 0.75x floor"]["measured"] is None


def test_a_few_failure_mode_answers_discount_a_round_instead_of_failing_the_target() -> None:
    from bench.report import evaluate_targets

    loads = _loads()
    loads["rl-redis-w1"] = [
        _load(r, redis_calls_per_request=c)
        for r, c in ((700, 1.0), (1400, 0.97), (650, 1.0), (700, 1.002))
    ]
    result = {"sections": {"rounds": {"groups": [summarize(GROUP, loads)]}}}
    rl = {t["target"]: t for t in evaluate_targets(result)}[
        "ShouldRateLimit, Redis, 1 worker(s) >= 0.6x floor"
    ]
    assert rl["holds"] is True  # 0.7, 0.679, 0.65, 0.7 -> 0.69
    assert rl["measured"].startswith("0.69x counting only")


def test_without_rounds_a_single_run_is_discounted_by_its_failure_mode_answers() -> None:
    from bench.report import evaluate_targets

    def row(name: str, rate: float, **extra: Any) -> dict[str, Any]:
        return {"name": name, "saturation": _load(rate, **extra)}

    result = {
        "sections": {
            "sidecars": {
                "rows": [
                    row("floor-w1", 1000),
                    row("rl-redis-w1", 700, redis_calls_per_request=0.5),
                ]
            }
        }
    }
    rl = {t["target"]: t for t in evaluate_targets(result)}[
        "ShouldRateLimit, Redis, 1 worker(s) >= 0.6x floor"
    ]
    assert rl["holds"] is False  # 0.7 of the floor, but half of it without Redis: 0.35
    assert rl["measured"].startswith("0.35x (350 req/s, one saturation run, counting only")


def test_the_table_names_how_long_redis_waited_for_a_core() -> None:
    loads = _loads()
    for load, wait in zip(loads["rl-redis-w1"], (1.5, 2.0, 1613.6, 1.8), strict=True):
        load["redis_wait_us_per_slice"] = wait
    section = {"groups": [summarize(GROUP, loads)]}
    lines = markdown(section, 1.5, {"rl-redis-w1": "RL"})
    (rl_line,) = [line for line in lines if line.startswith("| RL")]
    assert "Redis calls per answer: 1, 0.99, 0.5, 1" in rl_line
    assert "µs per timeslice: 1.5, 2, 1613.6, 1.8)" in rl_line
    (check_line,) = [line for line in lines if line.startswith("| check-pool")]
    assert "Redis" not in check_line


def _targets(loads: dict[str, list[dict[str, Any]]], group: Group = GROUP) -> dict[str, Any]:
    from bench.report import evaluate_targets

    result = {"sections": {"rounds": {"groups": [summarize(group, loads)]}}}
    return {t["target"]: t for t in evaluate_targets(result)}


def test_the_check_target_pools_both_token_pool_rows_rounds() -> None:
    group = Group(
        "targets-w1", "floor-w1", ("check-pool-rs256-w1", "check-pool-eddsa-w1", "rl-redis-w1"), 4
    )
    loads = _loads()
    loads["check-pool-eddsa-w1"] = [_load(r) for r in (600, 1400, 600, 700)]
    targets = _targets(loads, group)
    check = targets["Check, token pool (RS256 and EdDSA), 1 worker(s) >= 0.75x floor"]
    # RS256 0.8, 0.75, 0.7, 0.9 and EdDSA 0.6, 0.7, 0.6, 0.7: each row's own median (0.775,
    # 0.65) would give one verdict each; the eight together have the median 0.7.
    assert check["holds"] is False
    assert check["measured"].startswith("0.70x (median of 8 per-round ratios")
    assert (
        "RS256 pool: 0.80, 0.75, 0.70, 0.90; EdDSA pool: 0.60, 0.70, 0.60, 0.70"
        in (check["measured"])
    )
    assert "Check, RS256 pool, 1 worker(s) >= 0.75x floor" not in targets


def test_a_group_whose_floor_rounds_differ_more_than_twofold_gets_no_verdict() -> None:
    loads = _loads()
    loads["floor-w1"] = [_load(r) for r in (1000, 2100, 1000, 1000)]
    check = _targets(loads)["Check, RS256 pool, 1 worker(s) >= 0.75x floor"]
    assert check["holds"] is None
    assert check["measured"].endswith(
        "not decided: the floor's own rounds differ 2.1x (more than 2x)"
    )
    loads["floor-w1"] = [_load(r) for r in (1000, 2000, 1000, 1000)]  # exactly 2x: judged
    assert _targets(loads)["Check, RS256 pool, 1 worker(s) >= 0.75x floor"]["holds"] is True
