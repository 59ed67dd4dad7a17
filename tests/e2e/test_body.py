"""Body schemas through the whole stack: the demo policy's body rules (issue 18, part 1).

PUT /api/v1/users/{user_id} takes {display_name (3-50 characters), email (email format)},
nothing else, at most 4096 bytes; POST /api/v1/users/{user_id}/notes takes {owner, text}
and a condition reads the body (`request.body.owner == token.sub`). Envoy sends the body
to the authz sidecar on those two routes only (devstack.configs.body_routes), which
refuses what breaks the rules with an RFC 9457 problem: 413, 415, 400 or 422.

Against an external stack the demo upstream's record of what it served is not here
(`upstream` is None): the replies are checked, the record is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_service.identity_encoding import decode_item
from devstack.upstream import DemoUpstream
from tests.e2e.conftest import Edge, assert_hardened, identity_at_upstream
from tests.e2e.raw_clients import chunked, content_length_head, h1_exchange, h2_request
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

USER = "/api/v1/users/alice"
NOTES = "/api/v1/users/alice/notes"
PROFILE = {"display_name": "Alice Liddell", "email": "alice@example.com"}
JSON = ("content-type", "application/json")
PUT_USER_LIMIT = 4096  # config/authz/demo.yaml


def _writer(edge: Edge, subject: str = "alice") -> str:
    return edge.mint(subject, scope="users:read users:write")


def _problem(reply: Reply, status: int, reason: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("content-type") == "application/problem+json"
    assert_hardened(reply)
    problem: dict[str, Any] = reply.json()
    assert (problem["status"], problem["reason"]) == (status, reason)
    assert problem["request_id"] == reply.request_id
    return problem


def _put(edge: Edge, body: bytes, *headers: tuple[str, str], token: str | None = None) -> Reply:
    token = token or _writer(edge)
    return edge.client.request(USER, method="PUT", token=token, body=body, headers=headers)


def test_a_valid_body_is_allowed_and_reaches_the_upstream_whole(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    body = json.dumps(PROFILE).encode()

    reply = _put(edge, body, JSON)

    assert identity_at_upstream(reply)["x-auth-subject"] == "alice"
    assert reply.json()["action"] == "updated"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert (served.method, served.target, served.body_bytes) == ("PUT", USER, len(body))


def test_a_body_breaking_the_schema_is_422_naming_pointers_never_values(edge: Edge) -> None:
    before = edge.upstream_mark()
    body = {"display_name": "Qz", "email": 314159265}  # too short; not a string

    reply = _put(edge, json.dumps(body).encode(), JSON)

    problem = _problem(reply, 422, "schema_violation")
    pointers = {error["pointer"] for error in problem["errors"]}
    assert pointers == {"/display_name", "/email"}
    assert b"Qz" not in reply.body
    assert b"314159265" not in reply.body
    edge.assert_upstream_untouched(before)


def test_a_member_the_schema_does_not_name_is_422_no_mass_assignment(edge: Edge) -> None:
    before = edge.upstream_mark()
    body = {**PROFILE, "roles": ["admin"]}

    reply = _put(edge, json.dumps(body).encode(), JSON)

    problem = _problem(reply, 422, "schema_violation")
    assert [e["pointer"] for e in problem["errors"]] in (["/roles"], [""])
    assert b"admin" not in reply.body
    edge.assert_upstream_untouched(before)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"]
)
def test_a_wrong_content_type_is_415(edge: Edge, content_type: str | None) -> None:
    headers = [("content-type", content_type)] if content_type else []

    reply = _put(edge, json.dumps(PROFILE).encode(), *headers)

    _problem(reply, 415, "unsupported_media_type")


def test_a_body_over_the_rules_limit_is_413_from_envoy(edge: Edge) -> None:
    before = edge.upstream_mark()
    padding = "x" * PUT_USER_LIMIT
    body = json.dumps({**PROFILE, "display_name": padding}).encode()
    assert len(body) > PUT_USER_LIMIT

    reply = _put(edge, body, JSON)

    # Envoy's buffer filter answers (the edge's JSON denial), before the sidecar is asked.
    assert reply.status == 413, reply.body
    assert reply.json() == {"error": "payload_too_large", "request_id": reply.request_id}
    edge.assert_upstream_untouched(before)


@pytest.mark.parametrize(
    "body",
    [
        b'{"display_name": "Alice", "email": "alice@example.com"',  # cut short
        b'{"display_name": "Alice", "display_name": "Mallory", "email": "a@example.com"}',
        b'{"display_name": "Alice", "email": "a@example.com", "n": NaN}',
        b"\xff\xfe{}",  # not UTF-8
        b"",
    ],
    ids=["truncated", "duplicate-key", "nan", "not-utf8", "empty"],
)
def test_malformed_json_is_400(edge: Edge, body: bytes) -> None:
    reply = _put(edge, body, JSON)

    _problem(reply, 400, "malformed_body")
    assert b"Mallory" not in reply.body


# --- a condition on the body: request.body.owner == token.sub --------------------------------


def test_a_note_filed_as_someone_else_is_403_and_as_oneself_is_allowed(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    token = _writer(edge)
    forged = {"owner": "bob", "text": "signed, bob"}
    mine = {"owner": "alice", "text": "signed, alice"}

    denied = edge.client.request(NOTES, method="POST", token=token, json_body=forged)
    allowed = edge.client.request(NOTES, method="POST", token=token, json_body=mine)

    assert denied.status == 403, denied.body
    assert denied.json() == {"error": "forbidden", "request_id": denied.request_id}
    # Allowed by the edge: the demo upstream has no notes API, so its own 404 answers.
    assert decode_item(identity_at_upstream_any(allowed)["x-auth-subject"]) == "alice"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert (served.method, served.target) == ("POST", NOTES)
        assert served.body_bytes == len(json.dumps(mine))


def identity_at_upstream_any(reply: Reply) -> dict[str, str]:
    """The identity headers the upstream echoed, whatever its status (an allowed request
    the demo upstream has no handler for gets its 404, with the echo)."""
    body = reply.json()
    assert body["request_id"] == reply.request_id, body  # the upstream's answer
    identity: dict[str, str] = body["identity"]
    return identity


# --- framings: HTTP/1.1 chunked, HTTP/2 with and without a content-length -------------------


def test_a_chunked_body_is_checked_whole(edge: Edge, upstream: DemoUpstream | None) -> None:
    token = _writer(edge)
    body = json.dumps(PROFILE).encode()
    auth = f"authorization: Bearer {token}"
    head, framed = chunked("PUT", USER, body, auth, "content-type: application/json")

    reply = h1_exchange(edge.client, head, framed)

    assert identity_at_upstream(reply)["x-auth-subject"] == "alice"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.body_bytes == len(body)
    bad_head, bad_framed = chunked(
        "PUT", USER, b'{"roles": ["admin"]}', auth, "content-type: application/json"
    )
    refused = h1_exchange(edge.client, bad_head, bad_framed)
    assert refused.status == 422


def test_a_chunked_body_over_the_limit_is_413(edge: Edge) -> None:
    token = _writer(edge)
    head, framed = chunked("PUT", USER, b" " * 5000, f"authorization: Bearer {token}")
    assert h1_exchange(edge.client, head, framed).status == 413


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "no-length"])
def test_an_http2_body_is_checked_whole(
    edge: Edge, upstream: DemoUpstream | None, tmp_path: Path, content_length: bool
) -> None:
    token = _writer(edge)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(json.dumps(PROFILE).encode())
    bad.write_bytes(json.dumps({**PROFILE, "roles": ["admin"]}).encode())
    headers = [("authorization", f"Bearer {token}"), JSON]

    def send(body: Path) -> Any:
        return h2_request(
            edge.client,
            USER,
            method="PUT",
            headers=headers,
            body=body,
            content_length=content_length,
        )

    allowed, refused = send(good), send(bad)

    assert allowed.status == 200, allowed.body
    assert decode_item(allowed.json()["identity"]["x-auth-subject"]) == "alice"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.body_bytes == good.stat().st_size
    assert refused.status == 422
    assert refused.header("content-type") == "application/problem+json"


def test_a_body_on_a_route_without_a_schema_never_reaches_the_sidecar(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    """DELETE /api/v1/users/{id} has no schema: its body goes to the upstream as before
    (the edge's 1 MiB limit), and the sidecar decides without it."""
    admin = edge.mint("root", roles=["admin"])
    head = content_length_head("DELETE", USER, 10_000, f"authorization: Bearer {admin}")

    reply = h1_exchange(edge.client, head, b"{" * 10_000)

    assert reply.status == 200, reply.body
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.body_bytes == 10_000
