"""gRPC through the real Envoy, between the fake sidecars: statuses a gRPC client reads.

Measured before the gRPC mappers existed: Envoy already answers a gRPC request's local
replies as gRPC (HTTP 200, trailers only, the body as grpc-message): ext_authz's 401 as
UNAUTHENTICATED, both rate-limit filters' 429 as RESOURCE_EXHAUSTED. But codes outside
gRPC's HTTP table came out UNKNOWN (the request guard's 431, for one) and 400 INTERNAL;
devstack.envoy_config's GRPC_STATUS_BY_HTTP_CODE fixes those, for gRPC requests only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.envoy_config import SECURITY_HEADERS
from devstack.grpc_upstream import GrpcUpstream, greeter_pb2
from devstack.pki import Pki
from tests.envoy.envoy_process import RunningEnvoy, free_port_params, healthy_envoy
from tests.envoy.fakes import EchoUpstream, FakeAuthz, FakeRateLimit
from tests.support.processes import free_port

pytestmark = pytest.mark.e2e


@dataclass
class GrpcStack:
    envoy: RunningEnvoy
    authz: FakeAuthz
    ratelimit: FakeRateLimit
    upstream: EchoUpstream
    greeter: GrpcUpstream

    def call(
        self, metadata: Sequence[tuple[str, str]] = (), method: str = "SayHello"
    ) -> tuple[grpc.StatusCode, str, dict[str, str], Any]:
        """One unary call over TLS: (code, details, trailing metadata, reply or None)."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.envoy.pki.ca.read_bytes())
        address = f"127.0.0.1:{self.envoy.params.listener_port}"
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(address, creds, options=options) as channel:
            stub = channel.unary_unary(
                f"/demo.v1.Greeter/{method}",
                request_serializer=greeter_pb2.HelloRequest.SerializeToString,
                response_deserializer=greeter_pb2.HelloReply.FromString,
            )
            try:
                reply, call = stub.with_call(
                    greeter_pb2.HelloRequest(name="ann"), metadata=list(metadata), timeout=10
                )
            except grpc.RpcError as error:
                trailers = {m.key: m.value for m in error.trailing_metadata() or ()}
                return error.code(), error.details() or "", trailers, None
            trailers = {m.key: m.value for m in call.trailing_metadata() or ()}
            return grpc.StatusCode.OK, "", trailers, reply


@contextlib.contextmanager
def _stack(pki: Pki, workdir: Path, **changes: object) -> Iterator[GrpcStack]:
    params = free_port_params(pki, **changes)
    assert params.grpc_upstream is not None
    servers = (
        FakeAuthz(pki, params.authz_port),
        FakeRateLimit(pki, params.ratelimit_port),
        EchoUpstream(params.upstream_port),
        GrpcUpstream(port=int(params.grpc_upstream.rpartition(":")[2])),
    )
    for server in servers:
        server.start()
    try:
        with healthy_envoy(params, pki, workdir) as envoy:
            yield GrpcStack(envoy, *servers)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcStack]:
    with _stack(pki, tmp_path_factory.mktemp("envoy-grpc")) as running:
        yield running


@pytest.fixture
def edge(stack: GrpcStack) -> GrpcStack:
    stack.ratelimit.over_limit_values.clear()
    stack.greeter.calls.clear()
    return stack


def _assert_hardened(trailers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS:
        assert trailers.get(name) == value, (name, trailers)


def test_allowed_call_reaches_the_grpc_upstream_with_identity(edge: GrpcStack) -> None:
    code, _, _, reply = edge.call([("x-test-subject", "ann"), ("x-auth-subject", "root")])
    assert code == grpc.StatusCode.OK
    assert (reply.message, reply.subject) == ("Hello, ann!", "ann")
    [seen] = edge.greeter.calls
    assert [v for k, v in seen.metadata if k == "x-auth-subject"] == ["ann"]


def test_authz_denial_is_unauthenticated_with_the_challenge(edge: GrpcStack) -> None:
    code, details, trailers, _ = edge.call()
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert json.loads(details)["error"] == "unauthorized"
    assert trailers["www-authenticate"] == 'Bearer realm="test"'
    _assert_hardened(trailers)
    assert edge.greeter.calls == []


def test_rate_limit_is_resource_exhausted_not_unavailable(edge: GrpcStack) -> None:
    edge.ratelimit.over_limit_values.add("ann")
    code, details, trailers, _ = edge.call([("x-test-subject", "ann")])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert json.loads(details)["error"] == "rate_limited"
    assert trailers["retry-after"] == "1"
    _assert_hardened(trailers)
    assert edge.greeter.calls == []


def test_request_guard_431_is_resource_exhausted_for_grpc_only(edge: GrpcStack) -> None:
    # Over the request guard's count with the call's own ~10 entries, under the codec's
    # (which resets the stream instead of answering).
    many = [(f"x-extra-{i}", "v") for i in range(edge.envoy.params.max_headers_count - 6)]
    code, details, trailers, _ = edge.call([("x-test-subject", "ann"), *many])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # UNKNOWN without the mappers
    assert json.loads(details)["error"] == "request_header_fields_too_large"
    _assert_hardened(trailers)
    # The same refusal to an HTTP client is unchanged: a 431 with the JSON body.
    reply = edge.envoy.request("/api/v1/x", headers=many)
    assert reply.status == 431
    assert reply.header("grpc-status") is None
    assert json.loads(reply.body)["error"] == "request_header_fields_too_large"


def test_http_requests_to_a_grpc_path_still_go_to_the_http_api(edge: GrpcStack) -> None:
    reply = edge.envoy.request(
        "/demo.v1.Greeter/SayHello", method="POST", headers=[("x-test-subject", "ann")]
    )
    assert reply.status == 200
    assert json.loads(reply.body)["path"] == "/demo.v1.Greeter/SayHello"
    assert edge.greeter.calls == []


def test_local_stage0_limit_is_resource_exhausted(
    stack: GrpcStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("envoy-grpc-tight")
    params = dataclasses.replace(
        stack.envoy.params,
        listener_port=free_port(),
        admin_port=free_port(),
        stage0_burst=2,
        stage0_requests_per_second=1,
    )
    with healthy_envoy(params, stack.envoy.pki, workdir) as tight_envoy:
        tight = dataclasses.replace(stack, envoy=tight_envoy)
        codes = [tight.call([("x-test-public", "1")])[0] for _ in range(4)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.UNAVAILABLE not in codes
