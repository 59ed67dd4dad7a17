"""The "Body schemas" tables, from a stored result."""

from __future__ import annotations

from typing import Any

from bench import body_report, body_section
from bench.body_section import WITH, WITHOUT


def _load(rate: float, **cores: float) -> dict[str, Any]:
    return {
        "rate_rps": rate,
        "cpu": {"cores": cores},
        "statuses": {"200": 1},
        "latency": {"p50_ms": 40.0, "p99_ms": 90.0},
    }


def _result() -> dict[str, Any]:
    row = {"validator": "jsonschema-rs 2020-12", "schema": "demo"}
    validators = [{**row, "valid_us": 1.0, "invalid_us": 9.5}]
    loads = {
        WITH: [_load(500, envoy=0.5, authz=0.35, ratelimit=0.25, redis=0.05)],
        WITHOUT: [_load(500, envoy=0.5, authz=0.3, ratelimit=0.25, redis=0.05)],
    }
    edge = body_section.summarize(loads, envoy_body_routes=["body:bench-with-schema"])
    return {
        "machine": {"nproc_available": 2},
        "timing": {"validation_rounds": 1000, "edge_saturation_s": 3.0},
        "sections": {"body": {"validators": validators, "edge": edge}},
    }


def test_markdown_has_the_validator_table_and_the_edge_comparison() -> None:
    text = "\n".join(body_report.markdown(_result()))
    assert "### Body schemas" in text
    assert "| `jsonschema-rs 2020-12` | demo | 1.00 | 9.50 |" in text
    with_schema = "| `with-schema` | `bench-with-schema` | **500** (500) | 1000 | 700 | 500 | 100 |"
    assert with_schema in text
    cost = "| **schema's cost** | - | with ÷ without: 1.00 | +0 | +100 | +0 | +0 | **+100** |"
    assert cost in text


def test_markdown_without_the_edge_part_keeps_the_validator_table() -> None:
    result = _result()
    del result["sections"]["body"]["edge"]
    lines = body_report.markdown(result)
    assert "### Body schemas" in lines
    assert not [line for line in lines if "schema's cost" in line]


def test_markdown_without_the_section_is_empty() -> None:
    assert body_report.markdown({"sections": {}}) == []
