"""The pipeline over what Envoy knows of a request: its body (schemas), its context
(rule sets) and dry-run rules. Pure: compiled settings, a table of tokens, no loop."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from authz_service.pipeline import Authorizer, Decision, NeedKeys
from authz_service.policy import RequestFacts, RuleSets
from authz_service.principal import Principal
from authz_service.settings import AuthzSettings
from authz_service.tokens import InvalidToken
from authz_service.tokens.verifier import TokenVerifier
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError
from tests.authz_service.policy.helpers import principal

SOURCE = "authz.yaml"
USER_SCHEMA = {
    "type": "object",
    "required": ["display_name", "email"],
    "properties": {
        "display_name": {"type": "string", "minLength": 3, "maxLength": 50},
        "email": {"type": "string", "format": "email"},
    },
}
PUT_USER = {
    "name": "put-user",
    "methods": ["PUT"],
    "path": "/users/{user_id}",
    "scopes": ["users:write"],
    "conditions": ["params.user_id == token.sub"],
    "body": {"schema": USER_SCHEMA, "max_bytes": 256},
}
POST_NOTE = {
    "name": "post-note",
    "methods": ["POST"],
    "path": "/users/{user_id}/notes",
    "conditions": ["request.body.owner == token.sub"],
    "body": {
        "schema": {
            "type": "object",
            "required": ["owner"],
            "properties": {"owner": {"type": "string"}, "text": {"type": "string"}},
        }
    },
}
SIGNUP = {
    "name": "signup",
    "methods": ["POST"],
    "path": "/signup",
    "public": True,
    "body": {"schema": USER_SCHEMA},
}
TOKENS = {
    "alice-writer": principal("alice", scopes=("users:write",)),
    "alice-reader": principal("alice", scopes=("users:read",)),
    "bob-analyst": principal("bob", roles=("analyst",)),
}


class _Tokens:
    """Stands for the TokenVerifier: a table of tokens and their principals."""

    def verify_now(self, token: str) -> Principal | NeedKeys:
        return self.verify_fetched(token)

    def verify_fetched(self, token: str) -> Principal:
        try:
            return TOKENS[token]
        except KeyError:
            raise InvalidToken("bad_signature") from None


def authorizer(config: Mapping[str, Any], tmp_path: Path | None = None) -> Authorizer:
    settings = validate_model(AuthzSettings, dict(config), SOURCE)
    source = str(tmp_path / SOURCE) if tmp_path else SOURCE
    rule_sets = RuleSets.compile(settings.policy(), settings.rule_sets, source=source)
    tokens = cast(TokenVerifier, _Tokens())
    return Authorizer(rule_sets, tokens, cookie_names=frozenset(), mtls=settings.mtls)


def request(
    path: str,
    method: str = "GET",
    *,
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
    context: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> RequestFacts:
    payload = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    all_headers = {"content-type": content_type, "content-length": str(len(payload))}
    return RequestFacts(
        method=method,
        raw_path=path,
        host="api.test",
        headers={**all_headers, **(headers or {})},
        client_address="192.0.2.1",
        peer_principal="",
        request_id="r-1",
        raw_body=payload,
        context=dict(context or {}),
    )


def decide(authz: Authorizer, facts: RequestFacts, token: str | None = None) -> Decision:
    authorization = () if token is None else (f"Bearer {token}",)
    decided = authz.decide_now(facts, authorization=authorization, cookie="")
    assert isinstance(decided, Decision)
    return decided


GOOD = {"display_name": "Alice", "email": "alice@example.com"}


@pytest.fixture
def authz() -> Authorizer:
    return authorizer({"routes": [PUT_USER, POST_NOTE, SIGNUP]})


# -- body schemas ------------------------------------------------------------------------


def test_a_body_that_fits_the_schema_is_allowed(authz: Authorizer) -> None:
    decided = decide(authz, request("/users/alice", "PUT", body=GOOD), "alice-writer")
    assert (decided.allowed, decided.reason, decided.rule) == (True, "allowed", "put-user")


@pytest.mark.parametrize(
    ("body", "pointers"),
    [
        ({"display_name": "Al", "email": "alice@example.com"}, ["/display_name"]),
        ({"display_name": "Alice", "email": "not-an-email"}, ["/email"]),
        ({"display_name": "Alice"}, ["/email"]),
        ({**GOOD, "roles": ["admin"]}, ["/roles"]),  # mass assignment
    ],
)
def test_a_body_that_breaks_the_schema_is_422_by_pointer(
    authz: Authorizer, body: dict[str, Any], pointers: list[str]
) -> None:
    decided = decide(authz, request("/users/alice", "PUT", body=body), "alice-writer")
    assert (decided.allowed, decided.status, decided.reason) == (False, 422, "schema_violation")
    assert [v.pointer for v in decided.violations] == pointers
    assert decided.error == "invalid_body"


@pytest.mark.parametrize(
    ("facts", "status", "reason"),
    [
        (
            request("/users/alice", "PUT", body=GOOD, content_type="text/plain"),
            415,
            "unsupported_media_type",
        ),
        (request("/users/alice", "PUT", raw=b'{"email": 1, "email": 2}'), 400, "malformed_body"),
        (request("/users/alice", "PUT", raw=b"x" * 257), 413, "body_too_large"),
    ],
)
def test_parse_limits_answer_before_the_schema(
    authz: Authorizer, facts: RequestFacts, status: int, reason: str
) -> None:
    decided = decide(authz, facts, "alice-writer")
    assert (decided.allowed, decided.status, decided.reason) == (False, status, reason)


def test_credentials_and_access_are_checked_before_the_body(authz: Authorizer) -> None:
    bad_body = request("/users/alice", "PUT", body={"roles": ["admin"]})
    assert decide(authz, bad_body).status == 401
    assert decide(authz, bad_body, "forged").reason == "bad_signature"
    # A client without the scope learns nothing about the schema.
    assert decide(authz, bad_body, "alice-reader").reason == "insufficient_scope"


def test_a_body_envoy_did_not_forward_is_refused(authz: Authorizer) -> None:
    facts = request("/users/alice", "PUT", body=GOOD, headers={"content-length": "9999"})
    decided = decide(authz, facts, "alice-writer")
    assert (decided.status, decided.reason) == (400, "body_not_forwarded")


def test_conditions_read_the_validated_body(authz: Authorizer) -> None:
    mine = request("/users/alice/notes", "POST", body={"owner": "alice", "text": "hi"})
    assert decide(authz, mine, "alice-writer").allowed
    theirs = request("/users/alice/notes", "POST", body={"owner": "bob", "text": "hi"})
    decided = decide(authz, theirs, "alice-writer")
    assert (decided.allowed, decided.reason) == (False, "condition_false")


def test_a_public_rule_still_checks_its_body(authz: Authorizer) -> None:
    assert decide(authz, request("/signup", "POST", body=GOOD)).allowed
    decided = decide(authz, request("/signup", "POST", body={"email": "x@example.com"}))
    assert (decided.status, [v.pointer for v in decided.violations]) == (422, ["/display_name"])


def test_a_condition_reading_the_body_needs_a_schema() -> None:
    rule = {**POST_NOTE}
    del rule["body"]
    with pytest.raises(ConfigError) as err:
        authorizer({"routes": [rule]})
    assert err.value.key == "routes[0].conditions[0]"
    assert "request.body" in err.value.reason


def test_a_schema_that_does_not_compile_names_its_key() -> None:
    broken = {**PUT_USER, "body": {"schema": {"type": "object", "minProperties": "x"}}}
    with pytest.raises(ConfigError) as err:
        authorizer(
            {
                "routes": [PUT_USER],
                "rule_sets": [{"name": "b", "select": {"api": "b"}, "routes": [broken]}],
            }
        )
    assert err.value.key == "rule_sets[0].routes[0].body.schema"


# -- dry run -----------------------------------------------------------------------------


REPORTS = {"name": "reports", "methods": ["GET"], "path": "/reports/{id}", "roles": ["analyst"]}


def test_a_dry_run_rule_records_its_deny_and_lets_the_request_through() -> None:
    authz = authorizer({"routes": [{**REPORTS, "mode": "dry_run"}]})
    decided = decide(authz, request("/reports/1"), "alice-reader")
    assert (decided.allowed, decided.enforced, decided.lets_through) == (False, False, True)
    assert (decided.status, decided.reason) == (403, "role_denied")
    allowed = decide(authz, request("/reports/1"), "bob-analyst")
    assert (allowed.allowed, allowed.enforced) == (True, True)


def test_a_dry_run_rule_set_covers_unmatched_requests_and_its_rules() -> None:
    authz = authorizer({"mode": "dry_run", "routes": [REPORTS]})
    for facts in (request("/nothing/here"), request("/reports/1")):
        decided = decide(authz, facts, "alice-reader")
        assert (decided.allowed, decided.enforced) == (False, False)
    # A rule may insist on being enforced inside a dry-run set.
    strict = authorizer({"mode": "dry_run", "routes": [{**REPORTS, "mode": "enforce"}]})
    decided = decide(strict, request("/reports/1"), "alice-reader")
    assert (decided.allowed, decided.enforced) == (False, True)


def test_enforced_rules_are_not_touched_by_another_rule_s_dry_run() -> None:
    authz = authorizer({"routes": [{**REPORTS, "mode": "dry_run"}, PUT_USER]})
    decided = decide(authz, request("/users/bob", "PUT", body=GOOD), "alice-writer")
    assert (decided.allowed, decided.enforced, decided.lets_through) == (False, True, False)


# -- rule sets chosen by Envoy's context extensions ---------------------------------------


def test_context_extensions_choose_the_rule_set() -> None:
    billing = {"name": "invoices", "methods": ["GET"], "path": "/reports/{id}", "public": True}
    authz = authorizer(
        {
            "routes": [REPORTS],
            "rule_sets": [
                {"name": "billing", "select": {"api": "billing"}, "routes": [billing]},
                {
                    "name": "billing-eu",
                    "select": {"api": "billing", "region": "eu"},
                    "routes": [REPORTS],
                },
            ],
        }
    )
    default = decide(authz, request("/reports/1"))
    assert (default.status, default.rule_set) == (401, "")
    chosen = decide(authz, request("/reports/1", context={"api": "billing", "region": "eu"}))
    # The first set in file order whose every `select` entry is in the context wins.
    assert (chosen.allowed, chosen.rule, chosen.rule_set) == (True, "invoices", "billing")
    other = decide(authz, request("/reports/1", context={"api": "shop"}))
    assert other.rule_set == ""


def test_rule_set_settings_are_checked() -> None:
    same = {"select": {"api": "a"}, "routes": [REPORTS]}
    with pytest.raises(ConfigError, match="never be chosen"):
        authorizer(
            {"routes": [REPORTS], "rule_sets": [{"name": "a", **same}, {"name": "b", **same}]}
        )
    with pytest.raises(ConfigError, match="select"):
        authorizer(
            {"routes": [REPORTS], "rule_sets": [{"name": "a", "select": {}, "routes": [REPORTS]}]}
        )
    with pytest.raises(ConfigError, match="at least one rule"):
        authorizer({"routes": []})
    # Only rule sets, no default rules: requests no set selects match nothing (403).
    only = authorizer({"rule_sets": [{"name": "a", "select": {"api": "a"}, "routes": [REPORTS]}]})
    assert decide(only, request("/reports/1")).reason == "no_route"


def test_a_rule_that_takes_no_jwt_refuses_a_bearer_token_like_a_bad_one() -> None:
    machines = {**REPORTS, "roles": [], "credentials": ["api_key"]}
    decided = decide(authorizer({"routes": [machines]}), request("/reports/1"), "bob-analyst")
    assert (decided.status, decided.reason, decided.error) == (
        401,
        "credential_not_accepted",
        "invalid_token",
    )
    with pytest.raises(ConfigError, match="public rule takes no credentials"):
        authorizer({"routes": [{**SIGNUP, "credentials": ["api_key"]}]})


# -- revocation: the list's answer for a verified principal ---------------------------------


def test_a_revoked_token_is_the_generic_401_and_a_stale_list_fails_closed() -> None:
    settings = validate_model(AuthzSettings, {"routes": [REPORTS]}, SOURCE)
    rule_sets = RuleSets.compile(settings.policy(), settings.rule_sets, source=SOURCE)
    answers: dict[str, str | None] = {"bob": "revoked", "alice": "revocation_unavailable"}

    def revoked(who: Principal) -> str | None:
        return answers.get(who.subject)

    authz = Authorizer(
        rule_sets, cast(TokenVerifier, _Tokens()), cookie_names=frozenset(), revoked=revoked
    )
    bob = decide(authz, request("/reports/1"), "bob-analyst")
    assert (bob.status, bob.reason, bob.error) == (401, "revoked", "invalid_token")
    alice = decide(authz, request("/reports/1"), "alice-reader")
    assert (alice.status, alice.reason) == (503, "revocation_unavailable")
    answers.clear()
    assert decide(authz, request("/reports/1"), "bob-analyst").allowed
