"""Stand-ins for the sidecars and the upstream, so Envoy's config is tested on its own.

They speak the real protocols (gRPC over mTLS with the test PKI, gRPC health, HTTP/1.1)
but decide by test-chosen rules and record what Envoy sent them.

- FakeAuthz: `x-test-subject: S` allows as S (identity header + dynamic metadata `subject`
  and `rule: test`), `x-test-public: 1` allows with no identity (metadata `rule: public`),
  anything else is a 401 JSON denial.
- FakeRateLimit: OVER_LIMIT when a descriptor value is in `over_limit_values`.
- EchoUpstream: answers with the request it got (its body read), as JSON, plus
  fingerprinting headers.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack.pki import Pki

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class GrpcSidecar:
    """A threaded gRPC server with mTLS and gRPC health, on a given port."""

    service_name = ""

    def __init__(self, pki: Pki, port: int) -> None:
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.register(self.server)
        creds = grpc.ssl_server_credentials(
            [(pki.sidecar_key.read_bytes(), pki.sidecar_cert.read_bytes())],
            root_certificates=pki.ca.read_bytes(),
            require_client_auth=True,
        )
        bound = self.server.add_secure_port(f"127.0.0.1:{port}", creds)
        if bound != port:
            raise OSError(f"cannot bind 127.0.0.1:{port}")

    def register(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", self.service_name):
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()
        self.set_serving(True)

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


class FakeAuthz(GrpcSidecar, external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    service_name = "envoy.service.auth.v3.Authorization"

    def __init__(self, pki: Pki, port: int) -> None:
        self.checks: list[external_auth_pb2.CheckRequest] = []
        super().__init__(pki, port)

    def register(self, server: grpc.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self, server)

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        self.checks.append(request)
        http = request.attributes.request.http
        headers = dict(http.headers)
        subject = headers.get("x-test-subject")
        if subject:
            ok = external_auth_pb2.OkHttpResponse(headers=[_header("x-auth-subject", subject)])
            response = external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK), ok_response=ok
            )
            response.dynamic_metadata.update({"subject": subject, "rule": "test"})
            return response
        if headers.get("x-test-public"):
            ok = external_auth_pb2.OkHttpResponse(headers_to_remove=["x-auth-subject"])
            response = external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK), ok_response=ok
            )
            response.dynamic_metadata.update({"rule": "public"})
            return response
        denied = external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            body=json.dumps({"error": "unauthorized", "request_id": "x"}),
            headers=[
                _header("content-type", "application/json"),
                _header("www-authenticate", 'Bearer realm="test"'),
            ],
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED), denied_response=denied
        )


@dataclass
class RateLimitCall:
    domain: str
    descriptors: list[list[tuple[str, str]]]


class FakeRateLimit(GrpcSidecar, rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    service_name = "envoy.service.ratelimit.v3.RateLimitService"

    def __init__(self, pki: Pki, port: int) -> None:
        self.calls: list[RateLimitCall] = []
        self.over_limit_values: set[str] = set()
        super().__init__(pki, port)

    def register(self, server: grpc.Server) -> None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, server)

    def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        self.calls.append(RateLimitCall(request.domain, descriptors))
        over = any(v in self.over_limit_values for d in descriptors for _, v in d)
        code = rls_pb2.RateLimitResponse.OVER_LIMIT if over else rls_pb2.RateLimitResponse.OK
        limit = rls_pb2.RateLimitResponse.RateLimit(
            name="test", requests_per_unit=20, unit=rls_pb2.RateLimitResponse.RateLimit.SECOND
        )
        status = rls_pb2.RateLimitResponse.DescriptorStatus(
            code=code,
            current_limit=limit,
            limit_remaining=0 if over else 7,
            duration_until_reset=duration_pb2.Duration(seconds=1),
        )
        response = rls_pb2.RateLimitResponse(
            overall_code=code, statuses=[status for _ in descriptors]
        )
        if over:
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value="1")
            )
        return response


@dataclass
class EchoUpstream:
    """HTTP/1.1 server answering every request with {method, path, headers} as JSON."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                # Envoy sends every body with a content-length (the buffer filter adds one).
                length = int(self.headers.get("content-length") or 0)
                record = {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": self.rfile.read(length).decode("latin-1") if length else "",
                }
                seen.append(record)
                body = json.dumps(record).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("x-powered-by", "EchoUpstream")
                self.send_header("cache-control", "public, max-age=600")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
