"""Issue 15's hardening in the rendered config: body limits, upstream connections, header
limits with room for authz, spoofable headers, and ext_authz's mutation checks.

Each is checked on the YAML Envoy is given (every profile, the checked-in files too), so a
change to the generator cannot drop one quietly; tests/envoy/test_request_guard.py and
tests/e2e show the behaviour through a real Envoy.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_service.settings import IdentitySettings
from devstack.edge_hygiene import (
    SPOOFABLE_GROUPS,
    SPOOFABLE_REQUEST_HEADERS,
    check_spoofable,
    request_guard_lua,
)
from devstack.envoy_config import (
    AUTHZ_MUTABLE_HEADERS,
    PROFILES,
    EnvoyParams,
    apply_overrides,
    local_profile,
    render,
)

REPO = Path(__file__).resolve().parents[2]
AUTHZ_DEMO = REPO / "config" / "authz" / "demo.yaml"
Config = dict[str, Any]


def _rendered(params: EnvoyParams) -> Config:
    """What Envoy reads: the YAML text, parsed (not the builder's dict)."""
    config: Config = yaml.safe_load(render(params))
    return config


def _variants() -> dict[str, EnvoyParams]:
    variants = {name: make() for name, make in PROFILES.items()}
    variants["local+tracing"] = dataclasses.replace(
        local_profile(), otlp_collector="127.0.0.1:4317"
    )
    variants["local+route-limits"] = dataclasses.replace(
        local_profile(), route_body_limits=(("/api/v1/uploads/", 8 << 20),)
    )
    return variants


VARIANTS = _variants()


@pytest.fixture(params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[EnvoyParams, Config]:
    params = VARIANTS[request.param]
    return params, _rendered(params)


def _hcm(config: Config) -> Config:
    hcm: Config = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def _filter(config: Config, name: str) -> Config:
    [found] = [f["typed_config"] for f in _hcm(config)["http_filters"] if f["name"] == name]
    return found


def _filter_names(config: Config) -> list[str]:
    return [f["name"] for f in _hcm(config)["http_filters"]]


def _cluster(config: Config, name: str) -> Config:
    [found] = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def _common_options(cluster: Config) -> Config:
    options: Config = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    common: Config = options.get("common_http_protocol_options", {})
    return common


# --- item 5: ext_authz's mutation checks stay on ---------------------------------------------


def _checked_in() -> dict[str, Config]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "envoy").glob("*.yaml"))}


@pytest.mark.parametrize("source", ["rendered", *sorted(_checked_in())])
def test_ext_authz_mutation_validation_stays_on(
    source: str, rendered: tuple[EnvoyParams, Config]
) -> None:
    config = rendered[1] if source == "rendered" else _checked_in()[source]
    authz = _filter(config, "envoy.filters.http.ext_authz")
    assert authz["validate_mutations"] is True
    assert authz["failure_mode_allow"] is False
    rules = authz["decoder_header_mutation_rules"]
    # Only the identity headers and the decision id; a mutation outside them fails the
    # request (never applied, never silently dropped); no routing, system or x-envoy-*.
    assert rules["disallow_all"] is True
    assert rules["disallow_is_error"] is True
    assert rules["disallow_system"] is True
    assert not rules.get("allow_all_routing", False)
    assert not rules.get("allow_envoy", False)
    allowed = re.compile(rules["allow_expression"]["regex"])
    for name in AUTHZ_MUTABLE_HEADERS:
        assert allowed.fullmatch(name), name
    for name in ("host", ":path", ":authority", "x-envoy-original-path", "x-forwarded-for",
                 "x-auth-subject-extra", "authorization", "x-decision-idx"):  # fmt: skip
        assert not allowed.fullmatch(name), name


def test_the_mutation_rules_allow_exactly_what_authz_sends() -> None:
    """The headers authz_service sets or removes (its defaults and the demo config) are the
    ones Envoy lets it touch: otherwise every allow would fail closed."""
    demo_identity = yaml.safe_load(AUTHZ_DEMO.read_text()).get("identity", {})
    for settings in (IdentitySettings(), IdentitySettings(**demo_identity)):
        sent = {*settings.headers.all(), settings.decision_id_header}
        assert sent == set(AUTHZ_MUTABLE_HEADERS)
    # No name twice: the headroom check counts the tuple.
    assert len(AUTHZ_MUTABLE_HEADERS) == len(sent)


# --- item 3: header limits with room for what an allow adds ---------------------------------


def test_codec_limits_leave_the_authz_headroom_above_the_request_guard(
    rendered: tuple[EnvoyParams, Config],
) -> None:
    params, config = rendered
    hcm = _hcm(config)
    assert hcm["common_http_protocol_options"]["max_headers_count"] == (
        params.max_headers_count + params.authz_headroom_count
    )
    assert hcm["max_request_headers_kb"] == params.max_request_headers_kb + params.authz_headroom_kb
    assert params.authz_headroom_count >= len(AUTHZ_MUTABLE_HEADERS)
    guard = _filter(config, "envoy.filters.http.lua")
    assert guard["default_source_code"]["inline_string"] == request_guard_lua(
        max_count=params.max_headers_count, max_bytes=params.max_request_headers_kb * 1024
    )
    # Before anything that calls a sidecar or reads the body.
    names = _filter_names(config)
    assert names.index("envoy.filters.http.lua") < names.index("envoy.filters.http.ext_authz")
    assert names.index("envoy.filters.http.lua") < names.index("envoy.filters.http.buffer")


def test_the_guard_has_the_limits_it_was_given() -> None:
    source = request_guard_lua(max_count=12, max_bytes=3456)
    assert "local MAX_COUNT = 12\n" in source
    assert "local MAX_BYTES = 3456\n" in source
    assert '"431"' in source
    assert '"400"' in source


def test_headroom_smaller_than_an_allow_is_refused() -> None:
    with pytest.raises(ValueError, match="authz_headroom_count"):
        dataclasses.replace(local_profile(), authz_headroom_count=len(AUTHZ_MUTABLE_HEADERS) - 1)


def test_local_replies_for_431_and_413_are_json(rendered: tuple[EnvoyParams, Config]) -> None:
    mappers = _hcm(rendered[1])["local_reply_config"]["mappers"]
    formats = [
        m["body_format_override"]["json_format"]["error"]
        for m in mappers
        if "body_format_override" in m
    ]
    assert {"payload_too_large", "request_header_fields_too_large"} <= set(formats)


# --- item 1: the body limit and upstream connections ------------------------------------------


def test_every_body_is_buffered_whole_with_a_limit(rendered: tuple[EnvoyParams, Config]) -> None:
    params, config = rendered
    assert params.max_request_body_bytes == 1 << 20  # ARCHITECTURE.md section 4
    buffer = _filter(config, "envoy.filters.http.buffer")
    assert buffer["max_request_bytes"] == params.max_request_body_bytes
    names = _filter_names(config)
    # Before ext_authz, whose allow clears the route cache: the route is then chosen
    # knowing the content-length the buffer filter gave every body.
    assert names.index("envoy.filters.http.buffer") < names.index("envoy.filters.http.ext_authz")
    assert _filter(config, "envoy.filters.http.ext_authz")["clear_route_cache"] is True


def _http_routes(config: Config) -> list[Config]:
    """The HTTP API's prefix routes: the gRPC route (tests/envoy/test_grpc_config.py) and
    the policy's body routes (tests/envoy/test_body_routes.py) left out."""
    routes: list[Config] = _hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return [
        r for r in routes if "prefix" in r["match"] and r["route"]["cluster"] != "grpc_upstream"
    ]


def test_route_body_limits_override_per_prefix_longest_first() -> None:
    params = dataclasses.replace(local_profile(), route_body_limits=(("/a/", 10), ("/a/bb/", 20)))
    routes = _http_routes(_rendered(params))
    limits = [
        (r["match"]["prefix"], r.get("typed_per_filter_config", {})
         .get("envoy.filters.http.buffer", {}).get("buffer", {}).get("max_request_bytes"))
        for r in routes
    ]  # fmt: skip
    assert limits == [
        ("/a/bb/", 20),
        ("/a/bb/", 20),
        ("/a/", 10),
        ("/a/", 10),
        ("/", None),
        ("/", None),
    ]


def test_requests_with_a_body_take_the_cluster_that_never_reuses_a_connection(
    rendered: tuple[EnvoyParams, Config],
) -> None:
    config = rendered[1]
    routes = _http_routes(config)
    for body_route, plain_route in zip(routes[::2], routes[1::2], strict=True):
        assert body_route["route"]["cluster"] == "upstream_body"
        [has_body] = body_route["match"]["headers"]
        pattern = re.compile(has_body["string_match"]["safe_regex"]["regex"])
        assert has_body["name"] == "content-length"
        assert [bool(pattern.fullmatch(v)) for v in ("1", "1048576", "0", "", "01")] == [
            True, True, False, False, False,
        ]  # fmt: skip
        assert plain_route["route"]["cluster"] == "upstream"
        assert "headers" not in plain_route["match"]
    body = _common_options(_cluster(config, "upstream_body"))
    assert body["max_requests_per_connection"] == 1
    plain = _common_options(_cluster(config, "upstream"))
    assert "max_requests_per_connection" not in plain
    for options in (body, plain):
        assert options["idle_timeout"] == "30s"  # the demo upstream keeps its 75 s


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_request_body_bytes": 0}, "max_request_body_bytes"),
        ({"route_body_limits": (("api", 10),)}, "route_body_limits"),
        ({"route_body_limits": (("/api", 0),)}, "route_body_limits"),
        ({"upstream_body_requests_per_connection": 0}, "upstream_body_requests_per_connection"),
    ],
)
def test_bad_body_parameters_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(local_profile(), **changes)


def test_tuple_overrides_from_the_command_line() -> None:
    params = apply_overrides(
        local_profile(),
        ["route_body_limits=/up/=10485760,/x=5", "spoofable_request_headers=x-a,x-b-*"],
    )
    assert params.route_body_limits == (("/up/", 10485760), ("/x", 5))
    assert params.spoofable_request_headers == ("x-a", "x-b-*")
    with pytest.raises(ValueError, match="PREFIX=BYTES"):
        apply_overrides(local_profile(), ["route_body_limits=/up/"])


# --- item 2: spoofable headers ----------------------------------------------------------------


def test_every_spoofable_header_is_stripped_by_the_first_filter(
    rendered: tuple[EnvoyParams, Config],
) -> None:
    params, config = rendered
    assert _filter_names(config)[0] == "envoy.filters.http.header_mutation"
    mutations = _filter(config, "envoy.filters.http.header_mutation")["mutations"]
    request = mutations["request_mutations"]
    removed = {m["remove"] for m in request if "remove" in m}
    prefixes = {
        m["remove_on_match"]["key_matcher"]["prefix"] for m in request if "remove_on_match" in m
    }
    for name in params.spoofable_request_headers:
        if name.endswith("*"):
            assert name[:-1] in prefixes, name
        else:
            assert name in removed, name
    # Envoy's own: x-forwarded-proto is set at the edge, XFCC sanitized, XFF rewritten.
    assert _hcm(config)["forward_client_cert_details"] == "SANITIZE"
    assert {"x-forwarded-for", "x-forwarded-proto"}.isdisjoint(removed)


def test_the_list_covers_the_headers_issue_15_names() -> None:
    named = {
        "x-http-method-override", "x-http-method", "x-method-override", "true-client-ip",
        "cf-connecting-ip", "x-real-ip", "x-original-uri", "x-original-url", "x-rewrite-url",
        "x-forwarded-uri", "x-forwarded-path", "x-host", "x-forwarded-server", "x-client-cert",
        "x-forwarded-host", "x-forwarded-prefix", "x-forwarded-port", "x-client-ip",
        "x-cluster-client-ip", "forwarded", "x-proxyuser-ip", "fastly-client-ip",
        "x-arr-clientcert", "x-original-host", "x-original-method", "x-http-destinationurl",
    }  # fmt: skip
    assert named <= set(SPOOFABLE_REQUEST_HEADERS)
    assert "x-ssl-client-*" in SPOOFABLE_REQUEST_HEADERS  # x-ssl-client-cert and its kin
    assert len(SPOOFABLE_REQUEST_HEADERS) == len(set(SPOOFABLE_REQUEST_HEADERS))
    assert sum(len(group) for group in SPOOFABLE_GROUPS.values()) == len(SPOOFABLE_REQUEST_HEADERS)


@pytest.mark.parametrize(
    "bad", ["Authorization", "host", "x-forwarded-*", "content-*", "x y", "", "x-request-id"]
)
def test_a_spoofable_list_that_names_a_needed_header_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="spoofable_request_headers"):
        check_spoofable((bad,))
    with pytest.raises(ValueError, match="spoofable_request_headers"):
        dataclasses.replace(local_profile(), spoofable_request_headers=(bad,))
