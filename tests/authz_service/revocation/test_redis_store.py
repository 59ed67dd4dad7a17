"""The Redis adapter against a real redis-server: layout, TTLs, merging, and replicas
following the list (the 1 s contract), Redis stopped mid-run, Redis absent at start."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from authz_service.revocation import layout
from authz_service.revocation.cli import add_revoke_parser, run_revoke
from authz_service.revocation.settings import RevocationSettings
from authz_service.revocation.snapshot import RevokedSubject, jti_entry, subject_entry
from authz_service.revocation.store import RedisRevocationStore
from authz_service.revocation.sync import REVOKED, UNAVAILABLE, RevocationList
from sidecar_runtime.clock import SystemClock
from tests.support.grpc_clients import until
from tests.support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.redis

ISS = "https://idp.test"
DAY = 86_400


def _settings(url: str) -> RevocationSettings:
    return RevocationSettings(redis_url=url)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisRevocationStore]:
    opened = RedisRevocationStore.from_settings(_settings(redis_server.url))
    yield opened
    await opened.close()


async def test_a_write_sets_the_key_its_ttl_the_index_and_the_version(
    store: RedisRevocationStore, redis_server: RedisServer
) -> None:
    now = time.time()
    stored, version = await store.write(
        jti_entry(issuer=ISS, jti="t1", now=now, ttl_seconds=DAY), now=now
    )
    assert version == 1
    client = redis_server.client()
    try:
        key = layout.jti_key("revoked:", ISS, "t1")
        assert DAY - 5 <= client.ttl(key) <= DAY
        assert client.zscore("revoked:index", key) == pytest.approx(stored.expires_at)
        assert client.get("revoked:version") == b"1"
    finally:
        client.close()
    loaded = await store.load(now=now)
    assert loaded.version == 1
    assert loaded.entries == [stored]
    assert await store.version() == 1


async def test_a_second_subject_revocation_never_loosens_the_first(
    store: RedisRevocationStore,
) -> None:
    now = time.time()
    late = subject_entry(issuer=ISS, subject="alice", before=now, now=now, max_token_lifetime=DAY)
    early = subject_entry(
        issuer=ISS, subject="alice", before=now - 600, now=now, max_token_lifetime=DAY
    )
    await store.write(late, now=now)
    stored, version = await store.write(early, now=now)
    assert isinstance(stored, RevokedSubject)
    assert stored.revoked_before == late.revoked_before
    assert version == 2
    assert (await store.load(now=now)).entries == [stored]


async def test_long_identifiers_get_bounded_keys_and_unreadable_values_are_skipped(
    store: RedisRevocationStore, redis_server: RedisServer
) -> None:
    now = time.time()
    await store.write(jti_entry(issuer=ISS, jti="j" * 1000, now=now, ttl_seconds=60), now=now)
    client = redis_server.client()
    try:
        assert all(len(key) < 120 for key in client.keys("revoked:*"))
        client.set("revoked:jti:bogus", "not an entry")
        client.zadd("revoked:index", {"revoked:jti:bogus": now + 60})
    finally:
        client.close()
    loaded = await store.load(now=now)
    assert [e.identity for e in loaded.entries] == [(ISS, "j" * 1000)]
    assert loaded.skipped == 1


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RevocationList]]:
    stores = [RedisRevocationStore.from_settings(_settings(redis_server.url)) for _ in range(2)]
    lists = [RevocationList(s, _settings(redis_server.url), clock=SystemClock()) for s in stores]
    for replica in lists:
        await replica.start()
    yield lists
    for replica, opened in zip(lists, stores, strict=True):
        await replica.stop()
        await opened.close()


def _revoke_args(config: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_revoke_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["revoke", "--config", str(config), *extra])


async def test_every_replica_refuses_a_revoked_jti_within_one_second_of_the_cli(
    replicas: list[RevocationList],
    redis_server: RedisServer,
    write_config: Callable[..., Path],
) -> None:
    def refusals() -> list[str | None]:
        now = time.time()
        return [r.refusal_for(issuer=ISS, jti="leaked", sub="alice", iat=now) for r in replicas]

    assert all(replica.ready() for replica in replicas)
    assert refusals() == [None, None]
    args = _revoke_args(write_config(redis_server.url), "--issuer", ISS, "--jti", "leaked")
    assert await asyncio.to_thread(run_revoke, args) == 0
    await until(lambda: refusals() == [REVOKED, REVOKED], within=1.0)


async def test_redis_stopped_mid_run_keeps_the_last_list_and_says_so(
    own_redis: RedisServer,
) -> None:
    settings = _settings(own_redis.url)
    store = RedisRevocationStore.from_settings(settings)
    revocations = RevocationList(store, settings, clock=SystemClock())
    now = time.time()
    await store.write(jti_entry(issuer=ISS, jti="t1", now=now, ttl_seconds=DAY), now=now)
    await revocations.start()
    try:
        own_redis.stop()
        await until(lambda: revocations.status().stale, within=5.0)
        status = revocations.status()
        assert status.ready
        assert status.sync_failures >= 1
        refusal = revocations.refusal_for(issuer=ISS, jti="t1", sub="alice", iat=now)
        assert refusal == REVOKED
        # Back, empty (no persistence): the replica keeps what it knew, and counts a reset.
        own_redis.restart()
        await until(lambda: not revocations.status().stale, within=5.0)
        assert revocations.status().resets == 1
        refusal = revocations.refusal_for(issuer=ISS, jti="t1", sub="alice", iat=now)
        assert refusal == REVOKED
    finally:
        await revocations.stop()
        await store.close()


async def test_no_redis_at_start_means_not_ready_and_every_token_refused() -> None:
    settings = _settings(f"redis://127.0.0.1:{free_port()}/0")
    store = RedisRevocationStore.from_settings(settings)
    revocations = RevocationList(store, settings, clock=SystemClock())
    await revocations.start()
    try:
        assert not revocations.ready()
        refusal = revocations.refusal_for(issuer=ISS, jti=None, sub="alice", iat=time.time())
        assert refusal == UNAVAILABLE
        assert revocations.status().sync_failures >= 1
    finally:
        await revocations.stop()
        await store.close()
