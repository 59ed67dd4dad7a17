"""The gRPC parts of the rendered config: the route, the cluster, the status mappers."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from devstack.envoy_config import (
    GRPC_CONTENT_TYPE_REGEX,
    GRPC_STATUS_BY_HTTP_CODE,
    GRPC_UPSTREAM_CLUSTER,
    build,
    compose_profile,
    local_profile,
)


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes: list[dict[str, Any]] = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _mappers(config: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    mappers: list[dict[str, Any]] = hcm["typed_config"]["local_reply_config"]["mappers"]
    return mappers


def _expression(mapper: dict[str, Any]) -> str:
    expression: str = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    return expression


def test_grpc_requests_go_first_to_an_http2_cluster_without_the_buffer() -> None:
    config = build(local_profile())
    first = _routes(config)[0]
    assert first["match"]["headers"] == [
        {"name": "content-type", "string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE_REGEX}}}
    ]
    assert first["route"]["cluster"] == GRPC_UPSTREAM_CLUSTER
    [per_filter] = first["typed_per_filter_config"].values()
    assert per_filter["disabled"] is True
    [cluster] = [
        c for c in config["static_resources"]["clusters"] if c["name"] == GRPC_UPSTREAM_CLUSTER
    ]
    options = next(iter(cluster["typed_extension_protocol_options"].values()))
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8083}}
    }


def test_the_content_type_match_is_grpc_and_not_grpc_web() -> None:
    pattern = re.compile(GRPC_CONTENT_TYPE_REGEX)
    for yes in ("application/grpc", "application/grpc+proto", "application/grpc;charset=x"):
        assert pattern.match(yes), yes
    for no in ("application/grpc-web", "application/json", "text/application/grpc"):
        assert not pattern.match(no), no


def test_no_grpc_upstream_means_no_grpc_route_or_cluster() -> None:
    for params in (compose_profile(), dataclasses.replace(local_profile(), grpc_upstream=None)):
        config = build(params)
        assert all(r["route"]["cluster"] != GRPC_UPSTREAM_CLUSTER for r in _routes(config))
        names = [c["name"] for c in config["static_resources"]["clusters"]]
        assert GRPC_UPSTREAM_CLUSTER not in names


def test_grpc_status_mappers_come_first_and_only_match_grpc_requests() -> None:
    mappers = _mappers(build(local_profile()))
    grpc_mappers = mappers[: 2 * len(GRPC_STATUS_BY_HTTP_CODE)]
    for mapper in grpc_mappers:
        assert _expression(mapper).startswith("'content-type' in request.headers && ")
        [header] = mapper["headers_to_add"]
        assert header["header"]["key"] == "grpc-status"
    statuses = {
        (
            int(re.findall(r"response\.code == (\d+)", _expression(m))[0]),
            m["headers_to_add"][0]["header"]["value"],
        )
        for m in grpc_mappers
    }
    assert statuses == {(code, str(status)) for code, status, _ in GRPC_STATUS_BY_HTTP_CODE}
    # The sidecar's denial keeps its body; Envoy's own reply gets the JSON denial body.
    from_authz = [m for m in grpc_mappers if "== 'ext_authz_denied'" in _expression(m)]
    assert all("body_format_override" not in m for m in from_authz)
    own = [m for m in grpc_mappers if "!= 'ext_authz_denied'" in _expression(m)]
    assert all(m["body_format_override"]["content_type"] == "application/json" for m in own)
    assert len(from_authz) == len(own) == len(GRPC_STATUS_BY_HTTP_CODE)


def test_codes_envoy_maps_well_are_left_to_envoy() -> None:
    # 401, 403, 404, 429 (rate_limited_as_resource_exhausted), 502-504: Envoy's own mapping.
    codes = {code for code, _, _ in GRPC_STATUS_BY_HTTP_CODE}
    assert codes.isdisjoint({401, 403, 404, 429, 502, 503, 504})
