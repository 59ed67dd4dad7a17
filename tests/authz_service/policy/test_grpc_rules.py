"""gRPC rules (`grpc: {service, method}`): compiled to POST /Service/Method, same checks."""

from __future__ import annotations

from typing import Any

import pytest

from authz_service.policy import PolicySettings, evaluate
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError
from tests.authz_service.policy.helpers import (
    SOURCE,
    compile_routes,
    facts,
    matched_name,
    must_match,
    principal,
    route,
)

GREETER = "demo.v1.Greeter"
REFLECTION_PATHS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def grpc_route(name: str, service: str, method: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "grpc": {"service": service, "method": method}, **extra}


POLICY = compile_routes(
    [
        grpc_route("say-hello", GREETER, "SayHello", scopes=["greeter:read"]),
        grpc_route("admin-any", "demo.v1.Admin", "*", roles=["admin"]),
        route("http", "/api/v1/ping"),
    ]
)


def test_grpc_rule_becomes_post_to_the_exact_method_path() -> None:
    settings = validate_model(
        PolicySettings, {"routes": [grpc_route("r", GREETER, "SayHello")]}, SOURCE
    )
    [rule] = settings.routes
    assert (rule.methods, rule.path) == (("POST",), "/demo.v1.Greeter/SayHello")


def test_listed_method_matches_only_as_post() -> None:
    assert matched_name(POLICY, "/demo.v1.Greeter/SayHello", "POST") == "say-hello"
    assert matched_name(POLICY, "/demo.v1.Greeter/SayHello", "GET") is None


@pytest.mark.parametrize(
    "path",
    [
        "/demo.v1.Greeter/SayGoodbye",  # another method of a listed service
        "/demo.v1.Greeter/sayhello",  # names are case-sensitive
        "/demo.v1.Greeter/SayHello/",
        "/demo.v1.Greeter",
        "/demo.v2.Greeter/SayHello",
        *REFLECTION_PATHS,
    ],
)
def test_unlisted_methods_and_reflection_are_denied(path: str) -> None:
    assert matched_name(POLICY, path, "POST") is None


def test_star_allows_every_method_of_one_service_only() -> None:
    for method in ("Stats", "Reset"):
        match = must_match(POLICY, facts(f"/demo.v1.Admin/{method}", "POST"))
        assert match.rule.name == "admin-any"
        assert match.params == {"grpc_method": method}
    assert matched_name(POLICY, "/demo.v1.Admin/Stats/x", "POST") is None


def test_reflection_is_allowed_only_when_a_rule_names_it() -> None:
    policy = compile_routes(
        [
            grpc_route("reflection", "grpc.reflection.v1.ServerReflection", "*", roles=["admin"]),
        ]
    )
    assert matched_name(policy, REFLECTION_PATHS[0], "POST") == "reflection"
    assert matched_name(policy, REFLECTION_PATHS[1], "POST") is None


def test_scopes_roles_and_conditions_apply_as_for_http_rules() -> None:
    policy = compile_routes(
        [
            grpc_route(
                "say-hello",
                GREETER,
                "SayHello",
                scopes=["greeter:read"],
                conditions=["token.sub != 'mallory'"],
            ),
            grpc_route("admin-any", "demo.v1.Admin", "*", roles=["admin"]),
        ]
    )
    hello = facts("/demo.v1.Greeter/SayHello", "POST")
    match = must_match(policy, hello)
    assert evaluate(match, None, hello).reason == "unauthenticated"
    assert evaluate(match, principal(), hello).reason == "insufficient_scope"
    assert evaluate(match, principal(scopes=("greeter:read",)), hello).allowed
    mallory = principal("mallory", scopes=("greeter:read",))
    assert evaluate(match, mallory, hello).reason == "condition_false"
    stats = facts("/demo.v1.Admin/Stats", "POST")
    admin = must_match(policy, stats)
    assert evaluate(admin, principal(), stats).reason == "role_denied"
    assert evaluate(admin, principal(roles=("admin",)), stats).allowed


def test_conditions_can_read_the_method_of_a_star_rule() -> None:
    policy = compile_routes(
        [
            grpc_route(
                "admin-read",
                "demo.v1.Admin",
                "*",
                conditions=["params.grpc_method.startsWith('Get')"],
            )
        ]
    )
    get = facts("/demo.v1.Admin/GetStats", "POST")
    reset = facts("/demo.v1.Admin/Reset", "POST")
    assert evaluate(must_match(policy, get), principal(), get).allowed
    assert not evaluate(must_match(policy, reset), principal(), reset).allowed


def test_same_method_as_a_grpc_and_an_http_rule_is_a_conflict() -> None:
    with pytest.raises(ConfigError) as err:
        compile_routes(
            [
                grpc_route("a", GREETER, "SayHello"),
                route("b", "/demo.v1.Greeter/SayHello", methods=("POST",)),
            ]
        )
    assert (err.value.key or "").startswith("routes[1]")


def _error(rule: dict[str, Any]) -> tuple[str | None, str]:
    with pytest.raises(ConfigError) as err:
        validate_model(PolicySettings, {"routes": [route("ok", "/ok"), rule]}, SOURCE)
    assert err.value.file == SOURCE
    return err.value.key, err.value.reason


@pytest.mark.parametrize(
    ("rule", "key", "reason"),
    [
        (
            grpc_route("r", "Greeter", "SayHello"),
            "routes[1].grpc.service",
            "service 'Greeter' must be a fully qualified proto service name, package and "
            "service (e.g. demo.v1.Greeter)",
        ),
        (
            grpc_route("r", "demo..Greeter", "SayHello"),
            "routes[1].grpc.service",
            "service 'demo..Greeter' must be a fully qualified proto service name, package "
            "and service (e.g. demo.v1.Greeter)",
        ),
        (
            grpc_route("r", "/demo.v1.Greeter", "SayHello"),
            "routes[1].grpc.service",
            "service '/demo.v1.Greeter' must be a fully qualified proto service name, package "
            "and service (e.g. demo.v1.Greeter)",
        ),
        (
            grpc_route("r", GREETER, "Say/Hello"),
            "routes[1].grpc.method",
            "method 'Say/Hello' must be a proto method name (e.g. SayHello), or \"*\" for "
            "every method of the service",
        ),
        (
            grpc_route("r", GREETER, "{m}"),
            "routes[1].grpc.method",
            "method '{m}' must be a proto method name (e.g. SayHello), or \"*\" for every "
            "method of the service",
        ),
        ({"name": "r", "grpc": {"service": GREETER}}, "routes[1].grpc.method", "Field required"),
        (
            {"name": "r", "grpc": {"service": GREETER, "method": "X", "stream": True}},
            "routes[1].grpc.stream",
            "unknown key",
        ),
        (
            {**grpc_route("r", GREETER, "SayHello"), "path": "/x"},
            "routes[1]",
            "`grpc` sets the path and method itself; remove `path`",
        ),
        (
            {**grpc_route("r", GREETER, "SayHello"), "methods": ["POST"]},
            "routes[1]",
            "`grpc` sets the path and method itself; remove `methods`",
        ),
        (
            {"name": "r", "methods": ["GET"]},
            "routes[1]",
            "a rule needs `path` and `methods`, or `grpc`: `path` is missing",
        ),
        (
            {"name": "r", "path": "/a"},
            "routes[1]",
            "a rule needs `path` and `methods`, or `grpc`: `methods` is missing",
        ),
    ],
)
def test_grpc_rule_errors_are_located(rule: dict[str, Any], key: str, reason: str) -> None:
    assert _error(rule) == (key, reason)


def test_a_validated_grpc_rule_validates_again_unchanged() -> None:
    # authz_service.settings builds PolicySettings from rules validated once already.
    settings = validate_model(
        PolicySettings, {"routes": [grpc_route("r", GREETER, "SayHello")]}, SOURCE
    )
    again = PolicySettings(routes=settings.routes)
    assert again.routes[0].path == "/demo.v1.Greeter/SayHello"
