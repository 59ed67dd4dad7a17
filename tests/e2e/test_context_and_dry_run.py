"""Dry-run rules, and rule sets chosen by Envoy's context (issue 18, parts 2 and 4).

The demo policy's `reports-preview` rule is `mode: dry_run`: a request it would deny goes
through, and the authz audit line records the deny with `"enforced": false`. A second
stack runs an authz config with a rule set selected by a context extension that Envoy's
config puts on every check (`authz_context_extensions`), and route metadata the rule
set's conditions read.

Against an external stack the audit log is not here: the dry-run tests check that the
edge let through or denied, the decision lines are left out; the tests of the second
stack, and of what the audit line says, are own_stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devstack.configs import AUTHZ_DEMO
from devstack.upstream import DemoUpstream
from tests.e2e.conftest import Edge, identity_at_upstream, running_stack
from tests.support.https import Reply
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

REPORT = "/api/v1/reports/1"


def audit_line(edge: Edge, request_id: str) -> dict[str, Any]:
    """The authz sidecar's decision line for `request_id`."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        text = (edge.stack.log_dir / "authz.log").read_text(errors="replace")
        found[:] = [
            line
            for line in map(_json_or_none, text.splitlines())
            if line and line.get("request_id") == request_id and "decision" in line
        ]
        return bool(found)

    assert wait_until(logged, timeout=5), f"no audit line for {request_id}"
    [line] = found
    return line


def _json_or_none(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _passed_the_edge(reply: Reply) -> dict[str, Any]:
    """The upstream's own answer (the demo upstream has no reports API: its 404, echoing
    the identity it got), never one of the edge's denials."""
    body: dict[str, Any] = reply.json()
    assert body.get("request_id") == reply.request_id, (reply.status, body)
    assert "identity" in body, body
    return body


# --- dry run --------------------------------------------------------------------------------


def test_a_dry_run_deny_is_let_through_and_recorded_as_not_enforced(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    token = edge.mint("alice", scope="users:read")  # no `analyst` role

    reply = edge.client.request(REPORT, token=token)

    _passed_the_edge(reply)
    if upstream is not None:  # the upstream's record and the audit log: own stack only
        assert [s.target for s in upstream.served.snapshot()] == [REPORT]
        line = audit_line(edge, reply.request_id or "")
        assert (line["decision"], line["enforced"]) == ("deny", False)
        assert line["rule"] == "reports-preview"


def test_a_dry_run_rule_that_allows_is_an_ordinary_allow(edge: Edge) -> None:
    token = edge.mint("ann", scope="users:read", roles=["analyst"])

    reply = edge.client.request(REPORT, token=token)

    _passed_the_edge(reply)
    if edge.own_stack:  # the audit log is a file of the stack
        line = audit_line(edge, reply.request_id or "")
        assert (line["decision"], line["enforced"]) == ("allow", True)


def test_enforced_rules_still_deny(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    reply = edge.client.request("/api/v1/admin/stats", token=token)
    assert reply.status == 403
    if edge.own_stack:  # the audit log is a file of the stack
        line = audit_line(edge, reply.request_id or "")
        assert (line["decision"], line["enforced"]) == ("deny", True)


# --- a rule set chosen by Envoy's context ---------------------------------------------------

CONTEXT = (("tenant", "b"),)
METADATA = (("team", "accounts"),)
TENANT_B = {
    "name": "tenant-b",
    "select": {"tenant": "b"},
    "routes": [
        {
            # Profiles are public for tenant b, and only through an Envoy that says so.
            "name": "b-read-user",
            "methods": ["GET"],
            "path": "/api/v1/users/{user_id}",
            "public": True,
            "conditions": [
                "request.context.tenant == 'b'",
                "request.metadata.edgeguard.team == 'accounts'",
            ],
        },
        {
            "name": "b-put-user",
            "methods": ["PUT"],
            "path": "/api/v1/users/{user_id}",
            "scopes": ["users:write"],
            "conditions": ["params.user_id == token.sub"],
            "body": {
                "max_bytes": 64,
                "schema": {
                    "type": "object",
                    "required": ["display_name"],
                    "properties": {"display_name": {"type": "string"}},
                },
            },
        },
    ],
}


@pytest.fixture(scope="module")
def tenant_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """A stack whose Envoy sends context `tenant: b` and route metadata `team: accounts`
    with every check, and whose authz config has the rule set `tenant-b`."""
    workdir = tmp_path_factory.mktemp("e2e-tenant")
    config = yaml.safe_load(AUTHZ_DEMO.read_text())
    config["rule_sets"] = [TENANT_B]
    path = workdir / "authz-tenant.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_stack(
        workdir / "dev",
        authz_config=path,
        authz_context_extensions=CONTEXT,
        authz_route_metadata=METADATA,
    ) as edge:
        yield edge


@pytest.fixture
def tenant(tenant_stack: Edge) -> Edge:
    tenant_stack.reset_limits()
    return tenant_stack


ON_A_STACK_OF_ITS_OWN = pytest.mark.own_stack("starts a stack with its own authz config")


@ON_A_STACK_OF_ITS_OWN
def test_the_context_extension_selects_the_rule_set(tenant: Edge) -> None:
    # The default rule set would answer 401 (get-user needs a token).
    reply = tenant.client.request("/api/v1/users/zed")

    assert identity_at_upstream(reply) == {}
    assert reply.json()["user_id"] == "zed"
    line = audit_line(tenant, reply.request_id or "")
    assert (line["rule_set"], line["rule"]) == ("tenant-b", "b-read-user")
    assert line["decision"] == "allow"


@ON_A_STACK_OF_ITS_OWN
def test_the_rule_sets_body_rule_and_limit_apply(tenant: Edge) -> None:
    token = tenant.mint("alice", scope="users:write")
    path = "/api/v1/users/alice"

    # tenant-b's schema needs no email (the default set's does) ...
    short = {"display_name": "Al"}
    small = tenant.client.request(path, method="PUT", token=token, json_body=short)
    # ... and its limit is 64 bytes: Envoy's route lets 4096 through (the default set's
    # rule shares the route), and the sidecar applies the rule's own limit.
    large = {"display_name": "A" * 100}
    too_large = tenant.client.request(path, method="PUT", token=token, json_body=large)

    assert identity_at_upstream(small)["x-auth-subject"] == "alice"
    assert too_large.status == 413, too_large.body
    assert too_large.header("content-type") == "application/problem+json"
    assert too_large.json()["reason"] == "body_too_large"
    assert audit_line(tenant, too_large.request_id or "")["rule_set"] == "tenant-b"


@ON_A_STACK_OF_ITS_OWN
def test_a_request_no_rule_of_the_set_matches_is_denied(tenant: Edge) -> None:
    # The default set's public ping is not in tenant-b: the chosen set is the whole policy.
    reply = tenant.client.request("/api/v1/public/ping")
    assert reply.status == 403, reply.body
    assert audit_line(tenant, reply.request_id or "")["rule_set"] == "tenant-b"


@pytest.mark.own_stack("reads the authz audit log")
def test_the_default_stack_selects_no_rule_set(edge: Edge) -> None:
    reply = edge.client.request("/api/v1/users/zed")
    assert reply.status == 401
    assert audit_line(edge, reply.request_id or "")["rule_set"] is None
