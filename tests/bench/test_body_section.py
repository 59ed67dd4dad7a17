"""The body section's pure parts: the bench policy, Envoy's body routes, the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench import body_section, body_validation
from bench.body_section import WITH, WITHOUT


def test_the_two_rules_differ_only_in_the_body() -> None:
    with_schema, without = body_section.rule(WITH), body_section.rule(WITHOUT)
    assert with_schema.pop("body")["schema"] == body_validation.DEMO
    assert "body" not in without
    assert {k: v for k, v in with_schema.items() if k not in ("name", "path")} == {
        k: v for k, v in without.items() if k not in ("name", "path")
    }


def test_only_the_rule_with_a_schema_becomes_an_envoy_body_route(tmp_path: Path) -> None:
    policy = body_section.write_policy(tmp_path / "authz.yaml")
    names = [r["name"] for r in yaml.safe_load(policy.read_text())["routes"]]
    assert names[-2:] == ["bench-with-schema", "bench-no-schema"]
    routes = body_section.expected_body_routes(policy)
    assert "body:bench-with-schema" in routes
    assert not [name for name in routes if "no-schema" in name]


def test_the_body_sent_is_small_valid_json_and_the_same_size_for_both_routes() -> None:
    sent = body_section.body("edge-user-0")
    assert 40 <= len(sent) <= 80
    assert body_validation.compiled(body_validation.DEMO).check(sent, "application/json").ok
    assert "roles" in json.loads(body_section.body("edge-user-0", roles=["admin"]))


def _load(rate: float, **cores: float) -> dict[str, Any]:
    return {"rate_rps": rate, "cpu": {"cores": cores}, "statuses": {"200": 1}}


def test_summarize_takes_medians_of_the_per_round_differences() -> None:
    loads = {
        WITH: [_load(500, envoy=0.5, authz=0.3), _load(400, envoy=0.4, authz=0.4)],
        WITHOUT: [_load(500, envoy=0.5, authz=0.25), _load(500, envoy=0.5, authz=0.25)],
    }
    out = body_section.summarize(loads, command="envoy -c x")
    assert out["command"] == "envoy -c x"
    assert out["routes"][WITH]["rule"] == "bench-with-schema"
    assert out["routes"][WITH]["saturation"]["from_rounds"] == [500, 400]
    per_round = out["difference"]["per_round"]
    assert [d["rate_ratio"] for d in per_round] == [1.0, 0.8]
    # Round 1: authz +100 µs; round 2: envoy 1000 - 1000 = 0, authz 1000 - 500 = +500.
    assert round(per_round[1]["us_by_process"]["authz"]) == 500
    assert round(out["difference"]["us_by_process"]["authz"]) == 300
    assert round(out["difference"]["us_by_process"]["servers"]) == 300
    assert out["difference"]["rate_ratio"] == 0.9


def test_summarize_without_loads_has_no_difference() -> None:
    out = body_section.summarize({WITH: [], WITHOUT: []})
    assert out["difference"] == {"rate_ratio": None, "us_by_process": {}, "per_round": []}
    assert out["routes"][WITH]["saturation"] is None
