"""Rate limits through the whole stack (ARCHITECTURE.md sections 4 and 5b), in both
Envoy profiles (docs/edge.md, "Profiles: two calls or three").

Demo limits (config/ratelimit/rules/edge.yaml): per client address 20/s, burst 40, before
authentication (profile local: in Envoy, per instance; profile global: in the rate-limit
sidecar); after ext_authz, in one call, per subject 10/s, burst 20, per authenticated
address 20/s, burst 40 (local only), and per route (admin stats: 5/s, burst 10, all
clients together). These tests drain buckets on purpose, so they have a stack of their own
per profile (module-scoped `stack`), and the `edge` fixture gives every test full buckets
(see conftest's docstring). Every flood is a fixed, small number of requests on loopback.

Counting bounds: a bucket that starts full admits at least `burst` requests, and during a
flood that lasts `elapsed` seconds at most `burst + rate * elapsed` (+1 for rounding) --
unless a failure mode admitted some (a timeout on a loaded machine), which `Flood` detects.
Against an external stack it cannot (no admin API, no sidecar log), so only the lower
bound is checked there; and each test's buckets are full because the `edge` fixture waits
until they have refilled (conftest's docstring).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import (
    Edge,
    assert_denial,
    assert_hardened,
    assert_no_tokens_logged,
    identity_at_upstream,
)
from tests.support.https import Reply
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e
STAGE0_PROFILES = ("local", "global")

CLIENT_RATE, CLIENT_BURST = 20, 40
SUBJECT_RATE, SUBJECT_BURST = 10, 20
ROUTE_RATE, ROUTE_BURST = 5, 10


@dataclass
class Flood:
    replies: list[Reply]
    elapsed: float
    limiter_failed: bool  # some answer came (or may have come) from a failure mode

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.replies]

    def assert_admitted(self, status: int, *, burst: int, rate: int) -> None:
        """At least `burst` admitted (the bucket started full), and at most what the bucket
        could hold over the flood, unless a failure mode admitted some (see
        Edge.limiter_failures)."""
        admitted = self.statuses.count(status)
        assert admitted >= burst, (self.statuses, self.elapsed)
        if not self.limiter_failed:
            high = burst + math.ceil(rate * self.elapsed) + 1
            assert admitted <= high, (self.statuses, self.elapsed)


def _flood(edge: Edge, send: Callable[[], list[Reply]]) -> Flood:
    failures = edge.limiter_failures() if edge.own_stack else None
    started = time.monotonic()
    replies = send()
    elapsed = time.monotonic() - started
    # An external stack's failure modes cannot be seen: as if one had admitted some.
    failed = failures is None or edge.limiter_failures() != failures
    return Flood(replies, elapsed, failed)


def _assert_429(reply: Reply) -> None:
    """A 429 of the edge: the JSON body, the security headers, retry-after, x-ratelimit-*."""
    assert_denial(reply, 429, "rate_limited")
    retry_after = reply.header("retry-after")
    assert retry_after is not None
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    assert reply.all("x-ratelimit-remaining")
    assert reply.all("x-ratelimit-reset")
    assert reply.header("www-authenticate") is None  # no authz answer on a 429


def _assert_rate_limited(reply: Reply, rule: str, limit: int) -> None:
    """A 429 with the rate-limit sidecar's `rule` among Envoy's x-ratelimit-limit (draft
    03) policies. (The value's leading number is the limit of the descriptor with the
    fewest tokens reported left; which rule denied is in the access log, `_denied_by`.)"""
    _assert_429(reply)
    assert "0" in reply.all("x-ratelimit-remaining")
    policy = f'{limit};w=1;name="{rule}"'
    limits = [v.split(", ") for v in reply.all("x-ratelimit-limit")]
    assert any(policy in v[1:] for v in limits), limits


def _denied_by(edge: Edge, reply: Reply) -> str:
    """The rule that denied `reply`, from Envoy's access log (the sidecar's metadata)."""
    rule: str = edge.access_log_entry(reply.request_id or "")["ratelimit_rule"]
    return rule


def _assert_address_limited(edge: Edge, reply: Reply) -> None:
    """A 429 from stage 0: Envoy's own bucket (local) or the sidecar's (global)."""
    if edge.stage0 == "global":
        _assert_rate_limited(reply, "per-client-address", CLIENT_RATE)
        return
    # Not the sidecar's: local_ratelimit's 429 never called it.
    _assert_429(reply)
    # local_ratelimit's headers: the bucket's size, and the tokens left when the answer
    # went out (refilling continuously, so not always 0); retry-after is one fill interval.
    assert reply.all("x-ratelimit-limit") == [str(CLIENT_BURST)]
    [remaining] = reply.all("x-ratelimit-remaining")
    assert 0 <= int(remaining) < CLIENT_BURST
    assert reply.header("retry-after") == "1"


def _audit_request_ids(edge: Edge) -> set[str]:
    text = (edge.stack.log_dir / "authz.log").read_text(errors="replace")
    return set(re.findall(r'"request_id":"([^"]+)"', text))


@pytest.mark.own_stack("reads Envoy's access log, the authz audit log and Envoy's counters")
def test_unauthenticated_flood_gets_429_before_any_authz_work(edge: Edge) -> None:
    before = edge.upstream_requests()
    flood = _flood(edge, lambda: edge.client.burst(60, "/api/v1/users/alice"))

    assert set(flood.statuses) == {401, 429}, flood.statuses
    assert flood.statuses[:CLIENT_BURST] == [401] * CLIENT_BURST
    flood.assert_admitted(401, burst=CLIENT_BURST, rate=CLIENT_RATE)
    limited = [r for r in flood.replies if r.status == 429]
    for reply in limited:
        _assert_address_limited(edge, reply)
    assert edge.upstream_requests() == before
    entry = edge.access_log_entry(limited[-1].request_id or "")
    assert "RL" in entry["response_flags"]
    if edge.stage0 == "local":
        assert entry["response_code_details"] == "local_rate_limited"
    else:
        assert entry["ratelimit_rule"] == "per-client-address"

    # Stage 0 comes before ext_authz: no audit line for any 429, one for a later request.
    marker = edge.client.request("/api/v1/users/marker")
    if marker.status == 429:  # still empty: a token is at most 1/20 s away
        time.sleep(0.1)
        marker = edge.client.request("/api/v1/users/marker")
    assert marker.status == 401
    assert wait_until(lambda: marker.request_id in _audit_request_ids(edge), timeout=5)
    assert not {r.request_id for r in limited} & _audit_request_ids(edge)


def test_the_bucket_refills_after_retry_after(edge: Edge) -> None:
    replies = edge.client.burst(55, "/api/v1/users/alice")
    limited = [r for r in replies if r.status == 429]
    assert limited, [r.status for r in replies]
    time.sleep(int(limited[-1].header("retry-after") or "1"))
    assert edge.client.request("/api/v1/users/alice").status == 401


def test_public_route_is_rate_limited_too(edge: Edge) -> None:
    # The demo upstream answers slowly, so several connections at once.
    flood = _flood(edge, lambda: edge.client.burst(70, "/api/v1/public/ping", workers=7))

    assert set(flood.statuses) == {200, 429}, flood.statuses
    flood.assert_admitted(200, burst=CLIENT_BURST, rate=CLIENT_RATE)
    for reply in flood.replies:
        if reply.status == 429:
            _assert_address_limited(edge, reply)
        else:
            assert identity_at_upstream(reply) == {}
            assert_hardened(reply)


def test_spoofed_forwarding_headers_do_not_change_the_rate_limit_key(edge: Edge) -> None:
    def spoofed(i: int) -> list[tuple[str, str]]:
        address = f"203.0.{i // 250}.{i % 250 + 1}"
        return [
            ("x-forwarded-for", address),
            ("x-real-ip", address),
            ("forwarded", f"for={address}"),
            ("x-client-ip", address),
        ]

    flood = _flood(edge, lambda: edge.client.burst(60, "/api/v1/users/alice", headers=spoofed))

    # Had any of those headers been the key, every request would have had a full bucket.
    assert set(flood.statuses) == {401, 429}, flood.statuses
    flood.assert_admitted(401, burst=CLIENT_BURST, rate=CLIENT_RATE)
    for reply in flood.replies:
        if reply.status == 429:
            _assert_address_limited(edge, reply)
    if edge.own_stack:  # Envoy's access log is a file of the stack
        entry = edge.access_log_entry(flood.replies[-1].request_id or "")
        assert entry["client_address"] == edge.client.source


def test_per_subject_limit_stops_one_subject_and_not_another(edge: Edge) -> None:
    busy, quiet = f"busy-{uuid.uuid4().hex[:6]}", f"quiet-{uuid.uuid4().hex[:6]}"
    busy_token = edge.mint(busy, scope="users:read")
    quiet_token = edge.mint(quiet, scope="users:read")

    # 32 requests: past the subject's burst of 20, within the address's burst of 40.
    flood = _flood(
        edge,
        lambda: edge.client.burst(32, f"/api/v1/users/{busy}", token=busy_token, workers=8),
    )

    assert set(flood.statuses) == {200, 429}, flood.statuses
    flood.assert_admitted(200, burst=SUBJECT_BURST, rate=SUBJECT_RATE)
    for reply in flood.replies:
        if reply.status == 429:
            _assert_rate_limited(reply, "per-subject", SUBJECT_RATE)
        else:
            assert identity_at_upstream(reply)["x-auth-subject"] == busy
    last = [r for r in flood.replies if r.status == 429][-1]
    if edge.own_stack:  # Envoy's access log is a file of the stack
        assert _denied_by(edge, last) == "per-subject"
    # Another subject from the same address is still served: the limit is per subject.
    other = edge.client.request(f"/api/v1/users/{quiet}", token=quiet_token)
    assert identity_at_upstream(other)["x-auth-subject"] == quiet
    limits = other.all("x-ratelimit-limit")
    assert any('name="per-subject"' in v for v in limits), limits


def test_the_address_limit_is_per_address(edge: Edge) -> None:
    edge.need_fresh_sources()
    replies = edge.client.burst(50, "/api/v1/users/alice")
    assert 429 in [r.status for r in replies]
    edge.client.new_source()
    assert edge.client.request("/api/v1/users/alice").status == 401


def test_per_route_limit_is_shared_by_every_client_of_the_route(edge: Edge) -> None:
    # Two admins, 8 requests each: under the per-subject burst (20), over the route's (10).
    tokens = [
        edge.mint(f"admin-{n}-{uuid.uuid4().hex[:6]}", scope="users:read", roles=["admin"])
        for n in (1, 2)
    ]

    def alternate(i: int) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {tokens[i % 2]}")]

    flood = _flood(
        edge, lambda: edge.client.burst(16, "/api/v1/admin/stats", headers=alternate, workers=4)
    )

    assert set(flood.statuses) == {200, 429}, flood.statuses
    # Together within the route's bound, though each alone was under its own burst.
    flood.assert_admitted(200, burst=ROUTE_BURST, rate=ROUTE_RATE)
    for reply in flood.replies:
        if reply.status == 429:
            _assert_rate_limited(reply, "admin-stats-route", ROUTE_RATE)
    last = [r for r in flood.replies if r.status == 429][-1]
    if edge.own_stack:  # Envoy's access log is a file of the stack
        assert _denied_by(edge, last) == "admin-stats-route"
    # Another route of the same subjects is not limited by it.
    users = edge.client.request(f"/api/v1/users/{uuid.uuid4().hex[:6]}", headers=alternate(0))
    assert users.status == 200, users.body


def test_authenticated_requests_carry_every_limit_in_their_one_answer(edge: Edge) -> None:
    subject = f"carol-{uuid.uuid4().hex[:6]}"
    reply = edge.client.request(
        f"/api/v1/users/{subject}", token=edge.mint(subject, scope="users:read")
    )
    assert identity_at_upstream(reply)["x-auth-subject"] == subject
    policies = ", ".join(reply.all("x-ratelimit-limit"))
    assert 'name="per-subject"' in policies
    if edge.stage0 == "local":
        assert 'name="per-authenticated-address"' in policies
        assert str(CLIENT_BURST) in reply.all("x-ratelimit-limit")  # Envoy's own bucket
    else:
        assert 'name="per-client-address"' in policies  # stage 0's call
        assert 'name="per-authenticated-address"' not in policies


@pytest.mark.own_stack("scans the log files of every process of the stack")
def test_tokens_never_appear_in_any_log(edge: Edge) -> None:
    assert_no_tokens_logged(edge)
