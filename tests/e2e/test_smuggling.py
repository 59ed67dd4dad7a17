"""Request bodies through the whole stack: the body limit, and requests hidden in bodies.

The attack (issue 15): a public route, a large body, and in the body's tail a second
request with forged x-auth-* headers. An upstream that leaves part of a body unread on a
kept-alive connection runs that tail as a request nobody authorized or rate limited, and
a tail that ends mid-request turns the next client's request on that connection into its
header value. The edge caps bodies (413 before anything reaches the upstream, whatever the
framing), sends every request with a body on an upstream connection of its own, and the
demo upstream reads every body to its end. The demo upstream records each request it
served (`upstream` fixture): the smuggled request must never be among them. That record
is in this process only for a self-started stack: against an external one, the tests
whose point it is are skipped (own_stack), the others check the replies alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.envoy_config import EnvoyParams
from devstack.upstream import DemoUpstream
from tests.e2e.conftest import Edge, assert_hardened, identity_at_upstream
from tests.e2e.raw_clients import (
    H2Reply,
    chunked,
    content_length_head,
    h1_exchange,
    h2_request,
)
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

LIMIT = EnvoyParams().max_request_body_bytes
PING = "/api/v1/public/ping"
SMUGGLED_PATH = "/api/v1/admin/stats"
SMUGGLED = (
    f"GET {SMUGGLED_PATH} HTTP/1.1\r\n"
    "host: localhost\r\n"
    "x-auth-subject: root\r\n"
    "x-auth-roles: admin\r\n"
    "x-request-id: smuggled\r\n"
    "content-length: 0\r\n"
    "\r\n"
).encode()
# Ends mid-request: the next request on the connection would become its header's value.
SMUGGLED_PREFIX = (
    f"GET {SMUGGLED_PATH} HTTP/1.1\r\nhost: localhost\r\nx-auth-subject: root\r\nx-ignore: "
).encode()
# Past the old demo upstream's 64 KiB read, which left the rest on the connection.
FILLER = b"a" * 70_000


def _assert_nothing_smuggled(upstream: DemoUpstream) -> None:
    for served in upstream.served.snapshot():
        assert not served.target.startswith(SMUGGLED_PATH), served
        assert "root" not in (served.header("x-auth-subject") or ""), served
        assert served.header("x-auth-roles") is None, served
        assert served.header("x-request-id") != "smuggled", served


def _payload_too_large(reply: Reply | H2Reply) -> None:
    assert reply.status == 413, (reply.status, reply.body)
    assert reply.header("content-type") == "application/json"
    request_id = reply.header("x-request-id")
    assert request_id
    expected = {"error": "payload_too_large", "request_id": request_id}
    assert reply.json() == expected


def _body_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    return path


# --- the body limit -------------------------------------------------------------------------


def _h1_content_length(edge: Edge, body: bytes) -> Reply:
    head = content_length_head("PUT", "/api/v1/users/alice", len(body))
    return h1_exchange(edge.client, head, body)


def _h1_chunked(edge: Edge, body: bytes) -> Reply:
    head, framed = chunked("PUT", "/api/v1/users/alice", body)
    return h1_exchange(edge.client, head, framed)


H1_SENDERS: dict[str, Callable[[Edge, bytes], Reply]] = {
    "content-length": _h1_content_length,
    "chunked": _h1_chunked,
}


@pytest.mark.parametrize("framing", sorted(H1_SENDERS))
def test_http1_body_over_the_limit_is_413_before_the_upstream(
    edge: Edge, upstream: DemoUpstream | None, framing: str
) -> None:
    before = edge.upstream_mark()

    reply = H1_SENDERS[framing](edge, b"x" * (LIMIT + 1))

    _payload_too_large(reply)
    assert_hardened(reply)
    edge.assert_upstream_untouched(before)
    assert upstream is None or upstream.served.snapshot() == []


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "no-length"])
def test_http2_body_over_the_limit_is_413_before_the_upstream(
    edge: Edge, upstream: DemoUpstream | None, tmp_path: Path, content_length: bool
) -> None:
    before = edge.upstream_mark()
    body = _body_file(tmp_path, b"x" * (2 * LIMIT))

    reply = h2_request(edge.client, PING, body=body, content_length=content_length)

    _payload_too_large(reply)
    assert reply.header("x-content-type-options") == "nosniff"
    assert reply.header("strict-transport-security")
    edge.assert_upstream_untouched(before)
    assert upstream is None or upstream.served.snapshot() == []


def test_a_body_at_the_limit_reaches_the_upstream_whole(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    # A rule without a body schema (PUT has one, and its own 4 KiB limit: test_body.py).
    token = edge.mint("root", roles=["admin"])
    head = content_length_head(
        "DELETE", "/api/v1/users/alice", LIMIT, f"authorization: Bearer {token}"
    )

    reply = h1_exchange(edge.client, head, b"y" * LIMIT)

    assert identity_at_upstream(reply)["x-auth-subject"] == "root"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.body_bytes == LIMIT


def test_an_unauthenticated_body_over_the_limit_is_still_413(edge: Edge) -> None:
    # The body limit comes before authentication: no token needed to be refused.
    reply = _h1_content_length(edge, b"z" * (LIMIT + 1))
    _payload_too_large(reply)


# --- requests hidden in a body never run -----------------------------------------------------


@pytest.mark.own_stack("reads the demo upstream's record of the requests it served")
@pytest.mark.parametrize("framing", sorted(H1_SENDERS))
def test_http1_request_in_a_body_tail_never_reaches_the_upstream(
    edge: Edge, upstream: DemoUpstream, framing: str
) -> None:
    body = FILLER + SMUGGLED
    if framing == "chunked":
        head, framed = chunked("GET", PING, body)
    else:
        head, framed = content_length_head("GET", PING, len(body)), body

    reply = h1_exchange(edge.client, head, framed)
    # More requests afterwards: a request left on an upstream connection would run now.
    later = [edge.client.request(PING) for _ in range(3)]

    assert identity_at_upstream(reply) == {}
    assert [r.status for r in later] == [200, 200, 200]
    served = upstream.served.snapshot()
    assert [s.target for s in served] == [PING] * 4
    assert served[0].body_bytes == len(body)
    _assert_nothing_smuggled(upstream)


@pytest.mark.own_stack("reads the demo upstream's record of the requests it served")
@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "no-length"])
def test_http2_request_in_a_body_tail_never_reaches_the_upstream(
    edge: Edge, upstream: DemoUpstream, tmp_path: Path, content_length: bool
) -> None:
    body = FILLER + SMUGGLED
    reply = h2_request(
        edge.client,
        PING,
        body=_body_file(tmp_path, body),
        content_length=content_length,
    )
    later = [edge.client.request(PING) for _ in range(3)]

    assert reply.status == 200
    assert reply.json()["identity"] == {}
    assert [r.status for r in later] == [200, 200, 200]
    served = upstream.served.snapshot()
    assert [s.target for s in served] == [PING] * 4
    # The buffer filter gave the HTTP/2 body a content-length for the upstream.
    assert served[0].body_bytes == len(body)
    assert served[0].header("content-length") == str(len(body))
    _assert_nothing_smuggled(upstream)


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_a_tail_ending_mid_request_does_not_take_over_the_next_clients_request(
    edge: Edge, upstream: DemoUpstream | None, tmp_path: Path, protocol: str
) -> None:
    body = FILLER + SMUGGLED_PREFIX
    if protocol == "h2":
        first = h2_request(edge.client, PING, body=_body_file(tmp_path, body))
        assert first.status == 200
    else:
        head = content_length_head("GET", PING, len(body))
        assert h1_exchange(edge.client, head, body).status == 200
    token = edge.mint("alice", scope="users:read")

    # The next clients, each on a connection of its own.
    replies = [edge.client.request("/api/v1/users/alice", token=token) for _ in range(3)]

    for reply in replies:
        assert identity_at_upstream(reply)["x-auth-subject"] == "alice"  # its own answer
        assert reply.json()["user_id"] == "alice"
    if upstream is not None:
        served = [s.target for s in upstream.served.snapshot()]
        assert served == [PING] + ["/api/v1/users/alice"] * 3
        _assert_nothing_smuggled(upstream)


# --- upstream connections ---------------------------------------------------------------------


def _connections(edge: Edge, cluster: str) -> int:
    return edge.counter(f"cluster.{cluster}.upstream_cx_total")


def _requests(edge: Edge, cluster: str) -> int:
    return edge.counter(f"cluster.{cluster}.upstream_rq_total")


@pytest.mark.own_stack("counts upstream connections in Envoy's admin API")
def test_every_request_with_a_body_gets_an_upstream_connection_of_its_own(
    edge: Edge, tmp_path: Path
) -> None:
    token = edge.mint("alice", scope="users:write")
    auth = f"authorization: Bearer {token}"
    json_type = "content-type: application/json"
    profile = b'{"display_name": "Alice", "email": "alice@example.com"}'  # PUT's schema
    before = _connections(edge, "upstream_body"), _requests(edge, "upstream_body")
    plain_before = _requests(edge, "upstream")

    for _ in range(3):
        head = content_length_head("PUT", "/api/v1/users/alice", len(profile), auth, json_type)
        assert h1_exchange(edge.client, head, profile).status == 200
    head, framed = chunked("PUT", "/api/v1/users/alice", profile, auth, json_type)
    assert h1_exchange(edge.client, head, framed).status == 200
    h2 = h2_request(
        edge.client,
        "/api/v1/users/alice",
        method="PUT",
        headers=[("authorization", f"Bearer {token}"), ("content-type", "application/json")],
        body=_body_file(tmp_path, profile),
        content_length=False,
    )
    assert h2.status == 200
    # Requests without a body share kept-alive connections.
    with edge.client.session() as send:
        assert [send(PING).status for _ in range(3)] == [200, 200, 200]

    after = _connections(edge, "upstream_body"), _requests(edge, "upstream_body")
    assert after == (before[0] + 5, before[1] + 5)
    assert _requests(edge, "upstream") == plain_before + 3
