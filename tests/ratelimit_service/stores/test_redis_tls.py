"""rediss:// against a TLS-only redis-server, with a CA and certificates made at test time:
the pipelined store and redis-py both verify Redis's certificate against the configured
CA; a wrong CA (or none: the system's) is a clear StoreError, and under the running
service it is health NOT_SERVING, the failure mode and a log line that says why, not a
crash."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki
from ratelimit_service.app import App
from ratelimit_service.errors import StoreError
from ratelimit_service.limits.bucket import BucketSpec
from ratelimit_service.servicer import SERVICE_NAME
from ratelimit_service.settings import ServiceSettings, StoreSettings
from ratelimit_service.store import BucketCall, BucketStore
from ratelimit_service.stores.redis_store import open_redis_store
from tests.ratelimit_service.stores.pipelined import is_pipelined, is_redis_py
from tests.support.grpc_clients import channel
from tests.support.redis_servers import RedisServer, RedisTls

pytestmark = pytest.mark.redis

HOURLY = BucketSpec(interval_us=3_600_000_000 / 1000, capacity=1000)  # no refill in a test
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
Response = rls_pb2.RateLimitResponse


def store_for(url: str, **store: Any) -> BucketStore:
    return open_redis_store(StoreSettings(type="redis", url=url, **store))


async def acquire_once(store: BucketStore, key: str) -> bool:
    try:
        await store.ping()
        return (await store.acquire([BucketCall(f"rl:{key}", HOURLY, 1)])).committed
    finally:
        await store.close()


async def store_error(store: BucketStore) -> str:
    try:
        with pytest.raises(StoreError) as failed:
            await store.ping()
        return str(failed.value)
    finally:
        await store.close()


def test_the_server_speaks_tls_only(tls_redis: RedisServer) -> None:
    assert tls_redis.url.startswith("rediss://")
    assert tls_redis.client().ping()  # the inspection client, over TLS


async def test_the_pipelined_store_over_tls_with_the_ca_of_the_settings(
    tls_redis: RedisServer, pki: Pki
) -> None:
    store = store_for(tls_redis.url, tls={"ca_file": pki.ca})
    assert is_pipelined(store)
    assert await acquire_once(store, "over-tls")
    assert tls_redis.command_calls("evalsha") == 1
    assert tls_redis.client().exists("rl:over-tls")


async def test_a_wrong_ca_is_a_clear_store_error(tls_redis: RedisServer, other_ca: Path) -> None:
    message = await store_error(store_for(tls_redis.url, tls={"ca_file": other_ca}))
    assert VERIFY_FAILED in message
    assert f"127.0.0.1:{tls_redis.port}" in message
    assert tls_redis.command_calls("evalsha") == 0


async def test_without_a_ca_the_system_s_do_not_trust_a_private_one(
    tls_redis: RedisServer,
) -> None:
    assert VERIFY_FAILED in await store_error(store_for(tls_redis.url))


async def test_plaintext_to_a_tls_port_fails(tls_redis: RedisServer) -> None:
    plain = tls_redis.url.replace("rediss://", "redis://")
    store = store_for(plain, timeouts={"connect_ms": 1000})
    try:
        with pytest.raises((StoreError, TimeoutError)):
            await store.acquire([BucketCall("rl:plain", HOURLY, 1)])
    finally:
        await store.close()


async def test_the_host_name_is_checked(tmp_path: Path, pki: Pki) -> None:
    # The certificate names localhost, 127.0.0.1 and ::1; the same server listening on
    # 127.0.0.2 too (all of 127/8 is loopback) is reached under a name it does not carry.
    args = ("--bind", "127.0.0.1", "127.0.0.2")
    server = RedisServer.start(tmp_path, args=args, tls=RedisTls.from_pki(pki))
    try:
        other_name = server.url.replace("127.0.0.1", "127.0.0.2")
        message = await store_error(store_for(other_name, tls={"ca_file": pki.ca}))
        assert VERIFY_FAILED in message
        assert "127.0.0.2" in message
        assert await acquire_once(store_for(server.url, tls={"ca_file": pki.ca}), "named")
    finally:
        server.stop()


@pytest.fixture
def client_cert_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path, tls=RedisTls.from_pki(pki, auth_clients="yes"))
    try:
        yield server
    finally:
        server.stop()


async def test_a_client_certificate_when_redis_asks_for_one(
    client_cert_redis: RedisServer, pki: Pki
) -> None:
    with_cert = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    assert await acquire_once(store_for(client_cert_redis.url, tls=with_cert), "mutual")
    # TLS 1.3: Redis refuses the missing certificate after the handshake, so the failure
    # shows on the first command (a lost connection), not on connect.
    without = store_for(client_cert_redis.url, tls={"ca_file": pki.ca})
    assert "CERTIFICATE_REQUIRED" in await store_error(without)


async def test_redis_py_over_tls_with_the_ca_in_the_url_or_the_settings(
    tls_redis: RedisServer, pki: Pki, other_ca: Path
) -> None:
    in_url = store_for(f"{tls_redis.url}?ssl_ca_certs={pki.ca}")
    assert is_redis_py(in_url)
    assert await acquire_once(in_url, "ca-in-url")
    options = f"{tls_redis.url}?health_check_interval=30"
    in_settings = store_for(options, tls={"ca_file": pki.ca})
    assert is_redis_py(in_settings)
    assert await acquire_once(in_settings, "ca-in-settings")
    wrong = store_for(options, tls={"ca_file": other_ca})
    assert VERIFY_FAILED in await store_error(wrong)


# -- under the running service -------------------------------------------------------------
def service_settings(tmp_path: Path, url: str, ca: Path) -> ServiceSettings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "domain: edge\ndescriptors:\n  - key: remote_address\n"
        "    rate_limit: {unit: hour, requests_per_unit: 10}\n"
    )
    return ServiceSettings.model_validate(
        {
            "server": {"listen": "127.0.0.1:0"},
            "rules": str(rules),
            "store": {"type": "redis", "url": url, "tls": {"ca_file": str(ca)}},
            "reload": {"watch": False},
        }
    )


@pytest.fixture
async def service(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tls_redis: RedisServer,
    pki: Pki,
    other_ca: Path,
) -> AsyncIterator[str]:
    """The service in-process, trusting the CA that signed Redis's certificate ("right")
    or another ("wrong")."""
    ca = pki.ca if request.param == "right" else other_ca
    app = App(service_settings(tmp_path, tls_redis.url, ca))
    port = await app.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await app.close()


async def ask(address: str) -> tuple[int, Any]:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="203.0.113.5")
    request = rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    async with channel(address) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
        reply = await rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request, timeout=5)
    return int(health.status), reply


@pytest.mark.grpc
@pytest.mark.parametrize("service", ["right"], indirect=True)
async def test_the_service_serves_from_tls_redis(service: str) -> None:
    health, reply = await ask(service)
    assert health == health_pb2.HealthCheckResponse.SERVING
    assert reply.overall_code == Response.OK
    assert reply.statuses[0].limit_remaining == 9  # from Redis
    assert "decision" not in dict(reply.dynamic_metadata)


@pytest.mark.grpc
@pytest.mark.parametrize("service", ["wrong"], indirect=True)
async def test_the_service_with_a_wrong_ca_is_not_serving_and_says_why(
    service: str, caplog: pytest.LogCaptureFixture
) -> None:
    health, reply = await ask(service)
    assert health == health_pb2.HealthCheckResponse.NOT_SERVING
    assert reply.overall_code == Response.OK  # answered by the failure mode (fail_open)
    assert dict(reply.dynamic_metadata)["decision"] == "store_failure"
    # The start-up probe failed, and its log line says why.
    records = caplog.get_records("setup") + caplog.records
    errors = [str(getattr(r, "fields", {}).get("error", "")) for r in records]
    assert any(VERIFY_FAILED in error for error in errors), errors
