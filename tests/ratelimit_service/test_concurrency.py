"""Exactness under concurrency: two service processes share one Redis, and hundreds of
concurrent calls for one key admit exactly the burst, plus what the refill allows in the
measured elapsed time and not a token more; on grpc.aio and on the threaded server (where
the calls run on several worker threads at once)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from sidecar_runtime.settings import Stack
from tests.ratelimit_service.service_process import ServiceProcess, start_service, write_settings
from tests.support.grpc_clients import channel
from tests.support.redis_servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.grpc, pytest.mark.slow]

RULES = """
domain: edge
descriptors:
  - key: hourly             # refills one token per hour: nothing during the test
    rate_limit: {unit: hour, requests_per_unit: 1, burst: 50}
  - key: per_second         # refills two tokens per second
    rate_limit: {unit: second, requests_per_unit: 2, burst: 100}
"""

CALLS = 400


async def burst(addresses: list[str], key: str) -> tuple[int, float]:
    """CALLS concurrent calls spread over the services; (admitted, elapsed seconds)."""
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value="one-shared-value")
    request = rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    channels = [channel(a) for a in addresses]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    try:
        for stub in stubs:  # connect first, so the burst measures decisions only
            await stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain="warm-up", descriptors=request.descriptors),
                timeout=10,
            )
        started = time.monotonic()
        replies = await asyncio.gather(
            *(stubs[i % len(stubs)].ShouldRateLimit(request, timeout=30) for i in range(CALLS))
        )
        elapsed = time.monotonic() - started
    finally:
        for c in channels:
            await c.close()
    for reply in replies:
        assert dict(reply.dynamic_metadata).get("decision") != "store_failure"
    ok = rls_pb2.RateLimitResponse.OK
    return sum(reply.overall_code == ok for reply in replies), elapsed


async def test_two_processes_admit_exactly_the_burst(
    tmp_path: Path, redis_server: RedisServer, stack: Stack
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = write_settings(
        tmp_path / "service.yaml",
        rules,
        server={"stack": stack},
        store={"type": "redis", "url": redis_server.url, "timeouts": {"call_ms": 5000}},
        failure_mode="fail_closed",  # a failure could only lower the count, never raise it
        reload={"watch": False},
    )
    services: list[ServiceProcess] = [
        start_service(["serve", "--settings", str(settings)], tmp_path / f"service-{i}.log")
        for i in range(2)
    ]
    try:
        for service in services:
            service.port = int(service.wait_for("serving")["port"])
        addresses = [s.address for s in services]

        admitted, _ = await burst(addresses, "hourly")
        assert admitted == 50

        admitted, elapsed = await burst(addresses, "per_second")
        refill = math.floor(2 * elapsed)  # whole tokens two per second can add meanwhile
        assert 100 <= admitted <= 100 + refill
    finally:
        for service in services:
            service.stop()
    assert redis_server.command_calls("script|load") == 2  # once per process, not per call
