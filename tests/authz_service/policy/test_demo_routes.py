"""The routes of config/authz/demo.yaml give the decisions of ARCHITECTURE.md section 4."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz_service.policy import CompiledPolicy, PolicySettings, evaluate
from authz_service.principal import Principal
from sidecar_runtime.config import read_yaml, validate_model
from tests.authz_service.policy.helpers import facts, principal

DEMO = Path(__file__).resolve().parents[3] / "config" / "authz" / "demo.yaml"

ALICE_READ = principal("alice", scopes=("users:read",))
ALICE_WRITE = principal("alice", scopes=("users:write",))
ALICE_NO_SCOPE = principal("alice")
ADMIN = principal("root", scopes=("users:read", "users:write"), roles=("admin",))
GREETER_READ = principal("carol", scopes=("greeter:read",))
SAY_HELLO = "/demo.v1.Greeter/SayHello"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
REFLECTION_ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture(scope="module")
def demo() -> CompiledPolicy:
    routes = read_yaml(DEMO)["routes"]
    return CompiledPolicy.compile(
        validate_model(PolicySettings, {"routes": routes}, DEMO), source=str(DEMO)
    )


@pytest.mark.parametrize(
    ("method", "path", "who", "reason"),
    [
        ("GET", "/api/v1/public/ping", None, "public"),
        ("GET", "/api/v1/users/alice", ALICE_READ, "allowed"),
        ("GET", "/api/v1/users/bob", ALICE_READ, "condition_false"),
        ("GET", "/api/v1/users/bob", ADMIN, "allowed"),
        ("GET", "/api/v1/users/alice", ALICE_NO_SCOPE, "insufficient_scope"),
        ("GET", "/api/v1/users/alice", None, "unauthenticated"),
        ("PUT", "/api/v1/users/alice", ALICE_WRITE, "allowed"),
        ("PUT", "/api/v1/users/alice", ALICE_READ, "insufficient_scope"),
        ("PUT", "/api/v1/users/bob", ALICE_WRITE, "condition_false"),
        ("PUT", "/api/v1/users/bob", ADMIN, "allowed"),
        ("DELETE", "/api/v1/users/alice", ALICE_WRITE, "role_denied"),
        ("DELETE", "/api/v1/users/bob", ADMIN, "allowed"),
        ("GET", "/api/v1/admin/stats", ALICE_READ, "role_denied"),
        ("GET", "/api/v1/admin/stats", ADMIN, "allowed"),
        ("POST", SAY_HELLO, GREETER_READ, "allowed"),
        ("POST", SAY_HELLO, ALICE_READ, "insufficient_scope"),
        ("POST", SAY_HELLO, None, "unauthenticated"),
        ("POST", REFLECTION, GREETER_READ, "role_denied"),
        ("POST", REFLECTION, ADMIN, "allowed"),
        ("POST", REFLECTION_ALPHA, GREETER_READ, "role_denied"),
        ("POST", REFLECTION_ALPHA, ADMIN, "allowed"),
    ],
)
def test_demo_decisions(
    demo: CompiledPolicy, method: str, path: str, who: Principal | None, reason: str
) -> None:
    request = facts(path, method, host="localhost:8443")
    match = demo.match(request)
    assert match is not None
    outcome = evaluate(match, who, request)
    assert outcome.reason == reason
    assert outcome.allowed is (reason in ("public", "allowed"))


def test_insufficient_scope_names_the_required_scope(demo: CompiledPolicy) -> None:
    request = facts("/api/v1/users/alice", "PUT")
    match = demo.match(request)
    assert match is not None
    assert evaluate(match, ALICE_READ, request).required_scopes == ("users:write",)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/users/alice"),
        ("HEAD", "/api/v1/public/ping"),
        ("GET", "/api/v1/public/ping/"),
        ("GET", "/api/v1/users"),
        ("GET", "/api/v1/users/alice/orders"),
        ("GET", "/api/v1/admin/stats2"),
        ("GET", "/api/v2/users/alice"),
        ("GET", "/"),
        ("POST", "/demo.v1.Greeter/SayGoodbye"),  # the Greeter's unlisted method
        ("GET", SAY_HELLO),
    ],
)
def test_anything_else_matches_no_rule(demo: CompiledPolicy, method: str, path: str) -> None:
    assert demo.match(facts(path, method)) is None
