"""Fixtures for the rate-limit suite: real redis-server processes, rule files, and the
server stacks an in-process service runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.pki import Pki, ensure_pki

# The shared pytest-asyncio loop hook and `stack` fixture (see stacks.py).
from tests.sidecar_runtime.stacks import (
    pytest_asyncio_loop_factories as pytest_asyncio_loop_factories,
)
from tests.sidecar_runtime.stacks import stack as stack
from tests.support.redis_servers import RedisCluster, RedisSentinel, RedisServer, RedisTls

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; use `redis_server` to get it emptied."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    """The session's redis-server, with no data, no scripts and fresh command stats."""
    shared_redis.reset()
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop, pause or restart it."""
    server = RedisServer.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_tls_redis(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RedisServer]:
    """A TLS-only redis-server (rediss://) with a certificate of the test CA (`pki`)."""
    server = RedisServer.start(tmp_path_factory.mktemp("tls-redis"), tls=RedisTls.from_pki(pki))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_redis(shared_tls_redis: RedisServer) -> RedisServer:
    """The session's TLS redis-server, emptied."""
    shared_tls_redis.reset()
    return shared_tls_redis


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed none of the test servers' certificates."""
    return Path(ensure_pki(tmp_path_factory.mktemp("other-pki")).ca)


@pytest.fixture(scope="session")
def shared_sentinel(
    tmp_path_factory: pytest.TempPathFactory, shared_redis: RedisServer
) -> Iterator[RedisSentinel]:
    """A Sentinel watching the session's redis-server as master `mymaster`."""
    sentinel = RedisSentinel.start(tmp_path_factory.mktemp("sentinel"), shared_redis)
    try:
        yield sentinel
    finally:
        sentinel.stop()


@pytest.fixture
def redis_sentinel(shared_sentinel: RedisSentinel, redis_server: RedisServer) -> RedisSentinel:
    """The Sentinel, with its master (the session's redis-server) emptied."""
    return shared_sentinel


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster.start(tmp_path_factory.mktemp("cluster"), masters=3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(shared_cluster: RedisCluster) -> RedisCluster:
    """The session's 3-master Redis Cluster, emptied."""
    shared_cluster.reset()
    return shared_cluster


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
