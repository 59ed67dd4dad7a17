"""The Envoy adapter: reading CheckRequests and the serialized answers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authz_service.body import Violation
from authz_service.envoy_adapter import ResponseBuilder, read_check_request
from authz_service.identity_encoding import UnencodableIdentityError
from authz_service.pipeline import Decision, deny
from authz_service.principal import Principal
from authz_service.settings import IdentitySettings
from sidecar_runtime.ids import DecisionIds
from tests.authz_service.test_servicer import check_request


def principal(subject: str = "alice", tenant: str = "acme") -> Principal:
    return Principal(
        subject=subject,
        issuer="https://idp.test",
        audiences=("api://demo",),
        scopes=frozenset({"users:read"}),
        roles=frozenset({"admin"}),
        claims={"sub": subject, "tenant": tenant, "plan": "pro"},
        expires_at=2e9,
    )


def allow(p: Principal) -> Decision:
    return Decision(True, 200, "allowed", rule="get-user", principal=p)


@pytest.mark.parametrize("raw", [False, True])
def test_credentials_are_set_aside_from_both_header_forms(raw: bool) -> None:
    req = check_request(
        "/api/v1/users/alice",
        token="abc.def.ghi",
        headers={"cookie": "s=1", "accept": "json", "proxy-authorization": "Basic x"},
        raw_headers=[] if raw else None,
    )
    inputs = read_check_request(req)
    assert inputs.authorization == ("Bearer abc.def.ghi",)
    assert inputs.cookie == "s=1"
    assert dict(inputs.facts.headers) == {"x-request-id": "req-1", "accept": "json"}
    assert inputs.facts.request_id == "req-1"


def test_repeated_raw_authorization_headers_stay_apart() -> None:
    req = check_request("/x", raw_headers=[("authorization", "Bearer a"), ("authorization", "b")])
    assert read_check_request(req).authorization == ("Bearer a", "b")


def test_each_allow_carries_its_own_decision_id() -> None:
    builder = ResponseBuilder(IdentitySettings())
    ids = DecisionIds()
    decision = allow(principal())
    for _ in range(3):
        decision_id = ids.next()
        wire = builder.wire(decision, "req-1", decision_id)
        assert wire == builder.build(decision, "req-1", decision_id).SerializeToString()
        parsed = external_auth_pb2.CheckResponse.FromString(wire)
        headers = {h.header.key: h.header.value for h in parsed.ok_response.headers}
        assert headers["x-decision-id"] == decision_id
        assert parsed.dynamic_metadata.fields["decision_id"].string_value == decision_id
        assert headers["x-auth-subject"] == '"alice"'


@pytest.mark.parametrize(
    "decision",
    [
        deny(401, "no_credentials", "unauthorized", rule="get-user"),
        deny(403, "insufficient_scope", "insufficient_scope", required_scopes=("users:read",)),
    ],
)
def test_wire_denials_equal_the_built_messages(decision: Decision) -> None:
    builder = ResponseBuilder(IdentitySettings())
    wire = builder.wire(decision, "req-9", "0123456789abcdef00000001")
    assert wire == builder.build(decision, "req-9", "0123456789abcdef00000001").SerializeToString()


def test_repeated_raw_cookie_headers_join_as_one_cookie_list() -> None:
    # encode_raw_headers over HTTP/1.1 keeps two Cookie lines apart (measured on 1.40).
    req = check_request("/x", raw_headers=[("cookie", "a=1"), ("cookie", "access_token=x")])
    assert read_check_request(req).cookie == "a=1; access_token=x"


def test_an_identity_with_no_exact_encoding_is_refused_not_sent() -> None:
    builder = ResponseBuilder(IdentitySettings())
    with pytest.raises(UnencodableIdentityError):
        builder.wire(allow(principal(subject="\udc00")), "r", "0123456789abcdef00000003")


def test_identity_headers_are_structured_fields_and_metadata_stays_raw() -> None:
    p = principal(subject="ålice, bob")
    built = ResponseBuilder(IdentitySettings()).build(allow(p), "r", "0123456789abcdef00000004")
    headers = {h.header.key: h.header.value for h in built.ok_response.headers}
    assert headers["x-auth-subject"] == '%"%c3%a5lice, bob"'
    assert headers["x-auth-scopes"] == '"users:read"'
    assert headers["x-auth-roles"] == '"admin"'
    assert built.dynamic_metadata.fields["subject"].string_value == "ålice, bob"


def test_a_refused_body_is_a_problem_document_without_values() -> None:
    builder = ResponseBuilder(IdentitySettings())
    decision = Decision(
        False,
        422,
        "schema_violation",
        "invalid_body",
        rule="put-user",
        principal=principal(),
        violations=(Violation("/email", "not a valid email"), Violation("/roles", "unknown")),
    )
    response = builder.build(decision, "req-7", "0123456789abcdef00000003")
    denied = response.denied_response
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert denied.status.code == 422
    assert headers["content-type"] == "application/problem+json"
    assert "www-authenticate" not in headers  # the credentials were fine
    problem = json.loads(denied.body)
    assert problem["status"] == 422
    assert problem["reason"] == "schema_violation"
    assert problem["request_id"] == "req-7"
    assert problem["errors"] == [
        {"pointer": "/email", "reason": "not a valid email"},
        {"pointer": "/roles", "reason": "unknown"},
    ]


def test_a_dry_run_deny_is_answered_as_an_allow_and_says_so() -> None:
    builder = ResponseBuilder(IdentitySettings())
    decision = replace(
        deny(403, "role_denied", "forbidden", rule="reports", principal=principal()),
        enforced=False,
        rule_set="billing",
    )
    response = builder.build(decision, "r", "0123456789abcdef00000004")
    assert response.WhichOneof("http_response") == "ok_response"
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert headers["x-auth-subject"] == '"alice"'
    meta = response.dynamic_metadata.fields
    assert meta["dry_run_deny"].string_value == "role_denied"
    assert meta["rule_set"].string_value == "billing"


def test_the_body_context_and_metadata_are_read_from_the_check_request() -> None:
    req = check_request("/x", method="PUT")
    req.attributes.request.http.raw_body = b'{"a": 1}'
    req.attributes.context_extensions["api"] = "billing"
    req.attributes.route_metadata_context.filter_metadata["edgeguard"].update({"tier": "gold"})
    req.attributes.metadata_context.filter_metadata["jwt"].update({"n": 1})
    facts = read_check_request(req).facts
    assert facts.raw_body == b'{"a": 1}'
    assert dict(facts.context) == {"api": "billing"}
    assert facts.route_metadata == {"edgeguard": {"tier": "gold"}}
    assert facts.dynamic_metadata == {"jwt": {"n": 1.0}}
    plain = read_check_request(check_request("/x")).facts
    assert (plain.raw_body, dict(plain.context), dict(plain.route_metadata)) == (b"", {}, {})


def test_allow_templates_are_shared_by_value_and_never_cross_identities() -> None:
    builder = ResponseBuilder(IdentitySettings())
    first = builder.build(allow(principal()), "r", "0123456789abcdef00000005")
    again = builder.build(allow(principal()), "r", "0123456789abcdef00000005")  # another object
    assert first == again
    other = builder.build(allow(principal(tenant="globex")), "r", "0123456789abcdef00000005")
    assert other.dynamic_metadata.fields["tenant"].string_value == "globex"
    bob = builder.build(allow(principal("bob")), "r", "0123456789abcdef00000006")
    headers = {h.header.key: h.header.value for h in bob.ok_response.headers}
    assert headers["x-auth-subject"] == '"bob"'
    assert headers["x-decision-id"] == "0123456789abcdef00000006"
    assert len(builder._allow_templates) == 3
