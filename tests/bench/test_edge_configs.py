"""bench.edge's config rewrites, checked on the rendered project config (no Envoy run)."""

from __future__ import annotations

from typing import Any

from bench.edge import only_ext_authz
from devstack import envoy_config


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def test_one_call_config_drops_the_rate_limiter_everywhere() -> None:
    full = envoy_config.build(envoy_config.local_profile())
    one = only_ext_authz(full)
    names = [f["name"] for f in _hcm(one)["http_filters"]]
    assert not [n for n in names if n.startswith(envoy_config.RATELIMIT_NAMESPACE)]
    assert any("ext_authz" in n for n in names)
    clusters = {c["name"] for c in one["static_resources"]["clusters"]}
    assert envoy_config.RATELIMIT_CLUSTER not in clusters
    assert envoy_config.AUTHZ_CLUSTER in clusters
    # /healthz must not wait for a cluster that is gone (it would answer 503 for ever).
    [health] = [f for f in _hcm(one)["http_filters"] if f["name"].endswith("health_check")]
    assert set(health["typed_config"]["cluster_min_healthy_percentages"]) == {
        envoy_config.AUTHZ_CLUSTER
    }
    # The input is left alone.
    full_clusters = {c["name"] for c in full["static_resources"]["clusters"]}
    assert envoy_config.RATELIMIT_CLUSTER in full_clusters
