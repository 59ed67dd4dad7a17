"""The edge's CPU budget: per-request CPU by process and the ceiling it implies."""

from __future__ import annotations

from typing import Any

import pytest

from bench import edge_budget, report


def _config(name: str, rate: float, **cores: float) -> dict[str, Any]:
    return {"name": name, "saturation": {"rate_rps": rate, "cpu": {"cores": cores}}}


def _result(*configs: dict[str, Any], rate: float = 400.0) -> dict[str, Any]:
    sidecars = _config("envoy-sidecars", rate, envoy=0.6, authz=0.4, ratelimit=0.8, redis=0.1)
    sidecars["fixed"] = {}
    return {
        "machine": {"nproc_available": 2},
        "sections": {"edge": {"configs": [*configs, sidecars]}},
    }


def test_each_process_costs_its_cores_over_the_answered_rate() -> None:
    b = edge_budget.budget(_config("x", 1000.0, envoy=0.5, authz=0.25, loadgen=0.1), 2)
    assert b is not None
    assert b.us_by_process == {"envoy": 500.0, "authz": 250.0}
    assert b.client_us == pytest.approx(100.0)
    assert b.server_us == 750.0
    # 2 cores = 2,000,000 µs of CPU per second, 750 µs per request.
    assert b.ceiling_rps == pytest.approx(2e6 / 750)


def test_the_load_generator_is_not_part_of_the_ceiling_but_unknown_servers_are() -> None:
    b = edge_budget.budget(
        _config("x", 500.0, envoy=0.5, harness=0.05, loadgen=0.5, upstream=0.25), 2
    )
    assert b is not None
    assert list(b.us_by_process) == ["envoy", "upstream"]
    assert b.ceiling_rps == pytest.approx(2e6 / 1500)


def test_a_config_without_a_saturation_load_or_cpu_has_no_budget() -> None:
    assert edge_budget.budget({"name": "x"}, 2) is None
    assert edge_budget.budget(_config("x", 0.0, envoy=0.5), 2) is None
    assert edge_budget.budget({"name": "x", "saturation": {"rate_rps": 10.0}}, 2) is None


def test_the_edge_target_names_the_design_ceiling_when_it_fails() -> None:
    floor = _config("envoy-floor-sidecars", 800.0, envoy=0.6, authz=0.4, ratelimit=0.6)
    result = _result(floor)
    target = next(t for t in report.evaluate_targets(result) if ">= 2000" in t["target"])
    assert target["holds"] is False
    # 0.6 + 0.4 + 0.6 cores at 800 req/s: 2,000 µs per request, 1,000 req/s on 2 cores.
    assert "2000 µs of server CPU per request: at most 1000 req/s on 2 cores" in target["measured"]


def test_without_the_floor_config_the_edge_target_states_only_the_rate() -> None:
    target = next(t for t in report.evaluate_targets(_result()) if ">= 2000" in t["target"])
    assert target["measured"] == "400 req/s"


def test_the_table_has_a_row_per_config_and_a_column_per_process() -> None:
    floor = _config("envoy-floor-sidecars", 800.0, envoy=0.6, authz=0.4, ratelimit=0.6)
    lines = edge_budget.markdown(_result(floor))
    header = next(line for line in lines if line.startswith("| configuration"))
    assert header.split(" | ")[1:5] == ["envoy", "authz", "ratelimit", "redis"]
    row = next(line for line in lines if line.startswith("| envoy-floor-sidecars"))
    assert row == "| envoy-floor-sidecars | 750 | 500 | 750 | - | 2000 | 0 | 1000 |"
    assert any(line.startswith("| envoy-sidecars |") for line in lines)
