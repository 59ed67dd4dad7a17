"""Body routes, context extensions and route metadata in a real Envoy, between the fakes.

The demo policy's body routes (PUT /api/v1/users/{user_id}, 4096 bytes; POST
/api/v1/users/{user_id}/notes, 8192 bytes), a context extension on the virtual host and
route metadata: what the fake authz sidecar receives in its CheckRequest is what the real
one decides on (tests/e2e/test_body.py has the real one).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.json_format import MessageToDict

from authz_service.policy import CompiledPolicy
from devstack.configs import load_policy
from devstack.envoy_config import local_profile
from devstack.pki import Pki
from tests.e2e.raw_clients import chunked, content_length_head, h1_exchange, h2_request
from tests.envoy.envoy_process import RunningEnvoy, free_port_params, healthy_envoy
from tests.envoy.fakes import EchoUpstream, FakeAuthz, FakeRateLimit
from tests.envoy.test_body_routes import corpus, policy_choice
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

CONTEXT = (("tenant", "b"), ("api", "demo"))
METADATA = (("team", "accounts"),)
ALLOW = "x-test-subject: alice"
PUT_USER = "/api/v1/users/alice"
NOTES = "/api/v1/users/alice/notes"


@dataclass(frozen=True)
class LoopbackListener:
    """The raw clients' view of this module's Envoy (no buckets to pace on)."""

    port: int
    ca: Path
    host: str = "127.0.0.1"
    server_name: str = "localhost"

    def pace(self) -> None:
        return None


@dataclass
class BodyStack:
    envoy: RunningEnvoy
    authz: FakeAuthz
    upstream: EchoUpstream

    @property
    def listener(self) -> LoopbackListener:
        return LoopbackListener(self.envoy.params.listener_port, self.envoy.pki.ca)

    def send(self, method: str, path: str, body: bytes, *headers: str) -> Reply:
        head = content_length_head(method, path, len(body), "connection: close", *headers)
        return h1_exchange(self.listener, head, body)


@pytest.fixture(scope="module")
def running(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BodyStack]:
    params = dataclasses.replace(
        free_port_params(pki),
        body_routes=local_profile().body_routes,
        authz_context_extensions=CONTEXT,
        authz_route_metadata=METADATA,
    )
    authz = FakeAuthz(pki, params.authz_port)
    ratelimit = FakeRateLimit(pki, params.ratelimit_port)
    upstream = EchoUpstream(params.upstream_port)
    for server in (authz, ratelimit, upstream):
        server.start()
    try:
        with healthy_envoy(params, pki, tmp_path_factory.mktemp("envoy-body")) as envoy:
            yield BodyStack(envoy, authz, upstream)
    finally:
        for server in (authz, ratelimit, upstream):
            server.stop()


@pytest.fixture
def edge(running: BodyStack) -> BodyStack:
    running.authz.checks.clear()
    running.upstream.requests.clear()
    return running


def _one_check(edge: BodyStack) -> tuple[bytes, dict[str, str], dict[str, object]]:
    """The only CheckRequest since the fixture: (raw body, context extensions, metadata)."""
    [check] = edge.authz.checks
    attributes = check.attributes
    metadata = MessageToDict(attributes.route_metadata_context)
    return _body_of(check), dict(attributes.context_extensions), metadata


def _body_of(check: external_auth_pb2.CheckRequest) -> bytes:
    """The body in a CheckRequest. Measured with Envoy 1.40: a route's `with_request_body`
    sets the limit, but `pack_as_bytes` is the filter's (unset), so the body comes as the
    UTF-8 `body` string, not `raw_body`; the sidecar reads either (envoy_adapter)."""
    http = check.attributes.request.http
    assert not (http.raw_body and http.body)
    return http.raw_body or http.body.encode()


def test_a_schema_route_sends_the_whole_body_as_bytes_with_context_and_metadata(
    edge: BodyStack,
) -> None:
    body = json.dumps({"display_name": "Alice", "email": "a@example.com"}).encode()
    reply = edge.send("PUT", PUT_USER, body, ALLOW, "content-type: application/json")
    assert reply.status == 200, reply.body
    raw_body, context, metadata = _one_check(edge)
    assert raw_body == body
    # The virtual host's context extensions survive the route's own check settings.
    assert context == dict(CONTEXT)
    assert metadata == {"filterMetadata": {"edgeguard": dict(METADATA)}}
    [seen] = edge.upstream.requests
    assert seen["body"] == body.decode()
    # A body is a request of its own upstream (upstream_body, never reused).
    assert edge.envoy.stat("cluster.upstream_body.upstream_rq_total") >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", PUT_USER),  # a body route's path, another method
        ("PUT", "/api/v1/users/alice/"),  # trailing slash: no rule
        ("PUT", "/api/v1/reports/1"),  # no body rule
        ("PATCH", NOTES),
    ],
)
def test_other_routes_send_no_body_but_the_context_and_metadata(
    edge: BodyStack, method: str, path: str
) -> None:
    body = b'{"owner": "alice", "text": "hi"}'
    reply = edge.send(method, path, body, ALLOW, "content-type: application/json")
    assert reply.status == 200, reply.body
    raw_body, context, metadata = _one_check(edge)
    assert raw_body == b""
    assert context == dict(CONTEXT)
    assert metadata == {"filterMetadata": {"edgeguard": dict(METADATA)}}
    # The upstream still gets the body: only the sidecar does not.
    [seen] = edge.upstream.requests
    assert seen["body"] == body.decode()


def test_a_body_on_the_notes_route_goes_to_the_sidecar(edge: BodyStack) -> None:
    body = b'{"owner": "alice", "text": "' + b"n" * 7000 + b'"}'
    reply = edge.send("POST", NOTES, body, ALLOW, "content-type: application/json")
    assert reply.status == 200, reply.body
    assert _one_check(edge)[0] == body


@pytest.mark.parametrize(("path", "limit"), [(PUT_USER, 4096), (NOTES, 8192)])
def test_over_the_rules_limit_envoy_answers_413_before_the_sidecar_sees_it(
    edge: BodyStack, path: str, limit: int
) -> None:
    method = "PUT" if path == PUT_USER else "POST"
    at_limit = edge.send(method, path, b"x" * limit, ALLOW)
    assert at_limit.status == 200, at_limit.body
    assert len(_body_of(edge.authz.checks[0])) == limit
    edge.authz.checks.clear()
    over = edge.send(method, path, b"x" * (limit + 1), ALLOW)
    assert over.status == 413
    assert json.loads(over.body)["error"] == "payload_too_large"
    assert edge.authz.checks == []


def test_a_chunked_body_reaches_the_sidecar_whole(edge: BodyStack) -> None:
    body = b'{"display_name": "' + b"c" * 3000 + b'", "email": "c@example.com"}'
    head, framed = chunked("PUT", PUT_USER, body, ALLOW, "connection: close")
    reply = h1_exchange(edge.listener, head, framed)
    assert reply.status == 200, reply.body
    assert _one_check(edge)[0] == body
    over_head, over_framed = chunked("PUT", PUT_USER, b"y" * 5000, ALLOW, "connection: close")
    over = h1_exchange(edge.listener, over_head, over_framed)
    assert over.status == 413


@pytest.mark.parametrize("content_length", [True, False])
def test_an_http2_body_reaches_the_sidecar_whole(
    edge: BodyStack, tmp_path: Path, content_length: bool
) -> None:
    body = b'{"display_name": "Hanna", "email": "h@example.com"}'
    data = tmp_path / "body.json"
    data.write_bytes(body)
    reply = h2_request(
        edge.listener,
        PUT_USER,
        method="PUT",
        headers=[("x-test-subject", "alice"), ("content-type", "application/json")],
        body=data,
        content_length=content_length,
    )
    assert reply.status == 200, reply.body
    assert _one_check(edge)[0] == body


def _raw_path_seen(edge: BodyStack, path: str) -> tuple[int, str | None, bytes]:
    """PUT `path` with a small body: (status, the :path the sidecar saw or None, the body
    the sidecar got)."""
    edge.authz.checks.clear()
    body = b"{}"
    reply = edge.send("PUT", path, body, ALLOW)
    if not edge.authz.checks:
        return reply.status, None, b""
    [check] = edge.authz.checks
    return reply.status, check.attributes.request.http.path, _body_of(check)


def test_envoy_forwards_a_body_exactly_where_the_policy_needs_one(edge: BodyStack) -> None:
    """The corpus of tests/envoy/test_body_routes.py through Envoy's normalisation: for
    every path that reaches the sidecar, the body came along exactly when the policy, on
    the path the sidecar saw, picks a rule with a schema (or refuses the path: 400)."""
    policy = CompiledPolicy.compile(load_policy().policy(), source="demo")
    paths = sorted({p for p in corpus() if p.startswith("/") and " " not in p and len(p) < 300})
    outcomes: dict[str, int] = {}
    for path in paths:
        if any(c in path for c in "\t#") or not path.isascii():
            continue  # not sendable on a request line
        status, seen, raw_body = _raw_path_seen(edge, path)
        if seen is None:
            outcomes[f"envoy {status}"] = outcomes.get(f"envoy {status}", 0) + 1
            continue
        rule, refusal = policy_choice(policy, "PUT", seen, "localhost")
        wants_body = rule is not None and rule.body is not None
        if bool(raw_body) != wants_body:
            assert refusal, (path, seen, rule, raw_body)
            key = f"routed, policy refuses: {refusal}"
        else:
            key = "agree"
        outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes.get("agree", 0) > 100, outcomes
    print(outcomes)
