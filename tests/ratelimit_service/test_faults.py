"""Redis trouble with a real redis-server: stopped, frozen, restarted under a running service
(on each in-process server stack: on `sync` the calls wait on worker threads for the loop).

Calls must keep answering within the per-call timeout with the configured failure mode,
gRPC health must turn NOT_SERVING, and everything must come back by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.crc import key_slot

from ratelimit_service.app import App
from ratelimit_service.limits.bucket_keys import bucket_key
from ratelimit_service.servicer import SERVICE_NAME
from ratelimit_service.settings import ServiceSettings
from sidecar_runtime.settings import Stack
from tests.support.grpc_clients import channel
from tests.support.redis_servers import RedisCluster, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.grpc]

CALL_TIMEOUT_MS = 50
# What "within the timeout" means end to end here: the timeout plus gRPC and a busy
# 2-core machine's scheduling, far below a hung call.
ANSWER_BOUND_S = 1.5  # against a Redis that never answers

Response = rls_pb2.RateLimitResponse
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def settings(
    tmp_path: Path, redis: RedisServer | RedisCluster, failure_mode: str, stack: Stack = "aio"
) -> ServiceSettings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "domain: edge\ndescriptors:\n  - key: remote_address\n"
        "    rate_limit: {unit: second, requests_per_unit: 20, burst: 40}\n"
    )
    return ServiceSettings.model_validate(
        {
            "server": {"listen": "127.0.0.1:0", "stack": stack},
            "rules": str(rules),
            "store": {
                "type": "redis",
                **(
                    {"cluster": {"addresses": redis.addresses}}
                    if isinstance(redis, RedisCluster)
                    else {"url": redis.url}
                ),
                "timeouts": {"call_ms": CALL_TIMEOUT_MS},
            },
            "failure_mode": failure_mode,
            "circuit_breaker": {
                "failure_threshold": 2,
                "open_seconds": 0.2,
                "probe_interval_seconds": 0.1,
            },
            "reload": {"watch": False},
        }
    )


class Client:
    def __init__(self, address: str) -> None:
        self._channel = channel(address)
        self._rls = rls_pb2_grpc.RateLimitServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def ask(self, address: str = "203.0.113.9") -> tuple[Any, float]:
        entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value=address)
        request = rls_pb2.RateLimitRequest(
            domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
        )
        started = time.monotonic()
        reply = await self._rls.ShouldRateLimit(request, timeout=5)
        return reply, time.monotonic() - started

    async def health(self) -> int:
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
        return int(reply.status)

    async def close(self) -> None:
        await self._channel.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(
    tmp_path: Path, own_redis: RedisServer, request: pytest.FixtureRequest, stack: Stack
) -> AsyncIterator[tuple[App, Client]]:
    app = App(settings(tmp_path, own_redis, request.param, stack))
    port = await app.start()
    client = Client(f"127.0.0.1:{port}")
    try:
        yield app, client
    finally:
        await client.close()
        await app.close()


@pytest.mark.parametrize("running", ["fail_open"], indirect=True)
async def test_redis_stopped_then_restarted(
    running: tuple[App, Client], own_redis: RedisServer
) -> None:
    app, client = running
    reply, _ = await client.ask()
    assert reply.statuses[0].limit_remaining == 39  # from Redis
    own_redis.stop()
    for _ in range(5):
        reply, took = await client.ask()
        assert took < ANSWER_BOUND_S
        assert reply.overall_code == Response.OK  # fail open
        assert dict(reply.dynamic_metadata)["decision"] == "store_failure"

    async def not_serving() -> bool:
        return await client.health() == NOT_SERVING

    await eventually(not_serving)
    assert app.service.guard.stats.store_errors >= 1
    own_redis.restart()  # same port, empty data, no script loaded

    async def serving() -> bool:
        return await client.health() == SERVING

    await eventually(serving)
    reply, _ = await client.ask()
    assert reply.overall_code == Response.OK
    assert reply.statuses[0].limit_remaining == 39  # from the new Redis, script reloaded
    assert "decision" not in dict(reply.dynamic_metadata)


@pytest.mark.parametrize("running", ["fail_closed"], indirect=True)
async def test_redis_frozen_is_answered_within_the_timeout(
    running: tuple[App, Client], own_redis: RedisServer
) -> None:
    app, client = running
    await client.ask()
    with own_redis.paused():  # connections stay open, nothing answers: only the timeout helps
        for _ in range(4):
            reply, took = await client.ask()
            assert took < ANSWER_BOUND_S
            assert reply.overall_code == Response.OVER_LIMIT  # fail closed
            assert {h.key: h.value for h in reply.response_headers_to_add} == {"retry-after": "1"}

        async def not_serving() -> bool:
            return await client.health() == NOT_SERVING

        await eventually(not_serving)

    async def serving() -> bool:
        return await client.health() == SERVING

    await eventually(serving)
    reply, _ = await client.ask()
    assert reply.overall_code == Response.OK
    assert app.service.healthy


def failure_mode_answer(answer: tuple[Any, float]) -> bool:
    return dict(answer[0].dynamic_metadata).get("decision") == "store_failure"


def master_of(cluster: RedisCluster, address: str) -> RedisServer:
    """The master of the bucket of `address` (the hash tag covers the descriptor only)."""
    key = bucket_key("", "edge", [("remote_address", address)], "any", hash_tag=True)
    return cluster.owner(key_slot(key.encode()))


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_dead_cluster_master_costs_only_its_own_buckets(tmp_path: Path) -> None:
    cluster = RedisCluster.start(tmp_path, masters=3, replicas=1, node_timeout_ms=1000)
    app = App(settings(tmp_path, cluster, "fail_open"))
    try:
        port = await app.start()
        client = Client(f"127.0.0.1:{port}")
        owner = {f"192.0.2.{i}": master_of(cluster, f"192.0.2.{i}") for i in range(1, 40)}
        victim_address, victim = next(iter(owner.items()))
        other = next(a for a, node in owner.items() if node is not victim)
        assert not failure_mode_answer(await client.ask(victim_address))
        cluster.kill(victim)
        started = time.monotonic()
        victim_failed = other_failed = 0
        healed = False
        while time.monotonic() - started < 12.0 and not healed:  # bounded
            victim_answer = await client.ask(victim_address)
            other_failed += failure_mode_answer(await client.ask(other))
            assert await client.health() == SERVING  # degraded, not down
            if failure_mode_answer(victim_answer):
                victim_failed += 1
            elif victim_failed:
                healed = True  # real answers again after the failover, no restart
            await asyncio.sleep(0.05)
        print(
            f"\ndead master through the service: {victim_failed} failure-mode answers for its "
            f"bucket, {other_failed} for another master's; healed after "
            f"{time.monotonic() - started:.2f} s"
        )
        assert victim_failed > 0
        assert other_failed == 0
        assert healed
        await client.close()
    finally:
        await app.close()
        cluster.stop()
