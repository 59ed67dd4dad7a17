"""bench.edge_configs' rewrites on the rendered project config, and the bench's rules
(no Envoy run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import builtin, edge, edge_configs, exact
from devstack import envoy_config


def _config() -> dict[str, Any]:
    """The project's config in its default profile (`stage0: local`)."""
    return envoy_config.build(envoy_config.local_profile())


def _filters(cfg: dict[str, Any]) -> list[str]:
    return [f["name"] for f in edge_configs.hcm(cfg)["http_filters"]]


def _clusters(cfg: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in cfg["static_resources"]["clusters"]}


def test_the_local_profiles_buckets_never_limit_and_the_filter_still_runs() -> None:
    before = _config()
    after = edge_configs.unlimited_local_ratelimit(before)
    assert _filters(after) == _filters(before)
    [local] = [f for f in edge_configs.hcm(after)["http_filters"] if "local_ratelimit" in f["name"]]
    settings = local["typed_config"]
    buckets = [settings["token_bucket"], *(d["token_bucket"] for d in settings["descriptors"])]
    assert {b["max_tokens"] for b in buckets} == {edge_configs.HIGH}
    assert {b["tokens_per_fill"] for b in buckets} == {edge_configs.HIGH}
    # The input is left alone: the product's 20/s burst 40.
    [original] = [
        f for f in edge_configs.hcm(before)["http_filters"] if "local_ratelimit" in f["name"]
    ]
    assert original["typed_config"]["descriptors"][0]["token_bucket"]["max_tokens"] == 40


def test_both_upstream_clusters_go_to_the_backend_listener() -> None:
    cfg = edge_configs.with_backend(_config(), 4242)
    assert cfg["static_resources"]["listeners"][-1]["name"] == "backend"
    clusters = _clusters(cfg)
    for name in (envoy_config.UPSTREAM_CLUSTER, envoy_config.UPSTREAM_BODY_CLUSTER):
        [group] = clusters[name]["load_assignment"]["endpoints"]
        [endpoint] = group["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 4242


def test_envoy_alone_has_no_sidecar_filter_or_cluster() -> None:
    cfg = edge_configs.without_sidecars(_config())
    assert _filters(cfg) == ["envoy.filters.http.header_mutation", "envoy.filters.http.router"]
    assert not {envoy_config.AUTHZ_CLUSTER, envoy_config.RATELIMIT_CLUSTER} & set(_clusters(cfg))
    assert "rate_limits" not in edge_configs.hcm(cfg)["route_config"]["virtual_hosts"][0]


def test_the_builtins_run_their_own_filters_between_header_mutation_and_router() -> None:
    plain = edge_configs.without_sidecars(_config())
    cfg = builtin.builtin_filters(plain, issuer="http://idp", jwks={"keys": []})
    assert _filters(cfg) == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.local_ratelimit.stage0",
        builtin.JWT_NS,
        "envoy.filters.http.rbac",
        "envoy.filters.http.local_ratelimit.stage1",
        "envoy.filters.http.router",
    ]


def test_a_replica_is_a_second_endpoint_of_the_rate_limit_cluster() -> None:
    cfg = edge_configs.with_ratelimit_replica(_config(), 4343)
    [group] = _clusters(cfg)[envoy_config.RATELIMIT_CLUSTER]["load_assignment"]["endpoints"]
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"] for e in group["lb_endpoints"]
    ]
    assert len(ports) == 2
    assert ports[-1] == 4343


def _limits(descriptors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in descriptors:
        if "rate_limit" in d:
            out.append(d["rate_limit"])
        out += _limits(d.get("descriptors", []))
    return out


def test_bench_rules_keep_the_demo_tree_and_raise_every_limit() -> None:
    demo = yaml.safe_load(edge_configs.DEMO_RULES.read_text())
    rules = edge_configs.bench_rules()
    assert [d["key"] for d in rules["descriptors"]] == [d["key"] for d in demo["descriptors"]]
    limits = _limits(rules["descriptors"])
    assert len(limits) == len(_limits(demo["descriptors"])) >= 3  # nested ones too
    assert {(x["unit"], x["requests_per_unit"]) for x in limits} == {("second", edge_configs.HIGH)}
    assert {x["name"] for x in limits} == {x["name"] for x in _limits(demo["descriptors"])}


def test_one_key_rules_give_the_subject_a_burst_and_an_hourly_refill(tmp_path: Path) -> None:
    rules = edge_configs.one_key_rules(300)
    [subject] = [d for d in rules["descriptors"] if d["key"] == envoy_config.SUBJECT_KEY]
    assert subject["rate_limit"] == {
        "name": "bench-one-key", "unit": "hour", "requests_per_unit": 1, "burst": 300,
    }  # fmt: skip
    source = tmp_path / "edge.yaml"
    source.write_text("domain: edge\ndescriptors:\n  - key: rule\n    value: x\n")
    with pytest.raises(ValueError, match="no top-level `subject` rule"):
        edge_configs.one_key_rules(300, source)


def test_the_plan_runs_the_floor_the_builtins_every_stack_and_the_global_profile() -> None:
    stacks, default = edge.sidecar_stacks()
    assert set(stacks) == {"aio", "uvloop", "sync"}
    names = [s.name for s in edge.plan()]
    assert names == [
        "envoy-proxy", "envoy-builtin", *(f"edgeguard-{s}" for s in stacks),
        f"edgeguard-global-{default}",
    ]  # fmt: skip
    calls = {s.name: s.calls for s in edge.plan()}
    assert calls[f"edgeguard-{default}"] == 2
    assert calls[f"edgeguard-global-{default}"] == 3
    assert calls["envoy-builtin"] == 0


def test_the_exactness_verdict_needs_the_burst_exactly_both_replicas_and_no_failure() -> None:
    text = (
        "ratelimit::127.0.0.1:1::rq_total::450\nratelimit::127.0.0.1:1::cx_total::1\n"
        "ratelimit::127.0.0.1:2::rq_total::450\nauthz::127.0.0.1:3::rq_total::900\n"
    )
    hosts = exact.hosts_from(text, "ratelimit")
    assert hosts == {"127.0.0.1:1": 450, "127.0.0.1:2": 450}
    good = {"200": 300, "429": 600}
    assert exact.verdict(burst=300, sent=900, statuses=good, hosts=hosts, unbacked=0)
    assert not exact.verdict(
        burst=300, sent=900, statuses={"200": 301, "429": 599}, hosts=hosts, unbacked=0
    )
    assert not exact.verdict(burst=300, sent=900, statuses=good, hosts=hosts, unbacked=1)
    one = {"127.0.0.1:1": 900, "127.0.0.1:2": 0}
    assert not exact.verdict(burst=300, sent=900, statuses=good, hosts=one, unbacked=0)
