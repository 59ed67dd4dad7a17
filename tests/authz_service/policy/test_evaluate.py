"""evaluate(): public, authentication, scopes (all of), roles (any of), CEL conditions."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from authz_service.policy import (
    CompiledPolicy,
    PolicyOutcome,
    RequestFacts,
    evaluate,
    request_variables,
    token_variables,
)
from authz_service.principal import Principal
from tests.authz_service.policy.helpers import compile_routes, facts, must_match, principal, route

OWNER_OR_ADMIN = "params.user_id == token.sub || 'admin' in token.roles"


def decide(
    policy: CompiledPolicy, who: Principal | None, request: RequestFacts, **kw: Any
) -> PolicyOutcome:
    return evaluate(must_match(policy, request), who, request, **kw)


def single(**rule: Any) -> CompiledPolicy:
    return compile_routes([route("r", "/users/{user_id}", **rule)])


def test_public_rule_allows_without_principal() -> None:
    policy = single(public=True)
    outcome = decide(policy, None, facts("/users/x"))
    assert outcome == PolicyOutcome(True, "public", "r")


def test_public_rule_allows_with_principal_too() -> None:
    assert decide(single(public=True), principal(), facts("/users/x")).reason == "public"


def test_public_rule_conditions_still_apply() -> None:
    policy = single(public=True, conditions=["request.query['lang'][0] == 'en'"])
    assert decide(policy, None, facts("/users/x?lang=en")).reason == "public"
    denied = decide(policy, None, facts("/users/x?lang=de"))
    assert (denied.allowed, denied.reason) == (False, "condition_false")
    missing = decide(policy, None, facts("/users/x"))
    assert (missing.allowed, missing.reason) == (False, "condition_error")


def test_no_principal_on_protected_rule_is_unauthenticated() -> None:
    outcome = decide(single(), None, facts("/users/x"))
    assert outcome == PolicyOutcome(False, "unauthenticated", "r")


def test_rule_without_requirements_allows_any_principal() -> None:
    assert decide(single(), principal(), facts("/users/x")) == PolicyOutcome(True, "allowed", "r")


def test_scopes_are_all_of_and_report_what_is_required() -> None:
    policy = single(scopes=["users:read", "users:list"])
    both = principal(scopes=("users:read", "users:list", "other"))
    assert decide(policy, both, facts("/users/x")).allowed
    outcome = decide(policy, principal(scopes=("users:read",)), facts("/users/x"))
    assert outcome == PolicyOutcome(
        False, "insufficient_scope", "r", ("users:read", "users:list"), "missing: users:list"
    )


def test_scopes_are_case_sensitive() -> None:
    outcome = decide(
        single(scopes=["users:read"]), principal(scopes=("Users:Read",)), facts("/users/x")
    )
    assert outcome.reason == "insufficient_scope"


def test_roles_are_any_of() -> None:
    policy = single(roles=["admin", "support"])
    assert decide(policy, principal(roles=("support",)), facts("/users/x")).allowed
    denied = decide(policy, principal(roles=("user",)), facts("/users/x"))
    assert denied == PolicyOutcome(False, "role_denied", "r")
    assert not decide(policy, principal(), facts("/users/x")).allowed


def test_scope_is_checked_before_role() -> None:
    outcome = decide(single(scopes=["s"], roles=["admin"]), principal(), facts("/users/x"))
    assert outcome.reason == "insufficient_scope"


@pytest.mark.parametrize(
    ("who", "path", "allowed"),
    [
        (principal("alice"), "/users/alice", True),  # owner
        (principal("alice"), "/users/bob", False),  # IDOR: A on B
        (principal("root", roles=("admin",)), "/users/bob", True),  # admin
        (principal("alice", roles=("support",)), "/users/bob", False),
        (principal("alice"), "/users/ALICE", False),  # exact comparison
        (principal("a/b"), "/users/a%2Fb", None),  # 400 before policy
    ],
)
def test_ownership_condition(who: Principal, path: str, allowed: bool | None) -> None:
    policy = single(scopes=["users:read"], conditions=[OWNER_OR_ADMIN])
    who = principal(who.subject, roles=tuple(who.roles), scopes=("users:read",))
    if allowed is None:
        with pytest.raises(Exception, match="encoded_separator"):
            policy.match(facts(path))
        return
    outcome = decide(policy, who, facts(path))
    assert outcome.allowed is allowed
    assert outcome.reason == ("allowed" if allowed else "condition_false")


def test_conditions_run_in_order_and_report_the_failing_index() -> None:
    policy = single(conditions=["true", "token.sub == 'bob'", "1 / 0 == 1"])
    outcome = decide(policy, principal("alice"), facts("/users/x"))
    assert (outcome.reason, outcome.detail) == ("condition_false", "conditions[1] is false")
    outcome = decide(policy, principal("bob"), facts("/users/x"))
    assert outcome.reason == "condition_error"
    assert outcome.detail.startswith("conditions[2]: ")
    assert "divide by zero" in outcome.detail.lower()


def test_missing_claim_is_a_condition_error_and_denies() -> None:
    policy = single(conditions=["token.tenant == 'acme'"])
    outcome = decide(policy, principal(), facts("/users/x"))
    assert (outcome.allowed, outcome.reason) == (False, "condition_error")
    assert "tenant" in outcome.detail
    assert decide(policy, principal(claims={"tenant": "acme"}), facts("/users/x")).allowed


def test_claim_of_the_wrong_type_is_not_truthy() -> None:
    # CEL equality across types is false, so "yes" is not true.
    policy = single(conditions=["token.admin == true"])
    outcome = decide(policy, principal(claims={"admin": "yes"}), facts("/users/x"))
    assert (outcome.allowed, outcome.reason) == (False, "condition_false")
    assert decide(policy, principal(claims={"admin": True}), facts("/users/x")).allowed


def test_has_macro_tests_for_optional_claims() -> None:
    policy = single(conditions=["!has(token.act) || token.act.sub == 'gateway'"])
    assert decide(policy, principal(), facts("/users/x")).allowed
    acting = principal(claims={"act": {"sub": "someone"}})
    assert decide(policy, acting, facts("/users/x")).reason == "condition_false"


def test_token_roles_and_scopes_come_from_the_principal() -> None:
    # The roles claim path is configurable upstream; CEL sees the extracted roles.
    policy = single(conditions=["'admin' in token.roles && 'a' in token.scopes"])
    who = principal(roles=("admin",), scopes=("a",), claims={"roles": ["ignored"]})
    assert decide(policy, who, facts("/users/x")).allowed


def test_nested_read_only_claims_are_usable() -> None:
    claims = MappingProxyType({"realm_access": MappingProxyType({"roles": ("ops",)})})
    policy = single(conditions=["'ops' in token.realm_access.roles"])
    assert decide(policy, principal(claims=claims), facts("/users/x")).allowed


@pytest.mark.parametrize(
    "conditions",
    [
        ["token.weird == 1"],
        ["size(token) > 0"],  # reads the whole map
        ["true", "token.weird == 1"],  # several conditions share one Activation
    ],
)
def test_claim_cel_cannot_represent_fails_closed(conditions: list[str]) -> None:
    policy = single(conditions=conditions)
    outcome = decide(policy, principal(claims={"weird": object()}), facts("/users/x"))
    assert (outcome.allowed, outcome.reason) == (False, "condition_error")


def test_only_claims_a_condition_names_are_converted() -> None:
    # An unreadable claim the condition never names does not get in the way.
    policy = single(conditions=["token.sub == 'alice'"])
    assert decide(policy, principal(claims={"weird": object()}), facts("/users/x")).allowed


def test_request_variables_reach_cel() -> None:
    conditions = [
        "request.method == 'GET'",
        "request.path == '/users/jörg'",
        "request.host == 'api.example.com'",
        "request.headers['x-tenant'] == 'acme'",
        "request.query['tag'] == ['a', 'b']",
        "request.client_address == '192.0.2.7'",
        "request.principal == 'spiffe://envoy'",
        "request.id == 'req-1'",
        "params.user_id == 'jörg'",
    ]
    policy = single(conditions=conditions)
    request = facts(
        "/users/j%C3%B6rg?tag=a&tag=b", host="API.example.com:443", headers={"x-tenant": "acme"}
    )
    assert decide(policy, principal(), request).allowed


def test_absent_header_denies() -> None:
    policy = single(conditions=["request.headers['x-tenant'] == 'acme'"])
    assert decide(policy, principal(), facts("/users/x")).reason == "condition_error"


def test_caller_can_pass_a_prebuilt_request_map() -> None:
    policy = single(conditions=["request.method == 'POST'"])
    request = facts("/users/x")
    match = must_match(policy, request)
    prebuilt = request_variables(match, request) | {"method": "POST"}
    assert evaluate(match, principal(), request, request_map=prebuilt).allowed
    assert not evaluate(match, principal(), request).allowed


def test_token_variables_shape() -> None:
    who = principal("alice", roles=("b", "a"), scopes=("s",), claims={"aud": "api://demo"})
    assert token_variables(who) == {
        "sub": "alice",
        "iss": "https://idp.example",
        "aud": "api://demo",
        "roles": ["a", "b"],
        "scopes": ["s"],
    }


def test_each_decision_evaluates_the_conditions_afresh() -> None:
    """No outcome outlives its request: the same principal on another path, or another
    principal with the same subject but other roles, is decided on its own facts."""
    policy = single(conditions=[OWNER_OR_ADMIN])
    alice = principal("alice")
    assert decide(policy, alice, facts("/users/alice")).allowed
    assert not decide(policy, alice, facts("/users/bob")).allowed
    assert decide(policy, alice, facts("/users/alice")).allowed
    admin_alice = principal("alice", roles=["admin"])
    assert decide(policy, admin_alice, facts("/users/bob")).allowed
    assert not decide(policy, alice, facts("/users/bob")).allowed
