"""Rewrites of the project's rendered Envoy config, and the rate-limit rules, for the bench.

Every edge configuration starts from `devstack.envoy_config.build(...)`: the project's own
listener, TLS, connection manager, request guard, header mutation and access log. The
bench then changes only what it must:

- the upstream is a second listener of the same Envoy answering 200 with a small body (a
  C upstream: a Python demo server would be measured instead of the edge). Envoy's
  rate-limit filters skip routes without a route entry (direct responses), so the route
  must really proxy;
- limits far above the offered load, in Envoy (local_ratelimit's buckets) and in the
  rate-limit sidecar's rules (`bench_rules`: the demo rules' descriptors, every limit
  raised), so every request does all the work and is answered 200;
- for `envoy-proxy` and `envoy-builtin`, no sidecar filters and no sidecar clusters;
- for the exactness check, a second endpoint (replica) in the rate-limit cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from bench.procs import REPO
from devstack import envoy_config

Config = dict[str, Any]
HIGH = 1_000_000  # tokens per second and burst: never reached
DEMO_RULES = REPO / "config" / "ratelimit" / "rules" / "edge.yaml"


def typed(type_name: str, **fields: Any) -> Config:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def hcm(cfg: Config) -> Config:
    """The edge listener's HTTP connection manager (the first listener's first filter)."""
    listener = cfg["static_resources"]["listeners"][0]
    manager: Config = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def http_filter(manager: Config, prefix: str) -> Config:
    return next(f for f in manager["http_filters"] if f["name"].startswith(prefix))


def backend_listener(port: int) -> Config:
    """A plaintext listener answering 200 with a small JSON body: the upstream API."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router"),
    }
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": '{"ok":true}'}},
    }
    manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="backend",
        codec_type="AUTO",
        route_config={
            "name": "backend",
            "virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [route]}],
        },
        http_filters=[router],
    )
    network = {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
    return {
        "name": "backend",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [network]}],
    }


def _socket(port: int) -> Config:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def with_backend(cfg: Config, backend_port: int) -> Config:
    """Both upstream clusters (bodies go to one of their own) pointed at a backend
    listener added to the same Envoy."""
    cfg = copy.deepcopy(cfg)
    cfg["static_resources"]["listeners"].append(backend_listener(backend_port))
    upstreams = {envoy_config.UPSTREAM_CLUSTER, envoy_config.UPSTREAM_BODY_CLUSTER}
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in upstreams:
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": _socket(backend_port)}]}
            ]
    return cfg


def without_sidecars(cfg: Config) -> Config:
    """Only header mutation + router, the sidecar clusters gone: Envoy proxying alone."""
    cfg = copy.deepcopy(cfg)
    manager = hcm(cfg)
    manager["http_filters"] = [
        http_filter(manager, "envoy.filters.http.header_mutation"),
        manager["http_filters"][-1],
    ]
    manager["route_config"]["virtual_hosts"][0].pop("rate_limits", None)
    sidecars = {envoy_config.AUTHZ_CLUSTER, envoy_config.RATELIMIT_CLUSTER}
    cfg["static_resources"]["clusters"] = [
        c for c in cfg["static_resources"]["clusters"] if c["name"] not in sidecars
    ]
    return cfg


def unlimited_local_ratelimit(cfg: Config) -> Config:
    """Every local_ratelimit bucket of the edge listener raised to HIGH (stage 0 of the
    local profile): the filter still runs and consumes a token per request."""
    cfg = copy.deepcopy(cfg)
    bucket = {"max_tokens": HIGH, "tokens_per_fill": HIGH, "fill_interval": "1s"}
    for entry in hcm(cfg)["http_filters"]:
        if "local_ratelimit" not in entry["name"]:
            continue
        settings = entry["typed_config"]
        settings["token_bucket"] = dict(bucket)
        for descriptor in settings.get("descriptors", []):
            descriptor["token_bucket"] = dict(bucket)
    return cfg


def with_ratelimit_replica(cfg: Config, port: int) -> Config:
    """A second endpoint in the rate-limit cluster: Envoy balances the calls over both."""
    cfg = copy.deepcopy(cfg)
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == envoy_config.RATELIMIT_CLUSTER:
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
                {"endpoint": _socket(port)}
            )
    return cfg


def raised(descriptors: list[Config]) -> list[Config]:
    """The same descriptor tree with every limit at HIGH per second."""
    out = []
    for descriptor in descriptors:
        descriptor = dict(descriptor)
        if "rate_limit" in descriptor:
            limit = dict(descriptor["rate_limit"])
            limit.update(unit="second", requests_per_unit=HIGH)
            if "burst" in limit:
                limit["burst"] = HIGH
            descriptor["rate_limit"] = limit
        if "descriptors" in descriptor:
            descriptor["descriptors"] = raised(descriptor["descriptors"])
        out.append(descriptor)
    return out


def bench_rules(source: Path = DEMO_RULES) -> Config:
    """The demo rules with every limit raised: each descriptor the product's Envoy sends
    meets the same rule tree (the same buckets and script work), and nothing is denied."""
    rules: Config = yaml.safe_load(source.read_text())
    rules["descriptors"] = raised(rules.get("descriptors", []))
    return rules


def one_key_rules(burst: int, source: Path = DEMO_RULES) -> Config:
    """`bench_rules`, but the per-subject limit refills one token an hour after a burst of
    `burst`: one subject's requests in a few seconds are admitted exactly `burst` times."""
    rules = bench_rules(source)
    for descriptor in rules["descriptors"]:
        if descriptor.get("key") == envoy_config.SUBJECT_KEY and "rate_limit" in descriptor:
            descriptor["rate_limit"] = {
                "name": "bench-one-key",
                "unit": "hour",
                "requests_per_unit": 1,
                "burst": burst,
            }
            return rules
    raise ValueError(f"{source}: no top-level `{envoy_config.SUBJECT_KEY}` rule")
