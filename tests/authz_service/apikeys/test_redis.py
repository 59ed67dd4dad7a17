"""Against a real redis-server: the store's contract, and revocation on two replicas
within one second, through pub/sub and through the cache's fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from authz_service.apikeys.errors import InvalidApiKey
from authz_service.apikeys.fetching import FetchingApiKeyVerifier
from authz_service.apikeys.format import parse_key
from authz_service.apikeys.hashing import PepperRing
from authz_service.apikeys.lifecycle import KeyLifecycle
from authz_service.apikeys.records import record_from_fields
from authz_service.apikeys.redis_store import RedisKeyStore, redis_client
from authz_service.apikeys.settings import ApiKeySettings, PepperSettings
from authz_service.apikeys.store import RETENTION_SECONDS, StoreUnavailable
from sidecar_runtime.clock import SystemClock
from tests.authz_service.apikeys.conftest import make_lifecycle
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

Replica = Callable[..., Awaitable[FetchingApiKeyVerifier]]


def _settings(url: str) -> ApiKeySettings:
    return ApiKeySettings(redis_url=url, peppers=[PepperSettings(id="p1", env="UNUSED")])


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisKeyStore]:
    settings = _settings(redis_server.url)
    store = RedisKeyStore(redis_client(settings), prefix="apikey:", channel="apikey:events")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def admin(store: RedisKeyStore, peppers: PepperRing) -> KeyLifecycle:
    return make_lifecycle(store, SystemClock(), peppers)


@pytest.fixture
async def replica(redis_server: RedisServer, peppers: PepperRing) -> AsyncIterator[Replica]:
    """Starts sidecar replicas (their own clients, caches and listeners) on one Redis."""
    started: list[FetchingApiKeyVerifier] = []

    async def start(*, listen: bool = True) -> FetchingApiKeyVerifier:
        verifier = FetchingApiKeyVerifier.from_settings(
            _settings(redis_server.url), peppers=peppers, clock=SystemClock()
        )
        started.append(verifier)
        if listen:
            await verifier.start()
            await _until(lambda: verifier.listener.connects > 0, "the listener subscribed")
        return verifier

    try:
        yield start
    finally:
        for verifier in started:
            await verifier.close()


async def _until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


async def _seconds_until_refused(verifier: FetchingApiKeyVerifier, key: str) -> float:
    """Verify `key` repeatedly until refused; how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < 5.0:
        try:
            await verifier.verify(key)
        except InvalidApiKey:
            return time.monotonic() - start
        await asyncio.sleep(0.005)
    raise AssertionError("the key was still accepted after 5 s")


async def test_the_record_is_stored_as_documented_and_never_with_the_secret(
    admin: KeyLifecycle, redis_server: RedisServer
) -> None:
    new = await admin.create(subject="svc", scopes=["users:read"], tenant="t1", plan="p")
    key_id = new.record.key_id
    client = redis_server.client()
    try:
        stored: dict[bytes, bytes] = client.hgetall(f"apikey:{key_id}")  # type: ignore[assignment]
        raw = {k.decode(): v.decode() for k, v in stored.items()}
        expire_at = client.expiretime(f"apikey:{key_id}")
        index = client.smembers("apikey:index")
        dump = b"".join(client.dump(key) or b"" for key in client.keys("*"))
    finally:
        client.close()
    assert set(raw) == {"v", "prefix", "pepper", "hash", "subject", "scopes", "roles"} | {
        "tenant",
        "plan",
        "created",
        "expires",
    }
    assert record_from_fields(key_id, raw) == new.record
    assert index == {key_id.encode()}
    assert abs(expire_at - (new.record.expires + RETENTION_SECONDS)) <= 1
    secret = parse_key(new.key, prefix="eg_live").secret
    assert secret.encode() not in dump


async def test_update_and_touch_never_recreate_a_vanished_record(
    admin: KeyLifecycle, store: RedisKeyStore, redis_server: RedisServer
) -> None:
    new = await admin.create(subject="svc")
    key_id = new.record.key_id
    await store.touch(key_id, 123.0)
    assert await store.get(key_id) == replace(new.record, last_used=123.0)
    client = redis_server.client()
    client.delete(f"apikey:{key_id}")
    client.close()
    await store.touch(key_id, 124.0)
    assert not await store.update(new.record)
    assert await store.get(key_id) is None
    assert await store.ids() == []  # the index forgets ids whose record is gone


async def test_a_malformed_record_counts_as_unknown(
    store: RedisKeyStore, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.hset("apikey:aaaaaaaaaaaaaaaa", mapping={"v": "1", "subject": "x"})
    client.close()
    assert await store.get("aaaaaaaaaaaaaaaa") is None


async def test_revocation_reaches_another_replica_through_pubsub(
    admin: KeyLifecycle, replica: Replica
) -> None:
    first, second = await replica(), await replica()
    new = await admin.create(subject="svc")
    await first.verify(new.key)
    await second.verify(new.key)
    hits = second.verifier.stats.cache_hits
    await second.verify(new.key)
    assert second.verifier.stats.cache_hits == hits + 1  # served from the cache
    await admin.revoke(new.record.key_id)
    took = await _seconds_until_refused(second, new.key)
    assert took < 1.0  # pub/sub: milliseconds in practice
    with pytest.raises(InvalidApiKey) as refused:
        await first.verify(new.key)
    assert refused.value.reason == "revoked"


async def test_revocation_without_the_channel_holds_within_one_second(
    admin: KeyLifecycle, replica: Replica
) -> None:
    deaf = await replica(listen=False)  # as if its subscription were down
    new = await admin.create(subject="svc")
    await deaf.verify(new.key)
    await admin.revoke(new.record.key_id)
    took = await _seconds_until_refused(deaf, new.key)
    assert took < 1.0  # the fallback re-reads entries after FALLBACK_SECONDS (0.45 s)


async def test_a_killed_subscription_is_resumed(
    replica: Replica, redis_server: RedisServer, admin: KeyLifecycle
) -> None:
    verifier = await replica()
    client = redis_server.client()
    client.client_kill_filter(_type="pubsub")
    client.close()
    await _until(lambda: verifier.listener.connects >= 2, "the listener subscribed again")
    new = await admin.create(subject="svc")
    await verifier.verify(new.key)
    await admin.revoke(new.record.key_id)
    assert await _seconds_until_refused(verifier, new.key) < 1.0


async def test_last_used_is_written_once_a_minute(
    admin: KeyLifecycle, replica: Replica, store: RedisKeyStore
) -> None:
    verifier = await replica()
    new = await admin.create(subject="svc")
    for _ in range(3):
        await verifier.verify(new.key)
    await _until(lambda: not verifier._touches, "the last_used write finished")
    record = await store.get(new.record.key_id)
    assert record is not None
    assert record.last_used is not None
    first_use = record.last_used
    await verifier.verify(new.key)
    await _until(lambda: not verifier._touches, "no write pending")
    assert (await store.get(new.record.key_id)).last_used == first_use  # type: ignore[union-attr]


async def test_redis_down_fails_closed(own_redis: RedisServer, peppers: PepperRing) -> None:
    settings = _settings(own_redis.url)
    store = RedisKeyStore(redis_client(settings), prefix="apikey:", channel="apikey:events")
    new = await make_lifecycle(store, SystemClock(), peppers).create(subject="svc")
    await store.close()
    verifier = FetchingApiKeyVerifier.from_settings(settings, peppers=peppers, clock=SystemClock())
    own_redis.stop()
    try:
        with pytest.raises(InvalidApiKey) as refused:
            await verifier.verify(new.key)
        assert refused.value.reason == "store_unavailable"
        with pytest.raises(StoreUnavailable):
            await verifier.store.get(new.record.key_id)
    finally:
        await verifier.close()
