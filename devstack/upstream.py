"""The demo upstream API (ARCHITECTURE.md section 4) on 127.0.0.1:8081.

It trusts Envoy completely (it is never exposed) and echoes the identity headers it got,
so users and tests can see exactly what the authz sidecar injected:

    GET    /api/v1/public/ping
    GET    /api/v1/users/{user_id}
    PUT    /api/v1/users/{user_id}
    DELETE /api/v1/users/{user_id}
    GET    /api/v1/admin/stats
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from devstack.http_thread import BackgroundHttpServer

IDENTITY_HEADERS = (
    "x-auth-subject",
    "x-auth-issuer",
    "x-auth-scopes",
    "x-auth-roles",
    "x-auth-client-id",
)
_USER = re.compile(r"^/api/v1/users/([^/]+)$")
_MAX_BODY = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream"
    # Headers and body go out in two writes; with Nagle on, a kept-alive connection stalls
    # ~40 ms per response on delayed ACKs (Envoy reuses its upstream connections).
    disable_nagle_algorithm = True

    def _identity(self) -> dict[str, str]:
        return {h: v for h in IDENTITY_HEADERS if (v := self.headers.get(h)) is not None}

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        request_id = self.headers.get("x-request-id")
        body = json.dumps({**payload, "identity": self._identity(), "request_id": request_id})
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        path = self.path.partition("?")[0]
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(min(length, _MAX_BODY))
        if method == "GET" and path == "/api/v1/public/ping":
            self._reply(HTTPStatus.OK, {"pong": True})
        elif method == "GET" and path == "/api/v1/admin/stats":
            self._reply(HTTPStatus.OK, {"users": 2, "uptime_s": 42})
        elif (m := _USER.match(path)) and method in ("GET", "PUT", "DELETE"):
            verb = {"GET": "read", "PUT": "updated", "DELETE": "deleted"}[method]
            self._reply(HTTPStatus.OK, {"user_id": m.group(1), "action": verb})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not_found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        return  # Envoy's access log already records every request


class DemoUpstream(BackgroundHttpServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 8081) -> None:
        super().__init__(_Handler, host=host, port=port)
