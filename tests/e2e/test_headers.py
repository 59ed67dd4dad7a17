"""Request headers through the whole stack: spoofable headers, header limits, Host.

- Spoofable headers (method overrides, client address, URL, host, scheme, client
  certificate, other auth proxies' identity) never reach the upstream as the client sent
  them; Envoy's own x-forwarded-for / x-forwarded-proto replace the client's.
- Many or large headers: 200 or 431, never ext_authz's empty 500 (an allow whose identity
  headers would cross Envoy's header limits). HTTP/2 may also refuse the stream.
- Two Host headers (HTTP/1.1) are a 400; an HTTP/2 host field never overrides :authority.

What the upstream received is read from the demo upstream's record, which is in this
process only for a self-started stack (`upstream` is None otherwise): the tests whose
point it is are own_stack, the others then check the replies alone.
"""

from __future__ import annotations

import pytest

from devstack.edge_hygiene import SPOOFABLE_GROUPS
from devstack.envoy_config import EnvoyParams
from devstack.upstream import DemoUpstream
from tests.e2e.conftest import Edge, assert_denial, assert_hardened, identity_at_upstream
from tests.e2e.raw_clients import h1_exchange, h2_request
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

PING = "/api/v1/public/ping"
PARAMS = EnvoyParams()


def _sample(name: str) -> str:
    """A concrete header name for a list entry (a prefix gets a plausible suffix)."""
    return name[:-1] + ("cert" if name.endswith("-*") else "-cert") if name.endswith("*") else name


def _invalid_stats(edge: Edge) -> int | None:
    """ext_authz's count of checks it could not make (None without Envoy's admin API)."""
    if not edge.own_stack:
        return None
    return edge.counter("http.edge.ext_authz.invalid") + edge.counter(
        "http.edge.ext_authz.request_header_limits_reached"
    )


def _assert_no_invalid_checks(edge: Edge, before: int | None) -> None:
    """ext_authz made every check since `_invalid_stats` gave `before` (where readable:
    without the admin API, the statuses the caller checked are all there is)."""
    if before is not None:
        assert _invalid_stats(edge) == before


# --- spoofable headers ------------------------------------------------------------------------


@pytest.mark.own_stack("reads the demo upstream's record of the headers it received")
@pytest.mark.parametrize("group", sorted(SPOOFABLE_GROUPS))
@pytest.mark.parametrize("route", ["public", "authenticated"])
def test_spoofable_headers_never_reach_the_upstream(
    edge: Edge, upstream: DemoUpstream, group: str, route: str
) -> None:
    sent = [(_sample(name), "spoofed") for name in SPOOFABLE_GROUPS[group]]
    if route == "public":
        reply = edge.client.request(PING, headers=sent)
    else:
        token = edge.mint("alice", scope="users:read")
        reply = edge.client.request("/api/v1/users/alice", headers=sent, token=token)

    assert reply.status == 200, reply.body
    [served] = upstream.served.snapshot()
    leaked = [(k, v) for k, v in served.headers if v == "spoofed" or k in dict(sent)]
    assert leaked == []


def test_method_override_cannot_turn_a_read_into_a_delete(
    edge: Edge, upstream: DemoUpstream | None
) -> None:
    # authz allows GET on your own user; the upstream must not see a DELETE in disguise.
    token = edge.mint("alice", scope="users:read")
    overrides = [(name, "DELETE") for name in SPOOFABLE_GROUPS["method"]]
    reply = edge.client.request("/api/v1/users/alice", headers=overrides, token=token)
    assert reply.json()["action"] == "read"
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.method == "GET"
        assert all(served.header(name) is None for name, _ in overrides)


@pytest.mark.own_stack("reads the demo upstream's record of the headers it received")
def test_envoys_own_forwarding_headers_replace_the_clients(
    edge: Edge, upstream: DemoUpstream
) -> None:
    reply = edge.client.request(
        PING,
        headers=[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-client-cert", 'By=spiffe://evil;Hash=00;Subject="CN=admin"'),
        ],
    )
    assert reply.status == 200
    [served] = upstream.served.snapshot()
    assert served.header("x-forwarded-for") == edge.client.source
    assert served.header("x-forwarded-proto") == "https"
    assert served.header("x-forwarded-client-cert") is None  # no client certificate here


# --- many and large headers -------------------------------------------------------------------


def _padding(count: int) -> list[tuple[str, str]]:
    return [(f"x-pad-{i}", "v") for i in range(count)]


@pytest.mark.parametrize("route", ["public", "authenticated"])
def test_50_to_100_headers_are_200_or_431_never_500(edge: Edge, route: str) -> None:
    token = edge.mint("alice", scope="users:read", roles=["support", "auditor"])
    invalid_before = _invalid_stats(edge)
    statuses: dict[int, int] = {}
    for count in range(50, 101):
        edge.reset_limits()
        if route == "public":
            reply = edge.client.request(PING, headers=_padding(count))
        else:
            reply = edge.client.request("/api/v1/users/alice", headers=_padding(count), token=token)
        statuses[count] = reply.status
        if reply.status == 431:
            assert reply.json()["error"] == "request_header_fields_too_large"
            assert_hardened(reply)
        else:
            assert reply.status == 200, (count, reply.status, reply.body)
            identity_at_upstream(reply)  # the upstream's answer, identity and all

    assert set(statuses.values()) == {200, 431}
    # Monotone: once refused, more headers stay refused.
    first_431 = min(c for c, s in statuses.items() if s == 431)
    assert all(s == 431 for c, s in statuses.items() if c >= first_431)
    _assert_no_invalid_checks(edge, invalid_before)


def test_50_to_100_headers_over_http2_are_never_500(edge: Edge) -> None:
    invalid_before = _invalid_stats(edge)
    outcomes: dict[int, str] = {}
    for count in range(50, 101, 2):
        edge.reset_limits()
        reply = h2_request(edge.client, PING, headers=_padding(count))
        outcomes[count] = "reset" if reply.status is None else str(reply.status)
        assert reply.status in (200, 431, None), (count, reply.status)
        if reply.status is None:
            assert reply.reset  # refused by the codec's limit: the stream, not a 500
    assert {"200", "431"} <= set(outcomes.values())
    _assert_no_invalid_checks(edge, invalid_before)


@pytest.mark.parametrize("size_kb", [24, 30, 31, 32, 33, 40, 47])
def test_large_headers_are_200_or_431_never_500(edge: Edge, size_kb: int) -> None:
    token = edge.mint("alice", scope="users:read", roles=["a" * 200, "b" * 200])
    invalid_before = _invalid_stats(edge)
    big = [("x-big", "a" * (size_kb * 1024 - 100))]
    for reply in (
        edge.client.request(PING, headers=big),
        edge.client.request("/api/v1/users/alice", headers=big, token=token),
    ):
        assert reply.status in (200, 431), (size_kb, reply.status, reply.body)
    _assert_no_invalid_checks(edge, invalid_before)


def test_the_header_limits_are_the_configured_ones(edge: Edge) -> None:
    # Under the count and size limits by a margin: served; far over either: 431.
    assert edge.client.request(PING, headers=_padding(PARAMS.max_headers_count - 12)).status == 200
    assert edge.client.request(PING, headers=_padding(PARAMS.max_headers_count)).status == 431
    small = [("x-big", "a" * (PARAMS.max_request_headers_kb * 1024 - 2048))]
    large = [("x-big", "a" * (PARAMS.max_request_headers_kb * 1024))]
    assert edge.client.request(PING, headers=small).status == 200
    assert edge.client.request(PING, headers=large).status == 431


# --- Host ----------------------------------------------------------------------------------------


def _h1(edge: Edge, head: str) -> Reply:
    return h1_exchange(edge.client, head.encode())


@pytest.mark.parametrize(
    "hosts",
    [
        ["localhost", "evil.example"],
        ["localhost", "localhost"],
        ["evil.example", "localhost"],
        ["localhost,evil.example"],
    ],
    ids=["different", "same", "evil-first", "comma"],
)
def test_two_host_headers_are_400(
    edge: Edge, upstream: DemoUpstream | None, hosts: list[str]
) -> None:
    before = edge.upstream_mark()
    lines = "".join(f"Host: {host}\r\n" for host in hosts)

    reply = _h1(edge, f"GET {PING} HTTP/1.1\r\n{lines}\r\n")

    assert_denial(reply, 400, "invalid_request")
    edge.assert_upstream_untouched(before)
    assert upstream is None or upstream.served.snapshot() == []


def test_one_host_header_is_served(edge: Edge, upstream: DemoUpstream | None) -> None:
    reply = _h1(edge, f"GET {PING} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply.status == 200
    if upstream is not None:
        [served] = upstream.served.snapshot()
        assert served.header("host") == "localhost"


@pytest.mark.own_stack("reads the demo upstream's record and Envoy's access log")
def test_http2_host_field_never_overrides_the_authority(edge: Edge, upstream: DemoUpstream) -> None:
    reply = h2_request(edge.client, PING, headers=[("host", "evil.example")])
    assert reply.status == 200
    [served] = upstream.served.snapshot()
    assert served.header("host") == "localhost"  # the :authority nghttp sent
    entry = edge.access_log_entry(reply.header("x-request-id") or "")
    assert entry["authority"] == "localhost"
