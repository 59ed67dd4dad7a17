"""Issue 15's hardening in a real Envoy, between fake sidecars and an upstream that
misbehaves on purpose.

- An upstream that answers before reading the body and keeps the connection: requests
  after it still arrive in step, because a request with a body never shares an upstream
  connection; with reuse allowed, Envoy would send the next request after the unread body.
- ext_authz sees none of the spoofable headers: it decides on what the upstream sees.
- ext_authz's mutation rules are on: an allow that touches a header outside the identity
  headers, or sets an invalid value, fails closed (500), never half-applied.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2

from devstack.edge_hygiene import SPOOFABLE_REQUEST_HEADERS
from devstack.pki import Pki
from tests.envoy.envoy_process import RunningEnvoy, free_port_params, healthy_envoy
from tests.envoy.fakes import FakeAuthz, FakeRateLimit

pytestmark = pytest.mark.e2e

BIG = 16 << 20  # well past what loopback socket buffers hold while nobody reads


class EarlyAnswerUpstream:
    """HTTP/1.1 done wrong: answers each request once its headers are in, never reads a
    body, keeps the connection. Records each request line and counts connections."""

    def __init__(self, port: int) -> None:
        self.lines: list[bytes] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", port))
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while chunk := _recv(conn):
                pending += chunk
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    self.lines.append(head.split(b"\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    pending = b""  # the rest of what arrived is dropped, never parsed


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


class MutatingAuthz(FakeAuthz):
    """FakeAuthz, plus `x-test-mutate: NAME=VALUE`: allow, setting that request header."""

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        wanted = request.attributes.request.http.headers.get("x-test-mutate")
        if wanted is None:
            return super().Check(request, context)
        self.checks.append(request)
        name, _, value = wanted.partition("=")
        header = base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value.replace("NL", "\n")),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        ok = external_auth_pb2.OkHttpResponse(headers=[header])
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), ok_response=ok
        )


@dataclass
class Stack:
    envoy: RunningEnvoy
    authz: MutatingAuthz
    upstream: EarlyAnswerUpstream

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> int:
        context = ssl.create_default_context(cafile=str(self.envoy.pki.ca))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.envoy.params.listener_port, context=context, timeout=30
        )
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


@contextlib.contextmanager
def _running(pki: Pki, workdir: Path, **changes: object) -> Iterator[Stack]:
    params = free_port_params(pki, route_body_limits=(("/big/", 4 * BIG),), **changes)
    authz = MutatingAuthz(pki, params.authz_port)
    ratelimit = FakeRateLimit(pki, params.ratelimit_port)
    upstream = EarlyAnswerUpstream(params.upstream_port)
    for server in (authz, ratelimit, upstream):
        server.start()
    try:
        with healthy_envoy(params, pki, workdir) as envoy:
            yield Stack(envoy, authz, upstream)
    finally:
        for server in (authz, ratelimit, upstream):
            server.stop()


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _running(pki, tmp_path_factory.mktemp("envoy")) as running:
        yield running


@pytest.fixture
def edge(stack: Stack) -> Stack:
    stack.authz.checks.clear()
    stack.upstream.lines.clear()
    return stack


# --- a request with a body never shares an upstream connection -------------------------------


def _body_then_two_more(edge: Stack) -> None:
    assert edge.send("PUT", "/big/one", b"a" * BIG, **{"x-test-public": "1"}) == 200
    assert edge.send("GET", "/second", **{"x-test-public": "1"}) == 200
    assert edge.send("GET", "/third", **{"x-test-public": "1"}) == 200


def test_an_upstream_that_leaves_a_body_unread_cannot_put_the_next_request_out_of_step(
    edge: Stack,
) -> None:
    before = edge.upstream.connections

    _body_then_two_more(edge)

    assert edge.upstream.lines == [b"PUT /big/one HTTP/1.1", b"GET /second HTTP/1.1",
                                   b"GET /third HTTP/1.1"]  # fmt: skip
    # The body's connection was used once; the two requests without a body shared one.
    assert edge.upstream.connections == before + 2


def test_with_reuse_allowed_envoy_would_send_the_next_request_after_the_unread_body(
    pki: Pki, tmp_path: Path
) -> None:
    """Why `upstream_body_requests_per_connection` is 1: the answer came while Envoy was
    still writing the body, and Envoy put the connection back in the pool anyway."""
    with _running(pki, tmp_path, upstream_body_requests_per_connection=100) as stack:
        assert stack.send("PUT", "/big/one", b"a" * BIG, **{"x-test-public": "1"}) == 200
        assert stack.send("PUT", "/big/two", b"b", **{"x-test-public": "1"}) == 200

        assert stack.upstream.connections == 1
        assert stack.upstream.lines[0] == b"PUT /big/one HTTP/1.1"
        # The next request's line arrives glued to what was left of the first body.
        assert stack.upstream.lines[1].endswith(b"PUT /big/two HTTP/1.1")
        assert stack.upstream.lines[1].startswith(b"aaaa")


# --- ext_authz decides on what the upstream sees --------------------------------------------


def test_ext_authz_never_sees_a_spoofable_header(edge: Stack) -> None:
    names = [n[:-1] + "x" if n.endswith("*") else n for n in SPOOFABLE_REQUEST_HEADERS]
    for start in range(0, len(names), 40):
        headers = {name: "spoofed" for name in names[start : start + 40]}
        assert edge.send("GET", "/api", **headers, **{"x-test-public": "1"}) == 200
    seen = {k for check in edge.authz.checks for k in check.attributes.request.http.headers}
    assert seen & set(names) == set()
    assert "x-test-public" in seen


# --- ext_authz's mutation rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "status"),
    [
        ("x-auth-subject=alice", 200),
        ("x-decision-id=d1", 200),
        ("x-something-else=1", 500),
        ("x-envoy-original-path=/admin", 500),
        ("x-auth-subject=ali NLce", 500),
    ],
    ids=["identity", "decision-id", "other-name", "x-envoy", "bad-value"],
)
def test_an_allow_may_touch_only_the_identity_headers(
    edge: Stack, mutation: str, status: int
) -> None:
    before = edge.envoy.stat("http.edge.ext_authz.invalid")
    assert edge.send("GET", "/api", **{"x-test-mutate": mutation}) == status
    assert edge.envoy.stat("http.edge.ext_authz.invalid") == before + (status == 500)
