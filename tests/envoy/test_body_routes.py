"""Body routes: the policy's rules with a `body` schema, as Envoy routes (devstack.configs).

The policy file is the single source: these tests fail when the rendered config and the
policy disagree, and when a route's path regex and the policy's matcher disagree about a
path. Envoy's RE2 and Python's `re` read these regexes the same way (no look-around, no
backreferences), so Python stands in for Envoy here; tests/envoy/test_body_edge.py sends
the same corpus through a real Envoy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_service.policy import BadRequestPath, CompiledPolicy, RequestFacts
from authz_service.settings import AuthzSettings
from devstack.configs import (
    AUTHZ_DEMO,
    SEGMENT_RAW_CLASS,
    BodyRoute,
    body_routes,
    load_policy,
    template_regex,
)
from devstack.envoy_config import (
    BUFFER_FILTER,
    EXT_AUTHZ_FILTER,
    PROFILES,
    apply_overrides,
    build,
    local_profile,
    main,
)
from sidecar_runtime.errors import ConfigError

METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD")
# Paths the policy refuses outright (400) and a body route may still match: harmless, the
# sidecar refuses them whatever Envoy forwards (docs/edge.md, "Body routes").
REFUSED_BUT_ROUTED = frozenset(
    {
        "encoded_separator",
        "path_parameter",
        "control_char",
        "invalid_utf8",
        "dot_segment",
        "too_long",
    }
)

# One path segment, written every way a client might: percent-encoded letters, encoded
# separators, dot segments, controls, UTF-8 (valid, overlong, truncated, surrogates, C1),
# raw non-ASCII, matrix parameters, bad escapes, characters some servers reinterpret.
SEGMENTS = (
    "alice", "al%69ce", "%61lice", "%41lice", "~alice", "a:b@c", "a!$&'()*+,=b", "a-b_c.d",
    "a|b", 'a"b', "a<b>", "a`b", "a{b}", "a[b]", "a^b", "%20", "%25", "%2525", "a%2Fb",
    "a%2fb", "a%5Cb", "a%5cb", "a;b", "a%3Bb", "a%3bb", ".", "..", "...", "..a", "%2e",
    "%2E%2e", ".%2e", "%2e.", "%00", "a%00b", "%0a", "%0D", "%7f", "%7F", "%c2%80",
    "a%C2%9Fb", "%C2%A0", "%C3%A9", "%c3%a9", "%e2%82%ac", "%F0%9F%98%80", "%FF", "%C3",
    "%C0%AF", "%ED%A0%80", "%F4%90%80%80", "a%", "a%2", "a%zz", "a%%41", "é", "\u20ac",
    "a b", "a\\b", "a#b", "a\tb", "",
)  # fmt: skip
PREFIXES = ("/api/v1/users/", "/api/v1//users/", "/API/v1/users/", "/api/v1/%75sers/")
SUFFIXES = ("", "/", "/notes", "/notes/", "//notes", "/NOTES", "/not%65s", "/notes/x", "?x=/..")
OTHER_PATHS = (
    "/", "", "*", "api/v1/users/alice", "/api/v1/users", "/api/v1/users/",
    "/api/v1/users/alice/../bob", "/api/v1/users/./alice", "/api/v1/users/alice%2Fnotes",
    "/api/v1/users/alice/notes/..", "/api/v1/reports/1", "/api/v1/admin/stats",
    "/api/v1/users/alice;x/notes", "/api/v1/users/alice?", "/api/v1/users/alice#frag",
    "/demo.v1.Greeter/SayHello", "/api/v1/users/" + "a" * 5000,
)  # fmt: skip


def corpus() -> Iterator[str]:
    for prefix in PREFIXES:
        for segment in SEGMENTS:
            for suffix in SUFFIXES:
                yield prefix + segment + suffix
    yield from OTHER_PATHS


def _facts(method: str, path: str, host: str = "localhost") -> RequestFacts:
    return RequestFacts(
        method=method,
        raw_path=path,
        host=host,
        headers={},
        client_address="127.0.0.1",
        peer_principal="",
        request_id="test",
    )


def policy_choice(policy: CompiledPolicy, method: str, path: str, host: str) -> tuple[Any, str]:
    """(the rule the policy picks or None, the BadRequestPath reason or "")."""
    try:
        match = policy.match(_facts(method, path, host))
    except BadRequestPath as refused:
        return None, refused.reason
    return (match.rule if match is not None else None), ""


def envoy_choice(
    routes: tuple[BodyRoute, ...], method: str, path: str, host: str
) -> BodyRoute | None:
    """The first body route that takes the request, as Envoy matches routes: the regex on
    the whole path without its query, then the headers."""
    path_only = path.partition("?")[0]
    for route in routes:
        if not re.fullmatch(route.path_regex, path_only):
            continue
        if route.methods and method not in route.methods:
            continue
        if route.authority_regex is not None and not re.fullmatch(route.authority_regex, host):
            continue
        return route
    return None


def assert_agreement(
    settings: AuthzSettings,
    paths: list[str],
    hosts: tuple[str, ...] = ("localhost",),
    rule_set: str = "",
) -> set[str]:
    """For every path, method and host, under the rule set `rule_set` ("" the default):
    the rule the policy picks has its route when it has a body, and a route takes its
    rules' requests only, apart from the harmless cases, which are returned: the policy's
    refusal reason for a path it refuses (400); "shadowed:<rule>" where a more specific
    rule without a body wins; "other rule set" for a route only another set's rules need
    (the body is forwarded and not used)."""
    if rule_set:
        [chosen] = [s for s in settings.rule_sets if s.name == rule_set]
        policy_settings, prefix = chosen.policy(), f"{rule_set}/"
    else:
        policy_settings, prefix = settings.policy(), ""
    policy = CompiledPolicy.compile(policy_settings, source=str(AUTHZ_DEMO))
    routes = body_routes(settings)
    harmless: set[str] = set()
    for path in paths:
        for method in METHODS:
            for host in hosts:
                rule, refusal = policy_choice(policy, method, path, host)
                route = envoy_choice(routes, method, path, host)
                where = f"{method} {path!r} on {host}"
                if rule is not None and rule.body is not None:
                    assert route is not None, f"{where}: rule {rule.name} has no body route"
                    assert prefix + rule.name in route.rules, (where, route.rules)
                    assert route.max_bytes >= rule.body.max_bytes, where
                elif route is not None:
                    mine = [
                        r
                        for r in route.rules
                        if r.startswith(prefix) and "/" not in r[len(prefix) :]
                    ]
                    if not mine:
                        harmless.add("other rule set")
                        continue
                    assert refusal or rule is not None, f"{where}: routed to {route.rules}"
                    harmless.add(refusal or f"shadowed:{rule.name}")
    return harmless


def test_the_demo_routes_agree_with_the_policy_over_a_corpus_of_tricky_paths() -> None:
    paths = list(corpus())
    assert len(paths) > 2000
    harmless = assert_agreement(load_policy(), paths)
    # The only disagreements: paths the sidecar refuses with 400 whatever Envoy forwards.
    assert harmless <= REFUSED_BUT_ROUTED, harmless
    # ... and the corpus does reach both rules, so the agreement is not vacuous.
    policy = CompiledPolicy.compile(load_policy().policy(), source="demo")
    chosen = {
        getattr(policy_choice(policy, m, p, "localhost")[0], "name", None)
        for p in paths
        for m in ("PUT", "POST")
    }
    assert {"put-user", "post-note"} <= chosen


def test_the_raw_character_class_is_what_the_policy_accepts_raw_in_a_segment() -> None:
    policy = CompiledPolicy.compile(load_policy().policy(), source="demo")
    for code in range(256):
        char = chr(code)
        path = f"/api/v1/users/a{char}b"
        try:
            accepted = policy.match(_facts("PUT", path)) is not None
        except BadRequestPath:
            accepted = False
        in_class = re.fullmatch(SEGMENT_RAW_CLASS, char) is not None
        # "?" ends the path and "/" splits it: the policy sees other paths there.
        if char not in "?/":
            assert in_class == accepted, (code, char)


def _rule(name: str, path: str, methods: list[str], limit: int | None, **extra: Any) -> Any:
    rule = {"name": name, "methods": methods, "path": path, **extra}
    if limit is not None:
        rule["body"] = {"max_bytes": limit, "schema": {"type": "object"}}
    return rule


SYNTHETIC = {
    "routes": [
        _rule("any-thing", "/t/{id}", ["*"], 10),
        _rule("put-me", "/t/me", ["PUT"], 20),
        _rule("get-me", "/t/me", ["GET", "HEAD"], None),
        _rule("files", "/f/{rest...}", ["PUT", "POST"], 30),
        _rule("file-meta", "/f/{dir}/meta", ["PUT"], 40),
        _rule("literal-chars", "/x/a.b*c+d(e)$f!g", ["POST"], 50),
        _rule("on-host", "/h/{id}", ["PUT"], 60, hosts=["api.example.com"]),
        _rule("on-wildcard", "/h/{id}", ["PUT"], 70, hosts=["*.example.com"]),
        _rule("any-host", "/h/{id}", ["PUT"], 80),
    ],
    "rule_sets": [
        {
            "name": "tenant-b",
            "select": {"tenant": "b"},
            "routes": [_rule("put-me", "/t/me", ["PUT"], 25), _rule("root", "/", ["POST"], 5)],
        }
    ],
}


def _synthetic() -> AuthzSettings:
    return AuthzSettings.model_validate(SYNTHETIC)


def test_routes_follow_the_policy_precedence_and_merge_across_rule_sets() -> None:
    routes = body_routes(_synthetic())
    assert [(r.rules, r.methods, r.max_bytes) for r in routes] == [
        # Host groups first: exact names, then wildcards, then any host.
        (("on-host",), ("PUT",), 60),
        (("on-wildcard",), ("PUT",), 70),
        # Then segment by segment: literal before {param} before {rest...}.
        (("tenant-b/root",), ("POST",), 5),
        # One match in two rule sets: one route, the larger limit (the sidecar applies 20).
        (("put-me", "tenant-b/put-me"), ("PUT",), 25),
        (("literal-chars",), ("POST",), 50),
        (("any-host",), ("PUT",), 80),
        (("any-thing",), (), 10),  # any method: after a listed one
        (("file-meta",), ("PUT",), 40),
        (("files",), ("POST", "PUT"), 30),
    ]
    assert routes[0].authority_regex is not None
    assert re.fullmatch(routes[0].authority_regex, "API.example.com.")
    assert routes[1].authority_regex is not None
    assert not re.fullmatch(routes[1].authority_regex, "example.com")


def test_synthetic_routes_agree_with_the_policy() -> None:
    paths = [
        "/t/me", "/t/m%65", "/t/you", "/t/", "/t/me/", "/f/a", "/f/a/meta", "/f/a/b/meta",
        "/f/a/meta/x", "/f/%2e%2e/meta", "/x/a.b*c+d(e)$f!g", "/x/a%2Eb%2ac%2Bd%28e%29%24f%21g",
        "/x/aXb*c+d(e)$f!g", "/x/a.bbc+d(e)$f!g", "/h/1", "/h/1/", "/", "/f", "/f/",
    ]  # fmt: skip
    hosts = ("api.example.com", "API.Example.COM.", "a.example.com", "x.y.example.com",
             "example.com", "other.org", "localhost")  # fmt: skip
    harmless = assert_agreement(_synthetic(), paths, hosts)
    # GET and HEAD /t/me: `get-me` is more specific than `any-thing`, which takes any
    # method; Envoy forwards the body and the sidecar does not use it. POST /: a route for
    # tenant-b's rule only.
    assert harmless - REFUSED_BUT_ROUTED == {"shadowed:get-me", "other rule set"}
    in_tenant_b = assert_agreement(_synthetic(), paths, hosts, rule_set="tenant-b")
    assert in_tenant_b - REFUSED_BUT_ROUTED == {"other rule set"}


def test_a_literal_matches_raw_or_percent_encoded_in_either_case() -> None:
    regex = template_regex("/api/v1/users/{user_id}/notes")
    for path in ("/api/v1/users/a/notes", "/%61pi/v%31/users/a/n%6Ftes", "/api/v1/users/a/n%6ftes"):
        assert re.fullmatch(regex, path), path
    for path in ("/api/v1/users/a/Notes", "/api/v1/users//notes", "/api/v1/users/a/notes/"):
        assert not re.fullmatch(regex, path), path
    rest = template_regex("/files/{path...}")
    assert re.fullmatch(rest, "/files/a/b/c")
    assert not re.fullmatch(rest, "/files/")
    assert not re.fullmatch(rest, "/files/a//b")
    assert template_regex("/") == "/"


# --- the rendered config against the policy file ----------------------------------------------


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes: list[dict[str, Any]] = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _forwarded_bodies(config: dict[str, Any]) -> dict[str, tuple[dict[str, Any], int]]:
    """Route name -> (its match, the body bytes ext_authz gets), for every route sending one."""
    found = {}
    for route in _routes(config):
        per_filter = route.get("typed_per_filter_config", {})
        check = per_filter.get(EXT_AUTHZ_FILTER, {}).get("check_settings", {})
        if "with_request_body" in check:
            body = check["with_request_body"]
            assert body["allow_partial_message"] is False
            assert body["pack_as_bytes"] is True
            buffer = per_filter[BUFFER_FILTER]["buffer"]["max_request_bytes"]
            assert buffer == body["max_request_bytes"], route["name"]
            assert route["route"]["cluster"] == "upstream_body"
            found[route["name"]] = (route["match"], body["max_request_bytes"])
    return found


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_body_rule_of_the_policy_file_has_exactly_its_route(profile: str) -> None:
    config = build(PROFILES[profile]())
    rules = [r for r in load_policy().routes if r.body is not None]
    assert {r.name for r in rules} == {"put-user", "post-note"}  # the demo's
    expected = {}
    for rule in rules:
        assert rule.body is not None
        match = {
            "safe_regex": {"regex": template_regex(rule.path)},
            "headers": [{"name": ":method", "string_match": {"exact": m}} for m in rule.methods],
        }
        expected[f"body:{rule.name}"] = (match, rule.body.max_bytes)
    assert _forwarded_bodies(config) == expected
    # Nothing else sends a body: not the filter, not the virtual host.
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [authz] = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == EXT_AUTHZ_FILTER]
    assert "with_request_body" not in authz["typed_config"]
    assert "typed_per_filter_config" not in hcm["typed_config"]["route_config"]["virtual_hosts"][0]


def test_body_routes_sit_after_grpc_and_before_the_prefix_routes() -> None:
    params = dataclasses.replace(local_profile(), route_body_limits=(("/api/", 99),))
    names = [r.get("name", r["match"].get("prefix")) for r in _routes(build(params))]
    assert names[1:3] == ["body:put-user", "body:post-note"]
    assert _routes(build(params))[0]["route"]["cluster"] == "grpc_upstream"
    assert names[3:] == ["/api/", "/api/", "/", "/"]


def test_a_changed_policy_changes_the_render(tmp_path: Path) -> None:
    text = AUTHZ_DEMO.read_text().replace("max_bytes: 4096", "max_bytes: 1234")
    changed = tmp_path / "authz.yaml"
    changed.write_text(text)
    config = build(local_profile(authz_config=changed))
    assert _forwarded_bodies(config)["body:put-user"][1] == 1234


def test_a_bad_policy_file_stops_the_render_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "authz.yaml"
    bad.write_text("routes:\n  - name: x\n    methods: [PUT]\n    path: /a/\n")
    with pytest.raises(ConfigError, match=r"routes\[0\]\.path"):
        load_policy(bad)
    assert main(["--profile", "local", "--authz-config", str(bad)]) == 2


def test_body_routes_cannot_be_overridden_on_the_command_line() -> None:
    with pytest.raises(ValueError, match="--authz-config"):
        apply_overrides(local_profile(), ["body_routes=/x"])


def test_a_body_route_needs_names_a_path_and_a_limit() -> None:
    for changes in ({"rules": ()}, {"path_regex": "x"}, {"max_bytes": 0}, {"max_bytes": True}):
        fields = {"rules": ("r",), "path_regex": "/x", "methods": (), "authority_regex": None,
                  "max_bytes": 1, **changes}  # fmt: skip
        with pytest.raises(ValueError, match="body route"):
            BodyRoute(**fields)  # type: ignore[arg-type]
