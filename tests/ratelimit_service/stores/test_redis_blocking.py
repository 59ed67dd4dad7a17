"""The blocking client of the `sync` stack's worker threads (one connection per thread),
and the standalone store's `acquire_blocking` on it, against real redis-servers:
deadlines, late replies, restarts, NOSCRIPT, AUTH, SELECT, unix sockets and TLS."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.pki import Pki
from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.settings import RedisTlsSettings, StoreSettings
from ratelimit_service.store import BlockingStore
from ratelimit_service.stores.redis_blocking import ThreadRedis
from ratelimit_service.stores.redis_pipe import Endpoint, RedisPipe, endpoint_from_url, pack
from ratelimit_service.stores.redis_store import RedisStore, open_redis_store
from tests.ratelimit_service.stores.test_redis_pipe import call, clients, standalone
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis


def _endpoint(url: str) -> Endpoint:
    endpoint = endpoint_from_url(url)
    assert endpoint is not None
    return endpoint


@pytest.fixture
def threads_of(request: pytest.FixtureRequest) -> Iterator[Callable[..., ThreadRedis]]:
    made: list[ThreadRedis] = []

    def make(url: str, **kw: Any) -> ThreadRedis:
        client = ThreadRedis(_endpoint(url), **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _on_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        results[index] = work(index)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    return results


def test_each_thread_gets_its_own_connection(
    redis_server: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(redis_server.url)
    before = clients(redis_server)
    replies = _on_threads(3, lambda i: client.execute(pack("ECHO", f"t{i}"), timeout_s=5))
    assert replies == [b"t0", b"t1", b"t2"]
    assert client.connections() == 3
    assert clients(redis_server) == before + 3
    assert client.execute(pack("ECHO", "again"), timeout_s=5) == b"again"
    assert client.connections() == 4  # this thread's own, kept for its next calls
    assert client.execute(pack("PING"), timeout_s=5) == b"PONG"
    assert client.connections() == 4


def test_a_late_reply_is_dropped_and_the_connection_kept(
    own_redis: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(own_redis.url)
    client.execute(pack("PING"), timeout_s=5)
    before = clients(own_redis)
    started = time.monotonic()
    with own_redis.paused(), pytest.raises(TimeoutError):
        client.execute(pack("ECHO", "late"), timeout_s=0.05)
    assert time.monotonic() - started < 2.0  # the 50 ms deadline, not the pause
    assert client.execute(pack("ECHO", "next"), timeout_s=5) == b"next"  # not "late"
    assert clients(own_redis) == before  # no reconnect
    assert client.connections() == 1


def test_a_connection_unanswered_for_too_long_is_closed(
    own_redis: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(own_redis.url, stale_after_s=0.2)
    client.execute(pack("PING"), timeout_s=5)
    with own_redis.paused():
        started = time.monotonic()
        for _ in range(20):  # 50 ms each, unanswered: past 0.2 s the connection goes
            with pytest.raises(TimeoutError):
                client.execute(pack("PING"), timeout_s=0.05)
            if client.connections() == 0:
                break
        assert client.connections() == 0
        assert time.monotonic() - started > 0.2  # not before
    assert client.execute(pack("ECHO", "fresh"), timeout_s=5) == b"fresh"


def test_an_idle_connection_the_server_closed_is_replaced_before_a_call(
    own_redis: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(own_redis.url)
    client.execute(pack("PING"), timeout_s=5)
    own_redis.restart()  # the thread's connection dies while it is idle
    # Not lost: the call goes out on a new connection.
    assert client.execute(pack("ECHO", "after"), timeout_s=5) == b"after"


def test_a_stopped_server_is_a_store_error_within_the_deadline(
    own_redis: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(own_redis.url)
    client.execute(pack("PING"), timeout_s=5)
    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(StoreError):
        client.execute(pack("PING"), timeout_s=0.05)
    with pytest.raises(StoreError):  # and a connect refused, again
        client.execute(pack("PING"), timeout_s=0.05)
    assert time.monotonic() - started < 3.0


def test_error_replies_are_store_reply_errors(
    redis_server: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(redis_server.url)
    with pytest.raises(StoreReplyError) as caught:
        client.execute(pack("EVALSHA", "0" * 40, 0), timeout_s=5)
    assert caught.value.code == "NOSCRIPT"
    assert client.execute(pack("PING"), timeout_s=5) == b"PONG"  # the connection is fine


def test_closed_means_closed(
    redis_server: RedisServer, threads_of: Callable[..., ThreadRedis]
) -> None:
    client = threads_of(redis_server.url)
    client.execute(pack("PING"), timeout_s=5)
    client.close()
    assert client.connections() == 0
    with pytest.raises(StoreError):
        client.execute(pack("PING"), timeout_s=5)


# -- the store's blocking calls --------------------------------------------------------------
async def test_the_store_decides_on_a_worker_thread_as_on_the_loop(
    redis_server: RedisServer,
) -> None:
    store = standalone(redis_server.url)
    try:
        await store.ping()
        on_loop = [(await store.acquire([call("loop", 400)])).outcomes[0] for _ in range(3)]
        on_thread = _on_threads(
            1, lambda _: [store.acquire_blocking([call("thread", 400)], timeout_s=5) for _ in "abc"]
        )[0]
        seen = [(a.outcomes[0].allowed, a.outcomes[0].remaining) for a in on_thread]
        assert seen == [(o.allowed, o.remaining) for o in on_loop]  # resets: by Redis's TIME
        assert [a.committed for a in on_thread] == [True, True, False]  # 400 x 3 > 1000
    finally:
        await store.close()


async def test_noscript_on_a_worker_thread_reloads_and_retries(
    redis_server: RedisServer,
) -> None:
    store = standalone(redis_server.url)
    try:
        flush = redis_server.client()
        try:
            flush.script_flush()
        finally:
            flush.close()
        answer = store.acquire_blocking([call("noscript")], timeout_s=5)
        assert answer.committed
        assert redis_server.command_calls("script|load") == 1
        assert store.acquire_blocking([call("noscript")], timeout_s=5).outcomes[0].remaining == 998
        assert redis_server.command_calls("script|load") == 1
    finally:
        await store.close()


async def test_auth_select_unix_and_tls_on_worker_threads(
    tmp_path: Path, tls_redis: RedisServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    protected = RedisServer.start(tmp_path / "auth", password="s3cret-pw")
    socket_path = tmp_path / "redis.sock"
    unix = RedisServer.start(tmp_path / "unix", args=("--unixsocket", str(socket_path)))
    monkeypatch.setenv("RL_REDIS_PASSWORD", "s3cret-pw")
    tls = RedisTlsSettings(ca_file=pki.ca)
    stores: list[RedisStore] = [
        standalone(f"redis://127.0.0.1:{protected.port}/3", password_env="RL_REDIS_PASSWORD"),
        standalone(f"unix://{socket_path}"),
        standalone(tls_redis.url, tls=tls),
    ]
    try:
        for store in stores:
            assert store.acquire_blocking([call("anywhere")], timeout_s=5).committed
        db3 = redis.Redis(port=protected.port, password="s3cret-pw", db=3)
        try:
            assert db3.exists("rl:anywhere")
        finally:
            db3.close()
        wrong = standalone(f"redis://127.0.0.1:{protected.port}/0")
        with pytest.raises(StoreError, match="NOAUTH"):
            wrong.acquire_blocking([call("x")], timeout_s=5)
        await wrong.close()
    finally:
        for store in stores:
            await store.close()
        protected.stop()
        unix.stop()


async def test_a_wrong_ca_on_a_worker_thread_is_a_clear_store_error(
    tls_redis: RedisServer, other_ca: Path
) -> None:
    store = standalone(tls_redis.url, tls=RedisTlsSettings(ca_file=other_ca))
    try:
        with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED") as failed:
            store.acquire_blocking([call("wrong-ca")], timeout_s=5)
        assert f"127.0.0.1:{tls_redis.port}" in str(failed.value)
        assert tls_redis.command_calls("evalsha") == 0
    finally:
        await store.close()


@pytest.mark.parametrize("client", [ThreadRedis, RedisPipe])
def test_a_tls_context_for_a_plain_endpoint_is_refused(client: Any) -> None:
    with pytest.raises(ValueError, match="not rediss://"):
        client(Endpoint(), tls=ssl.create_default_context())


async def test_only_the_pipelined_store_is_called_from_worker_threads() -> None:
    # A redis-py store lives on the event loop: the sync stack hands its calls to the loop.
    pipelined = open_redis_store(StoreSettings(type="redis", url="redis://127.0.0.1:1/0"))
    redis_py = open_redis_store(
        StoreSettings(type="redis", url="redis://h:1/0?health_check_interval=2")
    )
    cluster = open_redis_store(StoreSettings(type="redis", cluster={"addresses": ["127.0.0.1:1"]}))
    assert isinstance(pipelined, BlockingStore)
    assert not isinstance(redis_py, BlockingStore)
    assert not isinstance(cluster, BlockingStore)
    for store in (pipelined, redis_py, cluster):
        await store.close()
