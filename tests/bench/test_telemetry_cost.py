"""Telemetry's hot-path cost from the in-process stages (bench.telemetry_cost)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.hotpath import telemetry_stage_names
from bench.telemetry_cost import hot_path_costs, hot_path_md


def _result(off: float, unsampled: float, sampled: float) -> dict[str, Any]:
    stages = [
        {"stage": name, "us": us}
        for name, us in zip(telemetry_stage_names("authz"), (off, unsampled, sampled), strict=True)
    ]
    row = {
        "name": "check-pool-rs256-w1",
        "saturation": {"rate_rps": 2500.0, "cpu": {"cores": {"server": 1.25}}},
    }
    return {"sections": {"hotpath": {"authz": stages}, "sidecars": {"rows": [row]}}}


def test_the_judged_share_adds_the_unsampled_cost_and_a_share_of_a_sampled_call() -> None:
    (entry,) = hot_path_costs(_result(20.0, 22.0, 102.0))
    # 2 µs on every call, and 80 µs more on the 1 % of calls that are sampled.
    assert entry["judged_us"] == pytest.approx(2.8)
    assert entry["call_cpu_us"] == 500.0  # 1.25 cores at 2,500 calls/s
    assert entry["judged_pct"] == pytest.approx(0.56)


def test_missing_stages_give_no_entry_and_no_table() -> None:
    result = _result(20.0, 22.0, 102.0)
    result["sections"]["hotpath"]["authz"].pop()
    assert hot_path_costs(result) == []
    assert hot_path_md(result) == []


def test_without_a_load_the_share_is_left_open() -> None:
    result = _result(20.0, 22.0, 102.0)
    result["sections"]["sidecars"]["rows"] = []
    (entry,) = hot_path_costs(result)
    assert entry["judged_pct"] is None
    assert hot_path_md(result)[-1] == "| Check | 20.0 | 22.0 | 102.0 | +2.8 | - | - |"


def test_a_negative_difference_keeps_its_sign() -> None:
    # Short (smoke) runs can time "on" below "off": the table must not print "+-".
    result = _result(30.0, 28.0, 118.0)
    assert hot_path_costs(result)[0]["judged_us"] == pytest.approx(-1.1)
    assert "| -1.1 |" in hot_path_md(result)[-1]
