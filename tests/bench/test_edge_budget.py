"""The edge's CPU budget: per-request CPU by process and the ceiling it implies."""

from __future__ import annotations

from typing import Any

import pytest

from bench import edge_budget


def _load(rate: float, **cores: float) -> dict[str, Any]:
    return {"rate_rps": rate, "cpu": {"cores": cores}}


def _result(**configs: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": {"nproc_available": 2},
        "sections": {
            "edge": {"configs": [{"name": n, "cpu_load": load} for n, load in configs.items()]}
        },
    }


def test_each_process_costs_its_cores_over_the_answered_rate() -> None:
    b = edge_budget.budget("x", _load(1000.0, envoy=0.5, authz=0.25, loadgen=0.1), 2)
    assert b is not None
    assert b.us_by_process == {"envoy": 500.0, "authz": 250.0}
    assert b.client_us == pytest.approx(100.0)
    assert b.server_us == 750.0
    # 2 cores = 2,000,000 µs of CPU per second, 750 µs per request.
    assert b.ceiling_rps == pytest.approx(2e6 / 750)


def test_the_load_generator_is_no_server_but_unknown_processes_are() -> None:
    b = edge_budget.budget(
        "x", _load(500.0, envoy=0.5, harness=0.05, loadgen=0.5, **{"ratelimit-2": 0.25}), 2
    )
    assert b is not None
    assert list(b.us_by_process) == ["envoy", "ratelimit-2"]
    assert b.ceiling_rps == pytest.approx(2e6 / 1500)


def test_a_load_without_cpu_or_answers_has_no_budget_and_sorts_last() -> None:
    assert edge_budget.budget("x", None, 2) is None
    assert edge_budget.budget("x", _load(0.0, envoy=0.5), 2) is None
    assert edge_budget.budget("x", {"rate_rps": 10.0}, 2) is None
    assert edge_budget.server_us({"rate_rps": 10.0}) == float("inf")
    assert edge_budget.server_us(_load(1000.0, envoy=0.5, loadgen=0.3)) == pytest.approx(500.0)


def test_the_table_has_a_row_per_config_a_column_per_process_and_the_ratio_to_builtins() -> None:
    result = _result(
        **{
            "envoy-builtin": _load(4000.0, envoy=0.8),
            "edgeguard-aio": _load(800.0, envoy=0.6, authz=0.4, ratelimit=0.4, redis=0.08),
        }
    )
    lines = edge_budget.markdown(result)
    header = next(line for line in lines if line.startswith("| configuration"))
    assert header.split(" | ")[1:5] == ["envoy", "authz", "ratelimit", "redis"]
    row = next(line for line in lines if line.startswith("| edgeguard-aio"))
    # 1.48 cores at 800 req/s: 1,850 µs per request, 9.25x the built-ins' 200 µs.
    assert row == "| edgeguard-aio | 750 | 500 | 500 | 100 | **1850** | 9.2x | 0 | 1081 |"
    assert any(
        line.startswith("| envoy-builtin | 200 | - | - | - | **200** | 1.0x") for line in lines
    )
    assert edge_budget.markdown(_result()) == []
