"""The demo gRPC upstream: `demo.v1.Greeter` (protos/demo/v1/greeter.proto).

Plaintext HTTP/2 on a loopback port, reached only through Envoy, which terminates TLS and
runs the same ext_authz and rate limits as for the HTTP API. SayHello answers with the
subject Envoy's ext_authz injected (`x-auth-subject`), so a test can see that identity
reached the upstream; SayGoodbye exists only so that a method the policy does not list
has a real implementation behind the edge. Server reflection is on, so grpcurl can list
and describe the service, and the edge's policy decides who may use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from edgeguard_protos.demo.v1 import greeter_pb2

SERVICE = "demo.v1.Greeter"
SUBJECT_METADATA = "x-auth-subject"


@dataclass(frozen=True)
class GreeterCall:
    """One call the upstream answered: the method and the metadata it received."""

    method: str
    metadata: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.metadata if key == name), None)


Handler = Callable[[Any, grpc.ServicerContext], Any]  # HelloRequest -> HelloReply


class GrpcUpstream:
    """The Greeter on a threaded grpc.Server; `calls` records every call answered."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8083) -> None:
        self.calls: list[GreeterCall] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {"SayHello": self._say_hello, "SayGoodbye": self._say_goodbye}
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, _unary(handlers))]
        )
        reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], self._server)
        # Plaintext is fine only because the port is loopback and Envoy is the one client.
        self.port = int(self._server.add_insecure_port(f"{host}:{port}"))
        if self.port == 0:
            raise OSError(f"cannot bind {host}:{port}")

    def start(self) -> int:
        self._server.start()
        return self.port

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    def _record(self, method: str, context: grpc.ServicerContext) -> GreeterCall:
        metadata = tuple((str(k), str(v)) for k, v in context.invocation_metadata())
        call = GreeterCall(method, metadata)
        with self._lock:
            self.calls.append(call)
        return call

    def _say_hello(self, request: Any, context: grpc.ServicerContext) -> Any:
        subject = self._record("SayHello", context).get(SUBJECT_METADATA) or ""
        return greeter_pb2.HelloReply(message=f"Hello, {request.name}!", subject=subject)

    def _say_goodbye(self, request: Any, context: grpc.ServicerContext) -> Any:
        subject = self._record("SayGoodbye", context).get(SUBJECT_METADATA) or ""
        return greeter_pb2.HelloReply(message=f"Goodbye, {request.name}!", subject=subject)


def _unary(handlers: Mapping[str, Handler]) -> dict[str, Any]:
    # Bound from the messages: `make proto` generates no *_pb2_grpc stubs (protogen.py).
    return {
        name: grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=greeter_pb2.HelloRequest.FromString,
            response_serializer=greeter_pb2.HelloReply.SerializeToString,
        )
        for name, handler in handlers.items()
    }
