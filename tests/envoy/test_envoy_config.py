"""The generated bootstrap's structure: the security decisions, checked on the dict."""

from __future__ import annotations

import dataclasses
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.envoy_config import (
    HEADER,
    IDENTITY_HEADERS,
    PROFILES,
    SECURITY_HEADERS,
    EnvoyParams,
    apply_overrides,
    build,
    compose_profile,
    local_profile,
    main,
    render,
    sidecar_server_name,
)

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = {
    "local": REPO / "envoy/envoy.local.yaml",
    "compose": REPO / "envoy/envoy.compose.yaml",
}


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = _hcm(config)["http_filters"]
    return filters


def _filter_types(config: dict[str, Any]) -> list[str]:
    return [f["typed_config"]["@type"].rsplit(".", 1)[-1] for f in _filters(config)]


def _typed_filter(config: dict[str, Any], type_name: str, index: int = 0) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        f["typed_config"]
        for f in _filters(config)
        if f["typed_config"]["@type"].endswith(type_name)
    ]
    return found[index]


def _cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    clusters = config["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == name)


def _downstream_tls(config: dict[str, Any]) -> dict[str, Any]:
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    tls: dict[str, Any] = chain["transport_socket"]["typed_config"]
    return tls


@pytest.fixture(params=sorted(PROFILES))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return build(PROFILES[request.param]())


# --- filter chain ---------------------------------------------------------------------------


def test_filter_order_is_headers_guard_health_local_limit_body_authz_ratelimit_router(
    config: dict[str, Any],
) -> None:
    # The default profile: stage 0 in Envoy, one rate-limit call (stage 1) after ext_authz.
    assert _filter_types(config) == [
        "HeaderMutation",
        "Lua",
        "HealthCheck",
        "LocalRateLimit",
        "Buffer",
        "ExtAuthz",
        "RateLimit",
        "Router",
    ]
    [ratelimit] = [f for f in _filters(config) if f["typed_config"]["@type"].endswith(".RateLimit")]
    assert ratelimit["typed_config"]["stage"] == 1


def test_global_stage0_is_a_second_ratelimit_call_before_the_body_and_authz() -> None:
    config = build(dataclasses.replace(local_profile(), stage0="global"))
    assert _filter_types(config) == [
        "HeaderMutation",
        "Lua",
        "HealthCheck",
        "RateLimit",
        "Buffer",
        "ExtAuthz",
        "RateLimit",
        "Router",
    ]
    stages = [f["typed_config"].get("stage") for f in _filters(config)]
    assert (stages[3], stages[6]) == (0, 1)
    assert "LocalRateLimit" not in _filter_types(config)


def test_local_stage0_is_a_bucket_per_client_address_with_the_429_headers(
    config: dict[str, Any],
) -> None:
    local = _typed_filter(config, "LocalRateLimit")
    # A key with no value: a bucket per distinct client address, at most 100,000 (LRU).
    assert local["descriptors"] == [
        {
            "entries": [{"key": "remote_address"}],
            "token_bucket": {"max_tokens": 40, "tokens_per_fill": 20, "fill_interval": "1s"},
        }
    ]
    assert local["max_dynamic_descriptors"] == 100_000
    assert local["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    # The default bucket (required) is never used for a limit.
    assert local["always_consume_default_token_bucket"] is False
    assert local["token_bucket"]["max_tokens"] >= 1 << 30
    for name in ("filter_enabled", "filter_enforced"):
        assert local[name]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    assert local["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    assert local["response_headers_to_add"] == [
        {
            "header": {"key": "retry-after", "value": "1"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    assert local["rate_limited_as_resource_exhausted"] is True
    assert "local_rate_limit_per_downstream_connection" not in local  # per instance
    # After the header mutation (its encoder adds the security headers to the 429).
    types = _filter_types(config)
    assert types.index("HeaderMutation") < types.index("LocalRateLimit") < types.index("Buffer")


def test_local_stage0_has_the_global_rules_figures() -> None:
    """The two profiles enforce one demo limit (ARCHITECTURE.md section 4)."""
    rules = yaml.safe_load((REPO / "config/ratelimit/rules/edge.yaml").read_text())
    [address] = [d for d in rules["descriptors"] if d["key"] == "remote_address"]
    params = local_profile()
    assert address["rate_limit"]["unit"] == "second"
    assert address["rate_limit"]["requests_per_unit"] == params.stage0_requests_per_second
    assert address["rate_limit"]["burst"] == params.stage0_burst


def test_ext_authz_fails_closed_over_grpc_v3(config: dict[str, Any]) -> None:
    authz = _typed_filter(config, "ExtAuthz")
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz"
    assert authz["grpc_service"]["timeout"] == "0.2s"
    assert authz["include_peer_certificate"] is True
    assert "encode_raw_headers" not in authz  # the headers map: no per-header work
    # Unset allowed_headers: every header (authorization included) goes to the sidecar.
    assert "allowed_headers" not in authz
    assert "with_request_body" not in authz


@pytest.mark.parametrize("stage0", ["local", "global"])
def test_rate_limit_calls_share_domain_and_fail_open_to_the_sidecar(stage0: str) -> None:
    config = build(dataclasses.replace(local_profile(), stage0=stage0))
    calls = [
        f["typed_config"]
        for f in _filters(config)
        if f["typed_config"]["@type"].endswith(".RateLimit")
    ]
    assert [rl["stage"] for rl in calls] == ([1] if stage0 == "local" else [0, 1])
    for rl in calls:
        assert rl["domain"] == "edge"
        assert rl["failure_mode_deny"] is False
        assert rl["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
        assert rl["timeout"] == "0.05s"
        assert rl["rate_limit_service"]["transport_api_version"] == "V3"
        assert rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "ratelimit"
        assert rl.get("rate_limited_status") is None  # 429, the default


def _ext_authz_metadata(descriptor_key: str, key: str) -> dict[str, Any]:
    return {
        "metadata": {
            "descriptor_key": descriptor_key,
            "metadata_key": {"key": "envoy.filters.http.ext_authz", "path": [{"key": key}]},
            "source": "DYNAMIC",
            # No default and no skip: without the key, the descriptor is not sent at all.
            "skip_if_absent": False,
        }
    }


SUBJECT = [_ext_authz_metadata("subject", "subject")]
ROUTE = [_ext_authz_metadata("rule", "rule")]
AUTHENTICATED_ADDRESS = [
    {
        "header_value_match": {
            "descriptor_key": "authenticated",
            "descriptor_value": "true",
            "expect_match": True,
            "headers": [{"name": "x-auth-subject", "present_match": True}],
        }
    },
    {"remote_address": {}},
]


def _vhost_rate_limits(config: dict[str, Any]) -> list[tuple[int, list[Any]]]:
    vhost = _hcm(config)["route_config"]["virtual_hosts"][0]
    return [(rl["stage"], rl["actions"]) for rl in vhost["rate_limits"]]


def test_one_call_after_authz_carries_subject_authenticated_address_and_route(
    config: dict[str, Any],
) -> None:
    assert _vhost_rate_limits(config) == [
        (1, SUBJECT),
        (1, AUTHENTICATED_ADDRESS),
        (1, ROUTE),
    ]
    vhost = _hcm(config)["route_config"]["virtual_hosts"][0]
    # The prefix routes (gRPC and the policy's body routes: test_grpc_config.py and
    # test_body_routes.py) inherit them too.
    assert all("rate_limits" not in r["route"] for r in vhost["routes"])
    routes = [
        r
        for r in vhost["routes"]
        if "prefix" in r["match"] and r["route"]["cluster"] != "grpc_upstream"
    ]
    assert [r["match"]["prefix"] for r in routes] == ["/", "/"]
    assert [r["route"]["cluster"] for r in routes] == ["upstream_body", "upstream"]
    assert all("rate_limits" not in r["route"] for r in routes)  # would replace the vhost's


def test_global_stage0_keys_the_client_address_and_drops_the_duplicate_after_authz() -> None:
    config = build(dataclasses.replace(local_profile(), stage0="global"))
    assert _vhost_rate_limits(config) == [
        (0, [{"remote_address": {}}]),
        (1, SUBJECT),
        (1, ROUTE),
    ]


def test_every_descriptor_has_a_rule_and_every_route_limit_names_an_authz_route() -> None:
    rules = yaml.safe_load((REPO / "config/ratelimit/rules/edge.yaml").read_text())
    keys = {d["key"] for d in rules["descriptors"]}
    assert keys == {"remote_address", "authenticated", "subject", "rule"}
    [authenticated] = [d for d in rules["descriptors"] if d["key"] == "authenticated"]
    assert authenticated["value"] == "true"
    assert [d["key"] for d in authenticated["descriptors"]] == ["remote_address"]
    policy = yaml.safe_load((REPO / "config/authz/demo.yaml").read_text())
    route_names = {route["name"] for route in policy["routes"]}
    limited = {d["value"] for d in rules["descriptors"] if d["key"] == "rule"}
    assert limited
    assert limited <= route_names


def test_the_subject_header_the_address_limit_reads_is_stripped_from_clients(
    config: dict[str, Any],
) -> None:
    # [authenticated=true, ...] must mean "ext_authz set it": a client's copy goes first.
    request = _mutations(config)["request_mutations"]
    assert {"remove": "x-auth-subject"} in request
    assert IDENTITY_HEADERS[0] == "x-auth-subject"


def test_health_check_answers_healthz_from_sidecar_health(config: dict[str, Any]) -> None:
    hc = _typed_filter(config, "HealthCheck")
    assert hc["pass_through_mode"] is False
    assert hc["headers"] == [{"name": ":path", "string_match": {"exact": "/healthz"}}]
    assert hc["cluster_min_healthy_percentages"] == {
        "authz": {"value": 100},
        "ratelimit": {"value": 100},
    }
    types = _filter_types(config)
    assert types.index("HealthCheck") < types.index("LocalRateLimit") < types.index("ExtAuthz")


def test_both_429s_get_the_json_denial_body(config: dict[str, Any]) -> None:
    [mapper] = [
        m
        for m in _hcm(config)["local_reply_config"]["mappers"]
        if m.get("body_format_override", {}).get("json_format", {}).get("error") == "rate_limited"
    ]
    either = mapper["filter"]["or_filter"]["filters"]
    assert {"response_flag_filter": {"flags": ["RL"]}} in either
    # local_ratelimit sets the RL flag only after its reply went through the mappers.
    [cel] = [f for f in either if "extension_filter" in f]
    expression = cel["extension_filter"]["typed_config"]["expression"]
    assert expression == "response.code_details == 'local_rate_limited'"


# --- headers --------------------------------------------------------------------------------


def _mutations(config: dict[str, Any]) -> dict[str, Any]:
    mutations: dict[str, Any] = _typed_filter(config, "HeaderMutation")["mutations"]
    return mutations


def test_security_headers_overwrite_every_response(config: dict[str, Any]) -> None:
    response = _mutations(config)["response_mutations"]
    added = {
        m["append"]["header"]["key"]: (m["append"]["header"]["value"], m["append"]["append_action"])
        for m in response
        if "append" in m
    }
    for name, value in SECURITY_HEADERS:
        assert added[name] == (value, "OVERWRITE_IF_EXISTS_OR_ADD")
    assert dict(SECURITY_HEADERS)["strict-transport-security"].startswith("max-age=31536000")
    removed = [m["remove"] for m in response if "remove" in m]
    assert "server" in removed
    assert {"remove_on_match": {"key_matcher": {"prefix": "x-envoy-"}}} in response
    # First in the chain, so its encoder runs on every local reply of a later filter.
    assert _filter_types(config)[0] == "HeaderMutation"


def test_no_server_header_of_envoys_own(config: dict[str, Any]) -> None:
    hcm = _hcm(config)
    assert hcm["server_header_transformation"] == "PASS_THROUGH"
    assert "server_name" not in hcm


def test_client_sent_identity_and_internal_headers_are_stripped_first(
    config: dict[str, Any],
) -> None:
    request = _mutations(config)["request_mutations"]
    removed = {m["remove"] for m in request if "remove" in m}
    assert set(IDENTITY_HEADERS) <= removed
    assert {"x-auth-subject", "x-auth-issuer", "x-auth-scopes", "x-auth-roles"} <= removed
    assert "x-auth-client-id" in removed
    assert {"remove_on_match": {"key_matcher": {"prefix": "x-envoy-"}}} in request
    xff = [m["append"] for m in request if "append" in m]
    assert xff == [
        {
            "header": {
                "key": "x-forwarded-for",
                "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


def test_connection_manager_is_hardened_for_the_edge(config: dict[str, Any]) -> None:
    hcm = _hcm(config)
    assert hcm["use_remote_address"] is True
    assert hcm["xff_num_trusted_hops"] == 0
    # An empty cidr_ranges would be "unset" (loopback and RFC 1918 internal); one
    # impossible /32 means no client is internal.
    assert hcm["internal_address_config"] == {
        "unix_sockets": False,
        "cidr_ranges": [{"address_prefix": "255.255.255.255", "prefix_len": 32}],
    }
    [early] = hcm["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [{"remove": "x-request-id"}]
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert hcm["generate_request_id"] is True
    assert hcm["preserve_external_request_id"] is False
    assert hcm["forward_client_cert_details"] == "SANITIZE"
    # The codec's limits: the request guard's (32 KiB, 64) plus the authz headroom.
    assert hcm["max_request_headers_kb"] == 32 + 16
    common = hcm["common_http_protocol_options"]
    assert common["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert common["max_headers_count"] == 64 + 8
    assert common["idle_timeout"] == "300s"
    for timeout in ("request_headers_timeout", "request_timeout", "stream_idle_timeout"):
        assert hcm[timeout].endswith("s")
    h2 = hcm["http2_protocol_options"]
    assert h2 == {
        "max_concurrent_streams": 100,
        "initial_stream_window_size": 65536,
        "initial_connection_window_size": 1048576,
    }
    assert _filters(config)[-1]["typed_config"]["suppress_envoy_headers"] is True


# --- TLS, admin, clusters -------------------------------------------------------------------


def test_listener_tls_is_modern(config: dict[str, Any]) -> None:
    tls = _downstream_tls(config)["common_tls_context"]
    params = tls["tls_params"]
    assert params["tls_minimum_protocol_version"] == "TLSv1_2"
    assert params["tls_maximum_protocol_version"] == "TLSv1_3"
    suites = [s for group in params["cipher_suites"] for s in group.strip("[]").split("|")]
    assert suites
    for suite in suites:
        assert suite.startswith("ECDHE-"), suite
        assert suite.endswith(("GCM-SHA256", "GCM-SHA384", "CHACHA20-POLY1305")), suite
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    [cert] = tls["tls_certificates"]
    assert cert["certificate_chain"]["filename"].endswith("/envoy.pem")
    assert cert["private_key"]["filename"].endswith("/envoy-key.pem")
    assert _downstream_tls(config)["require_client_certificate"] is False


def test_admin_only_on_loopback(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }


def test_admin_off_loopback_is_refused() -> None:
    with pytest.raises(ValueError, match="admin_address"):
        EnvoyParams(admin_address="0.0.0.0")


@pytest.mark.parametrize("name", ["authz", "ratelimit"])
def test_sidecar_clusters_http2_mtls_health_checked_and_bounded(
    config: dict[str, Any], name: str
) -> None:
    cluster = _cluster(config, name)
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    http2 = options["explicit_http_config"]["http2_protocol_options"]
    # A stream limit per connection makes Envoy open more connections under load, which
    # SO_REUSEPORT spreads over a multi-worker sidecar's processes.
    assert http2["max_concurrent_streams"] == 16
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    # The name Envoy dials the sidecar by: localhost on loopback, the service name in compose.
    expected = sidecar_server_name(endpoint["endpoint"]["address"]["socket_address"]["address"])
    assert tls["sni"] == expected
    context = tls["common_tls_context"]
    [cert] = context["tls_certificates"]
    assert cert["certificate_chain"]["filename"].endswith("/client.pem")
    assert cert["private_key"]["filename"].endswith("/client-key.pem")
    validation = context["validation_context"]
    assert validation["trusted_ca"]["filename"].endswith("/ca.pem")
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": expected}}
    ]
    assert cluster["connect_timeout"] == "0.25s"
    [thresholds] = cluster["circuit_breakers"]["thresholds"]
    assert thresholds["max_requests"] > 0
    assert thresholds["max_pending_requests"] > 0
    [check] = cluster["health_checks"]
    assert check["interval"] == "1s"
    assert check["no_traffic_interval"] == "1s"
    assert check["grpc_health_check"]["service_name"].startswith("envoy.service.")


def test_upstream_cluster_is_plain_http1(config: dict[str, Any]) -> None:
    cluster = _cluster(config, "upstream")
    assert "transport_socket" not in cluster
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http_protocol_options": {}}


def test_overload_manager_caps_connections_and_heap(config: dict[str, Any]) -> None:
    monitors = {m["name"] for m in config["overload_manager"]["resource_monitors"]}
    assert "envoy.resource_monitors.global_downstream_max_connections" in monitors
    assert "envoy.resource_monitors.fixed_heap" in monitors


# --- access log and tracing -----------------------------------------------------------------


def test_access_log_is_json_to_stdout_without_credentials(config: dict[str, Any]) -> None:
    [log] = _hcm(config)["access_log"]
    assert log["name"] == "envoy.access_loggers.stdout"
    fmt = log["typed_config"]["log_format"]["json_format"]
    for key in (
        "time",
        "request_id",
        "method",
        "path",
        "status",
        "response_flags",
        "duration_ms",
        "client_address",
        "upstream_host",
        "user_agent",
        "subject",
    ):
        assert key in fmt, key
    assert fmt["subject"].startswith("%DYNAMIC_METADATA(envoy.filters.http.ext_authz:subject)")
    assert fmt["path"].startswith("%PATH(NQ:")  # no query string
    text = yaml.safe_dump(fmt).lower()
    for secret in ("authorization", "cookie", "%req(:path)"):
        assert secret not in text


def test_tracing_is_off_until_a_collector_is_given() -> None:
    plain = build(local_profile())
    assert "tracing" not in _hcm(plain)
    traced = build(dataclasses.replace(local_profile(), otlp_collector="collector:4317"))
    provider = _hcm(traced)["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    # Envoy samples 1 % by default: each traced call costs the sidecars a span.
    assert _hcm(traced)["tracing"]["random_sampling"] == {"value": 1.0}
    cluster = _cluster(traced, "otel_collector")
    assert cluster["type"] == "STRICT_DNS"


# --- profiles and parameters ----------------------------------------------------------------


def test_local_profile_matches_the_stack_contract() -> None:
    config = build(local_profile())
    addresses = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]
        for c in config["static_resources"]["clusters"]
    }
    assert addresses == {
        "authz": {"address": "127.0.0.1", "port_value": 9001},
        "ratelimit": {"address": "127.0.0.1", "port_value": 9002},
        "upstream": {"address": "127.0.0.1", "port_value": 8081},
        "upstream_body": {"address": "127.0.0.1", "port_value": 8081},
        "grpc_upstream": {"address": "127.0.0.1", "port_value": 8083},
    }
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "127.0.0.1", "port_value": 8443}
    assert all(c["type"] == "STATIC" for c in config["static_resources"]["clusters"])
    files = _certificate_files(config)
    assert files == {
        ".dev/pki/ca.pem",
        ".dev/pki/envoy.pem",
        ".dev/pki/envoy-key.pem",
        ".dev/pki/client.pem",
        ".dev/pki/client-key.pem",
    }


def test_compose_profile_uses_service_names_and_mounted_pki() -> None:
    config = build(compose_profile())
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": 8443}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    for name in ("authz", "ratelimit", "upstream"):
        cluster = _cluster(config, name)
        assert cluster["type"] == "STRICT_DNS"
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"]["address"] == name
    assert all(f.startswith("/etc/edgeguard/pki/") for f in _certificate_files(config))


def _certificate_files(config: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "filename":
                found.add(value)
            else:
                found |= _certificate_files(value)
    elif isinstance(config, list):
        for item in config:
            found |= _certificate_files(item)
    return found


def test_every_address_port_and_path_is_a_parameter() -> None:
    params = dataclasses.replace(
        local_profile(pki_dir="/tmp/pki-x"),
        listener_address="127.0.0.9",
        listener_port=18443,
        admin_address="127.0.0.2",
        admin_port=19901,
        authz_host="127.0.0.3",
        authz_port=19001,
        ratelimit_host="127.0.0.4",
        ratelimit_port=19002,
        upstream_host="127.0.0.5",
        upstream_port=18081,
        grpc_upstream="127.0.0.6:18083",
    )
    text = render(params)
    for port in (8443, 9901, 9001, 9002, 8081, 8083):
        assert f"port_value: {port}\n" not in text, port
    assert "127.0.0.1\n" not in text
    assert ".dev/pki" not in text
    assert _certificate_files(build(params)) == {
        f"/tmp/pki-x/{name}"
        for name in ("ca.pem", "envoy.pem", "envoy-key.pem", "client.pem", "client-key.pem")
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listener_port": 0}, "listener_port"),
        ({"authz_port": 70000}, "authz_port"),
        ({"authz_timeout_ms": 0}, "authz_timeout_ms"),
        ({"max_headers_count": -1}, "max_headers_count"),
        ({"authz_host": ""}, "authz_host"),
        ({"admin_address": "10.0.0.1"}, "admin_address"),
        ({"otlp_collector": "no-port"}, "otlp_collector"),
        ({"grpc_upstream": "127.0.0.1"}, "grpc_upstream"),
        ({"listener_client_ca": None, "require_client_certificate": True}, "require_client"),
        ({"trace_sampling_percent": 101.0}, "trace_sampling_percent"),
        ({"sidecar_streams_per_connection": 0}, "sidecar_streams_per_connection"),
        ({"stage0": "remote"}, "stage0"),
        ({"stage0_burst": 0}, "stage0_burst"),
        ({"stage0_max_addresses": -1}, "stage0_max_addresses"),
    ],
)
def test_bad_parameters_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(local_profile(), **changes)


def test_build_is_pure_and_render_is_stable() -> None:
    params = local_profile()
    assert build(params) == build(params)
    assert render(params) == render(params)
    assert render(params).startswith(HEADER)
    assert "generated by devstack.envoy_config — edit that, not this" in HEADER
    assert yaml.safe_load(render(params)) == build(params)


# --- checked-in files and CLI ---------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(CHECKED_IN))
def test_checked_in_config_is_current(profile: str) -> None:
    path = CHECKED_IN[profile]
    assert path.read_text(encoding="utf-8") == render(PROFILES[profile]()), (
        f"{path.relative_to(REPO)} is stale: "
        f"python -m devstack.envoy_config --profile {profile} --out {path.relative_to(REPO)}"
    )


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_a_profile_with_overrides() -> None:
    code, out, _ = _run_cli("--profile", "local", "listener_port=18443", "listener_client_ca=none")
    assert code == 0
    expected = dataclasses.replace(local_profile(), listener_port=18443, listener_client_ca=None)
    assert out == render(expected)


def test_cli_pki_dir_moves_every_certificate() -> None:
    code, out, _ = _run_cli("--profile", "compose", "--pki-dir", "/run/pki")
    assert code == 0
    assert out == render(compose_profile(pki_dir="/run/pki"))


def test_cli_writes_and_checks_a_file(tmp_path: Path) -> None:
    target = tmp_path / "envoy.yaml"
    assert _run_cli("--profile", "local", "--out", str(target))[0] == 0
    assert target.read_text(encoding="utf-8") == render(local_profile())
    assert _run_cli("--profile", "local", "--out", str(target), "--check")[0] == 0
    code, _, err = _run_cli("--profile", "compose", "--out", str(target), "--check")
    assert code == 1
    assert "stale" in err


@pytest.mark.parametrize(
    "override", ["no_such_field=1", "listener_port=abc", "listener_port=0", "noequals"]
)
def test_cli_rejects_bad_overrides(override: str) -> None:
    code, out, err = _run_cli("--profile", "local", override)
    assert code == 2
    assert out == ""
    assert err.startswith("envoy_config: ")


def test_overrides_coerce_by_field_type() -> None:
    params = apply_overrides(
        local_profile(),
        [
            "require_client_certificate=true",
            "trace_sampling_percent=2.5",
            "otlp_collector=c:4317",
            "stage0=global",
            "stage0_burst=80",
        ],
    )
    assert (params.stage0, params.stage0_burst) == ("global", 80)
    assert params.require_client_certificate is True
    assert params.trace_sampling_percent == 2.5
    assert params.otlp_collector == "c:4317"


def test_cli_check_needs_a_file() -> None:
    with pytest.raises(SystemExit) as exit_info, redirect_stderr(io.StringIO()):
        main(["--profile", "local", "--check"])
    assert exit_info.value.code == 2


def test_durations_are_exact() -> None:
    config = build(dataclasses.replace(local_profile(), upstream_timeout_ms=1_234_567))
    route = _hcm(config)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["timeout"] == "1234.567s"
