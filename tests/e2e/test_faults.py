"""Faults through the whole stack: a sidecar or Redis stopped, then back (ARCHITECTURE.md
section 5, "Failure"), in both Envoy profiles (docs/edge.md, "Profiles: two calls or three").

These tests stop processes of the stack, so they have a stack of their own per profile
(module-scoped `stack`), and each one restarts what it stopped even when it fails, so the
next test starts from a healthy stack. Every wait is bounded; every request goes to
loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Edge,
    assert_hardened,
    assert_no_tokens_logged,
    identity_at_upstream,
    running_stack,
)
from tests.support.grpcurl import grpcurl
from tests.support.https import Reply
from tests.support.processes import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.own_stack("stops and restarts the stack's processes, reads its logs"),
]
STAGE0_PROFILES = ("local", "global")

RATELIMIT_SERVICE = "envoy.service.ratelimit.v3.RateLimitService"


@pytest.fixture
def faults(edge: Edge) -> Iterator[Edge]:
    """`edge`, and afterwards every stopped process started again and the stack healthy."""
    try:
        yield edge
    finally:
        for name in ("redis", "authz", "ratelimit"):
            if edge.stack.process(name).poll() is not None:
                edge.stack.restart(name)
        assert wait_until(lambda: edge.healthz() == 200, timeout=30)


def _sidecar_health(edge: Edge, sidecar: str, service: str = "") -> str:
    port = getattr(edge.ports, sidecar)
    out = grpcurl(
        f"127.0.0.1:{port}",
        "grpc.health.v1.Health/Check",
        pki=edge.stack.pki,
        data={"service": service},
    )
    assert out.returncode == 0, out.stderr
    status: str = json.loads(out.stdout)["status"]
    return status


def _assert_denied_not_served(reply: Reply) -> None:
    """Denied by the edge (fail closed): 403 or 503, a JSON denial, never the upstream."""
    assert reply.status in (403, 503), (reply.status, reply.body)
    body = reply.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] == reply.request_id
    assert_hardened(reply)


def test_authz_stopped_means_denied_never_allowed_then_recovers(faults: Edge) -> None:
    edge = faults
    token = edge.mint("alice", scope="users:read", roles=["admin"])
    assert identity_at_upstream(edge.client.request("/api/v1/users/alice", token=token))
    before = edge.upstream_requests()
    old_pid = edge.stack.process("authz").pid

    edge.stack.kill("authz")

    def probe() -> list[Reply]:
        return [
            edge.client.request("/api/v1/users/alice", token=token),
            edge.client.request("/api/v1/admin/stats", token=token),
            edge.client.request("/api/v1/public/ping"),  # public routes are authz's call too
            edge.client.request("/api/v1/users/alice"),
        ]

    replies = probe()
    # Envoy notices the dead sidecar through its gRPC health checks: /healthz follows.
    assert wait_until(lambda: edge.healthz() == 503, timeout=15)
    replies += probe()
    for reply in replies:
        _assert_denied_not_served(reply)
    assert edge.upstream_requests() == before

    edge.stack.restart("authz")
    assert edge.stack.process("authz").pid != old_pid
    assert wait_until(lambda: edge.healthz() == 200, timeout=30)
    reply = edge.client.request("/api/v1/users/alice", token=token)
    assert identity_at_upstream(reply)["x-auth-subject"] == "alice"
    assert edge.client.request("/api/v1/public/ping").status == 200


def test_redis_stopped_fails_open_reports_unhealthy_and_recovers(faults: Edge) -> None:
    edge = faults
    token = edge.mint("carol", scope="users:read")
    assert _sidecar_health(edge, "ratelimit", RATELIMIT_SERVICE) == "SERVING"

    edge.stack.kill("redis")

    # fail_open: still served. Profile global: no flood is cut (stage 0's bucket is in
    # Redis); profile local: stage 0 is Envoy's own bucket, which needs no Redis.
    assert identity_at_upstream(edge.client.request("/api/v1/users/carol", token=token))
    statuses = [r.status for r in edge.client.burst(60, "/api/v1/users/alice")]
    if edge.stage0 == "global":
        assert statuses == [401] * 60
    else:
        assert statuses[:39] == [401] * 39  # 40, less the request above
        assert 429 in statuses, statuses
    # The rate limiter says NOT_SERVING, so Envoy's /healthz goes unhealthy...
    assert wait_until(lambda: edge.healthz() == 503, timeout=15)
    assert _sidecar_health(edge, "ratelimit", RATELIMIT_SERVICE) == "NOT_SERVING"
    assert _sidecar_health(edge, "authz") == "SERVING"
    # ...while requests are still served.
    edge.client.new_source()
    reply = edge.client.request("/api/v1/users/carol", token=token)
    assert identity_at_upstream(reply)["x-auth-subject"] == "carol"
    assert_hardened(reply)

    # Redis back (same port, empty): everything recovers by itself, no sidecar restart.
    ratelimit_pid = edge.stack.process("ratelimit").pid
    edge.stack.restart("redis")
    assert wait_until(lambda: edge.healthz() == 200, timeout=30)
    assert _sidecar_health(edge, "ratelimit", RATELIMIT_SERVICE) == "SERVING"
    assert edge.stack.process("ratelimit").pid == ratelimit_pid
    # The limits in Redis are enforced again: per address (global) and per subject (both).
    edge.client.new_source()
    if edge.stage0 == "global":
        statuses = [r.status for r in edge.client.burst(60, "/api/v1/users/alice")]
        assert statuses[:40] == [401] * 40
        assert 429 in statuses, statuses
        edge.client.new_source()
    statuses = [r.status for r in edge.client.burst(30, "/api/v1/users/carol", token=token)]
    assert statuses[:20] == [200] * 20, statuses  # carol's burst (nothing kept while down)
    assert 429 in statuses, statuses


def test_redis_stopped_with_fail_closed_denies_with_429_and_recovers(
    tmp_path: Path, stage0: str
) -> None:
    # The other failure mode, on a stack of its own (`failure_mode` is a stack option).
    with running_stack(tmp_path, failure_mode="fail_closed", stage0=stage0) as edge:
        token = edge.mint("dave", scope="users:read")
        assert identity_at_upstream(edge.client.request("/api/v1/users/dave", token=token))
        before = edge.upstream_requests()

        edge.stack.kill("redis")

        reply = edge.client.request("/api/v1/users/dave", token=token)
        assert reply.status == 429, reply.body
        assert reply.json() == {"error": "rate_limited", "request_id": reply.request_id}
        assert_hardened(reply)
        assert edge.upstream_requests() == before
        assert wait_until(lambda: edge.healthz() == 503, timeout=15)
        # The public route: profile global, stage 0's call fails closed. Profile local, its
        # one call carries only its route, which no rule limits: nothing is left undecided
        # (Envoy's per-address bucket still applies).
        ping = edge.client.request("/api/v1/public/ping")
        assert ping.status == (429 if stage0 == "global" else 200), ping.body
        # A route with a limit of its own is refused in both.
        admin = edge.mint("root", roles=["admin"])
        assert edge.client.request("/api/v1/admin/stats", token=admin).status == 429

        edge.stack.restart("redis")
        assert wait_until(lambda: edge.healthz() == 200, timeout=30)
        reply = edge.client.request("/api/v1/users/dave", token=token)
        assert identity_at_upstream(reply)["x-auth-subject"] == "dave"
        assert_no_tokens_logged(edge)


def test_tokens_never_appear_in_any_log(edge: Edge) -> None:
    assert_no_tokens_logged(edge)
