"""The demo upstream as an HTTP/1.1 server, over raw sockets: framing, not the demo API.

Envoy reuses its connections to the upstream for other clients' requests, so bytes the
upstream leaves unread would be parsed as a request nobody authorized (docs/edge.md,
request smuggling). These tests speak to it byte for byte.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import IO, Any

import pytest

from devstack.upstream import DemoUpstream, ServedRequest, echo_body, route

SMUGGLED = (
    b"GET /api/v1/admin/stats HTTP/1.1\r\n"
    b"host: upstream\r\n"
    b"x-auth-subject: root\r\n"
    b"x-auth-roles: admin\r\n"
    b"\r\n"
)
# Ends mid-request: whatever comes next on the connection would become its header value.
SMUGGLED_PREFIX = (
    b"GET /api/v1/admin/stats HTTP/1.1\r\nhost: upstream\r\nx-auth-subject: root\r\nx-ignore: "
)
LIMIT = 256 * 1024


@pytest.fixture
def upstream() -> Iterator[DemoUpstream]:
    server = DemoUpstream(port=0, max_body_bytes=LIMIT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Client:
    """One raw TCP connection to the upstream; responses parsed by hand, in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader: IO[bytes] = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.reader.read(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    def closed_by_peer(self) -> bool:
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def client(upstream: DemoUpstream) -> Iterator[Client]:
    c = Client(upstream.port)
    try:
        yield c
    finally:
        c.close()


def _request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: upstream", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _chunked(method: str, target: str, body: bytes, chunk: int = 4096) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nhost: upstream\r\ntransfer-encoding: chunked\r\n\r\n"
    parts = [head.encode()]
    for i in range(0, len(body), chunk):
        piece = body[i : i + chunk]
        parts.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _targets(upstream: DemoUpstream) -> list[str]:
    return [r.target for r in upstream.served.snapshot()]


def _json(body: bytes) -> Any:
    return json.loads(body)


# --- the demo API and its echo ---------------------------------------------------------------


def test_routes_and_the_identity_echo(client: Client) -> None:
    client.send(_request("GET", "/api/v1/users/alice", "x-auth-subject: alice", "x-request-id: r1"))
    status, headers, body = client.response()
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["server"] == "demo-upstream"  # the edge removes it
    assert _json(body) == {
        "user_id": "alice",
        "action": "read",
        "identity": {"x-auth-subject": "alice"},
        "request_id": "r1",
    }


@pytest.mark.parametrize(
    ("method", "target", "status", "payload"),
    [
        ("GET", "/api/v1/public/ping?x=1", 200, {"pong": True}),
        ("GET", "/api/v1/admin/stats", 200, {"users": 2, "uptime_s": 42}),
        ("PUT", "/api/v1/users/bob", 200, {"user_id": "bob", "action": "updated"}),
        ("DELETE", "/api/v1/users/bob", 200, {"user_id": "bob", "action": "deleted"}),
        ("POST", "/api/v1/users/bob", 404, {"error": "not_found"}),
        ("GET", "/api/v1/users/a/b", 404, {"error": "not_found"}),
    ],
)
def test_route(method: str, target: str, status: int, payload: dict[str, Any]) -> None:
    assert route(method, target) == (status, payload)


def test_echo_joins_repeated_identity_headers() -> None:
    served = ServedRequest(
        method="GET",
        target="/",
        headers=(("x-auth-roles", "a"), ("x-auth-roles", "b")),
        body_bytes=0,
    )
    echoed = _json(echo_body(served, {}))
    assert echoed == {"identity": {"x-auth-roles": "a, b"}, "request_id": None}


# --- framing ---------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(upstream: DemoUpstream, client: Client) -> None:
    client.send(
        _request("GET", "/api/v1/users/one")
        + _request("PUT", "/api/v1/users/two", body=b'{"a": 1}')
        + _request("GET", "/api/v1/users/three")
    )
    users = [_json(client.response()[2])["user_id"] for _ in range(3)]
    assert users == ["one", "two", "three"]
    assert _targets(upstream) == [f"/api/v1/users/{u}" for u in users]
    assert [r.body_bytes for r in upstream.served.snapshot()] == [0, 8, 0]


@pytest.mark.parametrize("filler", [0, 70_000, 200_000], ids=["small", "over-64KiB", "large"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_in_a_body_tail_is_body(
    upstream: DemoUpstream, client: Client, filler: int, framing: str
) -> None:
    body = b"a" * filler + SMUGGLED
    if framing == "chunked":
        client.send(_chunked("PUT", "/api/v1/users/alice", body))
    else:
        client.send(_request("PUT", "/api/v1/users/alice", body=body))
    client.send(_request("GET", "/api/v1/public/ping"))  # the connection is still in step

    first, second = client.response(), client.response()

    assert (first[0], _json(first[2])["user_id"]) == (200, "alice")
    assert second[0] == 200
    assert _json(second[2]) == {"pong": True, "identity": {}, "request_id": None}
    assert _targets(upstream) == ["/api/v1/users/alice", "/api/v1/public/ping"]
    assert upstream.served.snapshot()[0].body_bytes == len(body)


def test_a_body_ending_mid_request_does_not_take_over_the_next_request(
    upstream: DemoUpstream, client: Client
) -> None:
    client.send(_request("GET", "/api/v1/public/ping", body=b"b" * 70_000 + SMUGGLED_PREFIX))
    assert client.response()[0] == 200
    client.send(_request("GET", "/api/v1/users/next-client", "x-request-id: next"))

    status, _, body = client.response()

    assert status == 200
    assert (_json(body)["user_id"], _json(body)["request_id"]) == ("next-client", "next")
    assert _targets(upstream) == ["/api/v1/public/ping", "/api/v1/users/next-client"]
    assert all(r.header("x-auth-subject") is None for r in upstream.served.snapshot())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_body_is_413_and_the_connection_closes(
    upstream: DemoUpstream, client: Client, framing: str
) -> None:
    body = b"c" * (LIMIT + 1)
    if framing == "chunked":
        client.send(_chunked("PUT", "/api/v1/users/alice", body) + SMUGGLED)
    else:
        client.send(_request("PUT", "/api/v1/users/alice", body=body) + SMUGGLED)

    status, headers, _ = client.response()

    assert (status, headers["connection"]) == (413, "close")
    assert client.closed_by_peer()
    assert _targets(upstream) == []


def test_a_body_at_the_limit_is_served(upstream: DemoUpstream, client: Client) -> None:
    client.send(_request("PUT", "/api/v1/users/alice", body=b"d" * LIMIT))
    assert client.response()[0] == 200
    assert upstream.served.snapshot()[0].body_bytes == LIMIT


def test_expect_100_continue_is_honoured(upstream: DemoUpstream, client: Client) -> None:
    client.send(_request("PUT", "/api/v1/users/alice", "expect: 100-continue", "content-length: 3"))
    status, _, _ = client.response()
    assert status == 100
    client.send(b"abc")
    assert client.response()[0] == 200
    assert upstream.served.snapshot()[0].body_bytes == 3


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/v1/public/ping HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/v1/public/ping HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
        b"content-length: 2\r\n\r\nab",
        b"GET /api/v1/public/ping HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
        b"GET /api/v1/public/ping HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET /api/v1/public/ping HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "te-not-chunked", "no-colon", "two-hosts", "junk"],
)
def test_ambiguous_framing_is_400_and_the_connection_closes(
    upstream: DemoUpstream, client: Client, raw: bytes
) -> None:
    client.send(raw + _request("GET", "/api/v1/admin/stats"))
    status, headers, _ = client.response()
    # 501 for a transfer coding h11 does not implement (RFC 9112 section 6.1).
    assert (status, headers["connection"]) in ((400, "close"), (501, "close"))
    assert client.closed_by_peer()
    assert _targets(upstream) == []


def test_a_client_that_closes_mid_body_is_not_served(upstream: DemoUpstream) -> None:
    c = Client(upstream.port)
    c.send(b"PUT /api/v1/users/alice HTTP/1.1\r\nhost: upstream\r\ncontent-length: 100\r\n\r\nx")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.response()[0] == 400  # "incomplete message body", then closed
    assert c.closed_by_peer()
    c.close()
    assert _targets(upstream) == []
