"""The demo gRPC upstream on its own: both methods, the subject echoed, reflection on."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devstack.grpc_upstream import SERVICE, GrpcUpstream, greeter_pb2


@pytest.fixture
def greeter() -> Iterator[GrpcUpstream]:
    server = GrpcUpstream(port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _call(server: GrpcUpstream, method: str, metadata: list[tuple[str, str]]) -> object:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=greeter_pb2.HelloRequest.SerializeToString,
            response_deserializer=greeter_pb2.HelloReply.FromString,
        )
        return stub(greeter_pb2.HelloRequest(name="ann"), metadata=metadata, timeout=5)


def test_say_hello_echoes_the_subject_ext_authz_injected(greeter: GrpcUpstream) -> None:
    reply = _call(greeter, "SayHello", [("x-auth-subject", "ann")])
    assert reply == greeter_pb2.HelloReply(message="Hello, ann!", subject="ann")
    [call] = greeter.calls
    assert (call.method, call.get("x-auth-subject")) == ("SayHello", "ann")


def test_say_goodbye_exists_so_the_edge_is_what_denies_it(greeter: GrpcUpstream) -> None:
    reply = _call(greeter, "SayGoodbye", [])
    assert reply == greeter_pb2.HelloReply(message="Goodbye, ann!", subject="")


def test_reflection_lists_the_greeter(greeter: GrpcUpstream) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{greeter.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert SERVICE in names
