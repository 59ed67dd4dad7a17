"""gRPC through the whole stack: a real gRPC client, TLS to the real Envoy, the real sidecars.

The demo policy (config/authz/demo.yaml) allows demo.v1.Greeter/SayHello with scope
greeter:read, server reflection to admins, and nothing else of the Greeter. Every denial
must reach the client as a gRPC status it can read (grpc-status, grpc-message), never as
an HTTP error: ARCHITECTURE.md section 5, "gRPC requests get the same decisions".

The demo Greeter's record of the calls it got is in this process only for a
self-started stack (`greeter` is None otherwise): against an external one the outcomes
are checked, the record is not. A stack without the Greeter (compose) still gives every
denial; the tests that need an answer from it skip there (`need_grpc_demo`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz_service.identity_encoding import decode_item
from devstack.envoy_config import SECURITY_HEADERS
from devstack.grpc_upstream import SERVICE, GrpcUpstream, greeter_pb2
from devstack.stack import REPO
from tests.e2e.conftest import Edge
from tests.support.grpcurl import GRPCURL

pytestmark = pytest.mark.e2e

SCOPE = "greeter:read"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    trailers: dict[str, str]
    reply: Any = None

    def error(self) -> str:
        """The `error` of the JSON denial body that Envoy carries as grpc-message."""
        body: dict[str, Any] = json.loads(self.details)
        return str(body["error"])


@pytest.fixture
def greeter(edge: Edge) -> GrpcUpstream | None:
    if not edge.own_stack:
        return None
    [server] = [t for t in edge.stack._threads if isinstance(t, GrpcUpstream)]
    server.calls.clear()
    return server


@pytest.fixture
def channel(edge: Edge) -> Iterator[grpc.Channel]:
    creds = grpc.ssl_channel_credentials(root_certificates=edge.client.ca.read_bytes())
    # By the server name, which must lead to the listener (localhost does, on loopback).
    with grpc.secure_channel(f"{edge.client.server_name}:{edge.client.port}", creds) as ch:
        yield ch


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def call(
    channel: grpc.Channel, method: str = "SayHello", metadata: Sequence[tuple[str, str]] = ()
) -> Outcome:
    stub = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=greeter_pb2.HelloRequest.SerializeToString,
        response_deserializer=greeter_pb2.HelloReply.FromString,
    )
    try:
        reply, done = stub.with_call(
            greeter_pb2.HelloRequest(name="carol"), metadata=list(metadata), timeout=10
        )
    except grpc.RpcError as error:
        trailers = {m.key: m.value for m in error.trailing_metadata() or ()}
        return Outcome(error.code(), error.details() or "", trailers)
    trailers = {m.key: m.value for m in done.trailing_metadata() or ()}
    return Outcome(grpc.StatusCode.OK, "", trailers, reply)


def assert_denied(outcome: Outcome, code: grpc.StatusCode, error: str) -> None:
    assert (outcome.code, outcome.error()) == (code, error), outcome
    # The request id in the message joins it to the access log and the decision line.
    assert json.loads(outcome.details)["request_id"] == outcome.trailers["x-request-id"]
    for name, value in SECURITY_HEADERS:
        assert outcome.trailers.get(name) == value, (name, outcome.trailers)


def test_allowed_call_reaches_the_upstream_with_the_identity(
    edge: Edge, channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    edge.need_grpc_demo()
    token = edge.mint("carol", scope=SCOPE)
    outcome = call(channel, metadata=[*_bearer(token), ("x-auth-subject", "root")])
    assert outcome.code == grpc.StatusCode.OK, outcome
    assert outcome.reply.message == "Hello, carol!"
    # The identity headers' encoding (an RFC 8941 string), the same as for the HTTP API.
    assert decode_item(outcome.reply.subject) == "carol"
    if greeter is not None:
        [seen] = greeter.calls
        assert seen.get("x-auth-subject") == outcome.reply.subject  # the client's copy stripped
        assert seen.get("x-auth-scopes") is not None
        assert seen.get("authorization") is not None  # passed on, as for the HTTP API


def test_no_credentials_is_unauthenticated(
    channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    outcome = call(channel)
    assert_denied(outcome, grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
    assert outcome.trailers["www-authenticate"].startswith("Bearer realm=")
    assert greeter is None or greeter.calls == []


def test_bad_token_is_unauthenticated(
    edge: Edge, channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    token = edge.mint("carol", scope=SCOPE, audience="api://other")
    outcome = call(channel, metadata=_bearer(token))
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED
    assert 'error="invalid_token"' in outcome.trailers["www-authenticate"]
    assert greeter is None or greeter.calls == []


def test_missing_scope_is_permission_denied(
    edge: Edge, channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    token = edge.mint("carol", scope="users:read")
    outcome = call(channel, metadata=_bearer(token))
    assert_denied(outcome, grpc.StatusCode.PERMISSION_DENIED, "insufficient_scope")
    assert f'scope="{SCOPE}"' in outcome.trailers["www-authenticate"]
    assert greeter is None or greeter.calls == []


def test_unlisted_method_is_permission_denied(
    edge: Edge, channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    token = edge.mint("carol", scope=SCOPE)
    outcome = call(channel, "SayGoodbye", _bearer(token))
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, outcome
    assert greeter is None or greeter.calls == []


def test_malformed_request_is_invalid_argument(
    edge: Edge, channel: grpc.Channel, greeter: GrpcUpstream | None
) -> None:
    # Two Authorization headers: the sidecar's 400, which Envoy alone would call INTERNAL.
    token = edge.mint("carol", scope=SCOPE)
    outcome = call(channel, metadata=[*_bearer(token), *_bearer(token)])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert greeter is None or greeter.calls == []


def _list_services(channel: grpc.Channel, metadata: Sequence[tuple[str, str]]) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = stub.ServerReflectionInfo(iter([request]), metadata=list(metadata), timeout=10)
    return {s.name for a in answers for s in a.list_services_response.service}


def test_reflection_is_for_admins_only(edge: Edge, channel: grpc.Channel) -> None:
    edge.need_grpc_demo()
    user = edge.mint("carol", scope=SCOPE)
    with pytest.raises(grpc.RpcError) as denied:
        _list_services(channel, _bearer(user))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    v1 = channel.unary_unary(REFLECTION_V1)
    with pytest.raises(grpc.RpcError) as denied_v1:
        v1(b"", metadata=_bearer(user), timeout=10)
    assert denied_v1.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = edge.mint("root", roles=["admin"])
    assert SERVICE in _list_services(channel, _bearer(admin))


def test_over_the_subject_limit_is_resource_exhausted(edge: Edge, channel: grpc.Channel) -> None:
    edge.need_grpc_demo()
    # config/ratelimit/rules/edge.yaml: 10/s per subject, bursts of 20.
    token = edge.mint("dave", scope=SCOPE)
    outcomes = [call(channel, metadata=_bearer(token)) for _ in range(30)]
    codes = [o.code for o in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    limited = [o for o in outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert limited, codes
    edge.client.last_429 = time.monotonic()  # the next test waits out the sidecar cache
    assert_denied(limited[0], grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
    assert limited[0].trailers["retry-after"].isdigit()


def _grpcurl(edge: Edge, token: str, method: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            GRPCURL, "-max-time", "10", "-cacert", str(edge.client.ca),
            "-import-path", str(REPO / "protos"), "-proto", "demo/v1/greeter.proto",
            "-H", f"authorization: Bearer {token}", "-d", '{"name": "carol"}',
            f"{edge.client.server_name}:{edge.client.port}", f"{SERVICE}/{method}",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_grpcurl_walk_through(edge: Edge) -> None:
    """The README's two grpcurl calls: one allowed, one denied."""
    edge.need_grpc_demo()
    token = edge.mint("carol", scope=SCOPE)
    allowed = _grpcurl(edge, token, "SayHello")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["message"] == "Hello, carol!"
    denied = _grpcurl(edge, token, "SayGoodbye")
    assert denied.returncode != 0
    assert "Code: PermissionDenied" in denied.stderr
