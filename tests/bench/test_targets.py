"""Issue 16's targets and the generated tables, on made-up results (no servers, no h2load)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report, targets


def _load(rate: float, *, cores: float = 1.6, **extra: Any) -> dict[str, Any]:
    """A saturation load whose servers used `cores` (split envoy/authz/ratelimit/redis)."""
    split = {"envoy": 0.4, "authz": 0.25, "ratelimit": 0.25, "redis": 0.1}
    return {
        "rate_rps": rate,
        "offered_rps": None,
        "requests": int(rate * 3),
        "statuses": {"200": int(rate * 3)},
        "latency": {"count": 1, "p50_ms": 5.0, "p99_ms": 9.0, "p999_ms": 12.0},
        "cpu": {"cores": {k: v * cores for k, v in split.items()} | {"loadgen": 0.1}},
        **extra,
    }


def _config(name: str, rates: list[float], **kw: Any) -> dict[str, Any]:
    profile = kw.pop("profile", "local" if name.startswith("edgeguard-") else None)
    stack = kw.pop("stack", name.rsplit("-", 1)[1] if profile else None)
    loads = [_load(r, **kw) for r in rates]
    middle = sorted(loads, key=lambda x: x["rate_rps"])[(len(loads) - 1) // 2]
    return {
        "name": name,
        "label": name,
        "profile": profile,
        "stack": stack,
        "calls": {"local": 2, "global": 3}.get(profile or "", 0),
        "rounds": loads,
        "saturation": {**middle, "from_rounds": rates},
        "cpu_load": middle,
    }


def _result(*configs: dict[str, Any], exact: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema": report.SCHEMA,
        "machine": {"nproc_available": 2},
        "sections": {
            "edge": {"configs": list(configs), "default_stack": "aio"},
            "exact": exact or {},
        },
    }


def _by_start(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["target"].split(",")[0].split(" (")[0]: t for t in targets.evaluate(result)}


def _half(p99: float, offered: float, got: float) -> dict[str, Any]:
    return _load(got, offered_rps=offered) | {
        "latency": {"count": 1, "p50_ms": 1.0, "p99_ms": p99, "p999_ms": p99}
    }


def test_the_default_profile_on_the_default_stack_is_judged_on_its_medians() -> None:
    ours = _config("edgeguard-aio", [1300.0, 1100.0, 1250.0], cores=1.6)
    ours["half"] = _half(12.0, 625.0, 620.0)
    other = _config("edgeguard-global-aio", [800.0, 800.0, 1000.0], profile="global")
    found = _by_start(_result(ours, other, _config("edgeguard-sync", [2000.0] * 3)))
    rps = found["edge req/s at saturation"]
    assert rps["holds"] is True  # median 1,250 (not sync's 2,000: the default stack is aio)
    assert rps["measured"].startswith("1250 req/s (median of 3 rounds: 1300, 1100, 1250)")
    ratio = found["edgeguard-aio ÷ edgeguard-global-aio"]
    # Per round 1.625, 1.375, 1.25: the median 1.375, not the ratio of medians (1.5625).
    assert ratio["holds"] is False
    assert ratio["measured"].startswith("1.38x")
    cpu = found["server CPU per edge request"]
    # 1.6 cores at 1,250 req/s: 1,280 µs.
    assert cpu["holds"] is True
    assert cpu["measured"].startswith("1280 µs (envoy 512, authz 320, ratelimit 320, redis 128")
    assert found["edge p99 at half of its saturation rate"]["holds"] is True


def test_each_threshold_is_a_bound() -> None:
    ours = _config("edgeguard-aio", [1199.0], cores=1.7)
    ours["half"] = _half(15.0, 600.0, 600.0)
    found = _by_start(_result(ours))
    assert found["edge req/s at saturation"]["holds"] is False
    assert found["server CPU per edge request"]["holds"] is False  # 1,418 µs
    assert found["edge p99 at half of its saturation rate"]["holds"] is False  # not < 15
    ours["half"] = _half(3.0, 600.0, 500.0)  # fast, but the rate was not reached
    assert _by_start(_result(ours))["edge p99 at half of its saturation rate"]["holds"] is False


def test_the_rate_at_the_bound_holds() -> None:
    ours = _config("edgeguard-aio", [1200.0], cores=1.6)
    assert _by_start(_result(ours))["edge req/s at saturation"]["holds"] is True


def test_a_round_answered_without_the_sidecars_decides_nothing() -> None:
    ours = _config("edgeguard-aio", [1300.0, 1300.0])
    ours["rounds"][1]["sidecar_trouble"] = {"cluster.upstream.ratelimit.stage1.error": 200}
    rps = _by_start(_result(ours))["edge req/s at saturation"]
    assert rps["holds"] is None  # 200 of 3,900 requests: 5.1 %
    assert rps["measured"].endswith("not decided: 5.1% of a round's requests had no full answer")
    assert targets.unbacked_share({"requests": 100, "statuses": {"200": 98, "403": 2}}) == 0.02


def test_the_builtins_and_the_stacks_are_reported_not_judged() -> None:
    builtin = _config("envoy-builtin", [4000.0, 5000.0], cores=0.8)
    ours = _config("edgeguard-aio", [800.0, 1000.0], cores=1.6)
    sync = _config("edgeguard-sync", [900.0, 1100.0], cores=1.2)
    result = _result(builtin, ours, sync)
    found = _by_start(result)
    versus = found["edgeguard-aio ÷ envoy-builtin"]
    assert versus["report"] is True
    assert "req/s 0.20x (median of per-round ratios: 0.20, 0.20)" in versus["measured"]
    # 2,000 against 200 µs (the median-CPU rounds: 1.6 cores at 800, 0.8 at 4,000).
    assert "CPU per request 10.0x (2000 against 200 µs)" in versus["measured"]
    chosen = found["the sidecars' stack"]
    assert chosen["report"] is True
    assert chosen["measured"].startswith("cheapest per request: sync, fastest: sync")
    assert targets.cheapest(result) == {
        "by_cpu": "sync",
        "by_rate": "sync",
        "cpu_us": {"aio": pytest.approx(2000.0), "sync": pytest.approx(1333.33, abs=0.01)},
        "rate_rps": {"aio": 800.0, "sync": 900.0},
        "left_out": [],
    }


def test_a_stack_that_answered_without_the_sidecars_is_never_the_cheapest() -> None:
    ours = _config("edgeguard-aio", [800.0], cores=1.6)
    broken = _config("edgeguard-sync", [2000.0], cores=0.5)  # fast: nothing was decided
    broken["rounds"][0]["sidecar_trouble"] = {"cluster.upstream.ratelimit.stage1.error": 6000}
    chosen = _by_start(_result(ours, broken))["the sidecars' stack"]
    assert chosen["measured"].startswith("cheapest per request: aio, fastest: aio")
    assert chosen["measured"].endswith("left out, answered without every decision: sync")
    alone = _by_start(_result(broken))["the sidecars' stack"]
    assert alone["measured"] == "no stack answered every round with the sidecars' decisions"


def test_exactness_is_judged_from_its_section() -> None:
    section = {
        "burst": 300, "sent": 900, "statuses": {"200": 300, "429": 600},
        "calls_per_replica": {"a": 450, "b": 450}, "store_failures": 0, "sidecar_trouble": {},
        "exact": True,
    }  # fmt: skip
    found = _by_start(_result(exact=section))
    exact = found["global limits still exact"]
    assert exact["holds"] is True
    assert exact["measured"].startswith("burst 300: 300 admitted, 600 limited of 900")
    assert found["edge req/s at saturation >= 1"]["measured"] is None  # no edge: not measured
    assert _by_start(_result())["global limits still exact"]["measured"] is None


def test_the_markdown_has_every_table_and_an_old_result_says_no_run_yet() -> None:
    builtin = _config("envoy-builtin", [4000.0], cores=0.8)
    ours = _config("edgeguard-aio", [1000.0])
    ours["half"] = _half(8.0, 500.0, 500.0)
    result = _result(builtin, ours) | {
        "generated": "now", "mode": "full", "duration_s": 1.0,
        "git": {"commit": "0" * 40, "dirty_paths": []},
        "machine": {"nproc": 2, "nproc_available": 2, "cpu_model": "cpu", "memory_mib": 1,
                    "kernel": "k", "loadavg_at_start": [0.0, 0.0, 0.0]},
        "versions": {"python": "3"}, "quiet": {"waited_s": 0.0, "foreign_cores": 0.0},
        "timing": {"edge_rounds": 1, "edge_saturation_s": 3, "half_rate_s": 4,
                   "sidecar_rounds": 1, "sidecar_saturation_s": 2, "warmup_s": 0.5,
                   "clients": 10, "conns": 2},
    }  # fmt: skip
    result["targets"] = targets.evaluate(result)
    text = report.markdown(result)
    assert "### Targets (issue 16)" in text
    assert "### The edge, side by side" in text
    assert "| edgeguard-aio | 640 | 400 | 400 | 160 | **1600** | 8.0x |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `edgeguard-aio`"))
    assert "| **1000** (1000) | 0.25 |" in row
    assert "8.00 / 8.00 (500 of 500 req/s)" in row
    assert "cheapest stack per request **aio**" in text
    assert report.markdown({"schema": 1}).startswith("No run of this harness yet")
