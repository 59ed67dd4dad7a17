"""The pipelined Redis client and the standalone store on it, against real redis-servers:
pipelining, late replies, lost connections, NOSCRIPT, AUTH, SELECT, unix sockets; each on
asyncio's event loop and on uvloop's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ratelimit_service.circuit_breaker import CircuitBreaker
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.errors import StoreError
from ratelimit_service.guarded_store import GuardedStore
from ratelimit_service.limits.bucket import BucketSpec
from ratelimit_service.settings import StoreSettings
from ratelimit_service.store import BucketCall
from ratelimit_service.stores.redis_pipe import Endpoint, RedisPipe, endpoint_from_url, pack
from ratelimit_service.stores.redis_store import RedisStore, open_redis_store
from sidecar_runtime.clock import ManualClock
from tests.ratelimit_service.stores.pipelined import is_pipelined, is_redis_py, pipe_of
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.redis_servers import RedisServer

HOURLY = BucketSpec(interval_us=3_600_000_000 / 1000, capacity=1000)  # no refill in a test


def call(key: str, cost: int = 1) -> BucketCall:
    return BucketCall(f"rl:{key}", HOURLY, cost)


def standalone(url: str, **settings: Any) -> RedisStore:
    store = open_redis_store(StoreSettings(type="redis", url=url, **settings))
    assert isinstance(store, RedisStore)
    assert is_pipelined(store)
    return store


def clients(server: RedisServer) -> int:
    """Normal client connections the server has, not counting the one asking nor those of
    a Sentinel watching it (the session's, once a Sentinel test has run)."""
    inspect = server.client()
    try:
        listed = inspect.client_list(_type="normal")
        return sum(1 for c in listed if not c.get("name", "").startswith("sentinel-")) - 1
    finally:
        inspect.close()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def one_connection(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = standalone(redis_server.url, pipelined_connections=1)
    await store.ping()
    yield store
    await store.close()


# -- URLs ----------------------------------------------------------------------------------
def test_urls_the_pipelined_client_serves() -> None:
    assert endpoint_from_url("redis://10.0.0.5:6380/2") == Endpoint("10.0.0.5", 6380, db=2)
    assert endpoint_from_url("redis://h", db=4) == Endpoint("h", 6379, db=4)
    secure = endpoint_from_url("rediss://u:p%40ss@h:7000/0", username="x", password="y")
    assert secure == Endpoint("h", 7000, tls=True, username="u", password="p@ss")  # URL wins
    assert endpoint_from_url("unix:///run/redis.sock", password="pw") == Endpoint(
        path="/run/redis.sock", password="pw"
    )
    # Options this client does not implement stay with redis-py.
    assert endpoint_from_url("rediss://h:7000/0?ssl_cert_reqs=none") is None
    assert endpoint_from_url("redis://h:7000/0?socket_keepalive=true") is None


def test_the_label_never_shows_the_password() -> None:
    assert "pw" not in Endpoint("h", 1, password="pw").label


def test_urls_with_options_fall_back_to_redis_py() -> None:
    store = open_redis_store(
        StoreSettings(type="redis", url="redis://h:1/0?health_check_interval=2")
    )
    assert is_redis_py(store)


# -- pipelining ----------------------------------------------------------------------------
@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_concurrent_calls_share_one_connection_and_get_their_own_answers(
    one_connection: RedisStore, redis_server: RedisServer
) -> None:
    costs = [1 + i % 50 for i in range(300)]
    answers = await asyncio.gather(
        *(one_connection.acquire([call(f"p{i}", cost)]) for i, cost in enumerate(costs))
    )
    remaining = [a.outcomes[0].remaining for a in answers]
    assert remaining == [1000 - cost for cost in costs]  # each reply reached its caller
    assert pipe_of(one_connection).connections() == 1
    assert clients(redis_server) == 1
    assert redis_server.command_calls("evalsha") == 300


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_calls_spread_over_the_connections(redis_server: RedisServer) -> None:
    store = standalone(redis_server.url, pipelined_connections=3)
    try:
        await store.ping()  # opens them all up front
        assert pipe_of(store).connections() == 3
        assert clients(redis_server) == 3
        answers = await asyncio.gather(*(store.acquire([call("shared")]) for _ in range(30)))
        assert sorted(a.outcomes[0].remaining for a in answers) == list(range(970, 1000))
    finally:
        await store.close()


# -- deadlines -----------------------------------------------------------------------------
@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_late_reply_is_dropped_and_the_connection_kept(own_redis: RedisServer) -> None:
    store = standalone(own_redis.url, pipelined_connections=1)
    try:
        await store.ping()
        before = clients(own_redis)
        # The command is written, the reply comes after the deadline.
        with own_redis.paused(), pytest.raises(TimeoutError):
            await store.acquire_within([call("late")], timeout_s=0.05)
        answer = await store.acquire_within([call("next", 3)], timeout_s=5)
        assert answer.outcomes[0].remaining == 997  # not the late reply for "late"
        assert pipe_of(store).connections() == 1
        assert clients(own_redis) == before  # no reconnect
    finally:
        await store.close()


def _guard(store: RedisStore, *, probe_timeout_s: float) -> GuardedStore:
    """A guard with a 50 ms call timeout on a fake clock (the breaker never opens here)."""
    clock = ManualClock()
    return GuardedStore(
        store,
        breaker=CircuitBreaker(failure_threshold=5, open_seconds=1.0, clock=clock),
        decisions=DecisionLog(lines_per_second=100, clock=clock, hash_key=b"k"),
        failure_mode="fail_open",
        call_timeout_s=0.05,
        probe_timeout_s=probe_timeout_s,
        max_in_flight=16,
    )


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_the_guard_answers_a_late_reply_by_the_failure_mode_and_keeps_the_connection(
    own_redis: RedisServer,
) -> None:
    store = standalone(own_redis.url, pipelined_connections=1)
    guard = _guard(store, probe_timeout_s=5)
    try:
        await guard.probe()
        before = clients(own_redis)
        with own_redis.paused():
            assert await guard.acquire([call("late")]) is None  # the failure mode answers
        assert guard.stats.store_errors == 1
        outcomes = await guard.acquire([call("next")])
        assert outcomes is not None
        assert outcomes[0].remaining == 999
        assert clients(own_redis) == before
        assert guard.healthy
    finally:
        await store.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_probe_answered_in_time_but_read_late_keeps_the_breaker_closed(
    own_redis: RedisServer,
) -> None:
    store = standalone(own_redis.url, pipelined_connections=1)
    guard = _guard(store, probe_timeout_s=0.1)
    try:
        await guard.probe()  # connections open, script loaded
        probe = asyncio.ensure_future(guard.probe())
        for _ in range(5):
            await asyncio.sleep(0)  # the probe's PING is written
        # The loop stalls past the probe's timeout; the PONG arrives meanwhile.
        time.sleep(0.3)  # noqa: ASYNC251 - the stall under test
        await probe
        assert guard.healthy
        assert guard.stats.store_errors == 0
    finally:
        await store.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_connection_with_a_far_overdue_reply_is_closed(own_redis: RedisServer) -> None:
    pipe = RedisPipe(Endpoint(own_redis.host, own_redis.port), connections=1, stale_after_s=0.2)
    try:
        await pipe.open_all()
        with own_redis.paused():
            with pytest.raises(TimeoutError):
                await pipe.execute(pack("PING"), timeout_s=0.01)
            await asyncio.sleep(0.25)  # the first PING is now older than stale_after_s
            with pytest.raises(TimeoutError):
                await pipe.execute(pack("PING"), timeout_s=0.01)
            assert pipe.connections() == 0  # closed: a hung server cannot grow the FIFO
        assert await pipe.execute(pack("PING"), timeout_s=5) == b"PONG"  # re-opened
    finally:
        await pipe.close()


# -- lost connections ----------------------------------------------------------------------
@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_pending_calls_fail_when_the_server_dies_and_the_next_call_recovers(
    own_redis: RedisServer,
) -> None:
    store = standalone(own_redis.url, pipelined_connections=1)
    try:
        await store.ping()
        own_redis.pause()
        pending = [asyncio.ensure_future(store.acquire([call(f"k{i}")])) for i in range(5)]
        await asyncio.sleep(0.05)  # written, waiting for replies
        assert own_redis.process is not None
        own_redis.process.kill()  # SIGKILL: the socket closes with the calls unanswered
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        own_redis.restart()  # empty: the script must be loaded again (NOSCRIPT)
        answer = await store.acquire([call("after")])
        assert answer.committed
        assert own_redis.command_calls("script|load") == 1
    finally:
        await store.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_killed_connection_is_reopened(
    one_connection: RedisStore, redis_server: RedisServer
) -> None:
    inspect = redis_server.client()
    try:
        inspect.execute_command("CLIENT", "KILL", "TYPE", "normal")  # SKIPME yes: not itself
    finally:
        inspect.close()
    await eventually(lambda: pipe_of(one_connection).connections() == 0)
    assert (await one_connection.acquire([call("again")])).committed
    assert pipe_of(one_connection).connections() == 1


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path)
    url = server.url
    server.stop()
    store = standalone(url)
    try:
        with pytest.raises(StoreError, match="connect"):
            await store.ping()
        with pytest.raises(StoreError):
            await store.acquire_within([call("x")], timeout_s=1)
    finally:
        await store.close()


# -- the script ----------------------------------------------------------------------------
@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_noscript_reloads_once_for_concurrent_calls(
    one_connection: RedisStore, redis_server: RedisServer
) -> None:
    assert redis_server.command_calls("script|load") == 1  # by ping()
    inspect = redis_server.client()
    try:
        inspect.script_flush()
    finally:
        inspect.close()
    answers = await asyncio.gather(
        *(one_connection.acquire_within([call(f"n{i}")], timeout_s=5) for i in range(10))
    )
    assert all(a.committed for a in answers)
    assert redis_server.command_calls("script|load") == 2  # one reload, shared


# -- logging in ----------------------------------------------------------------------------
@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path, password="s3cret-pw")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_auth_with_the_password_from_the_environment(
    protected_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RL_REDIS_PASSWORD", "s3cret-pw")
    store = standalone(protected_redis.url, password_env="RL_REDIS_PASSWORD")
    try:
        await store.ping()
        assert (await store.acquire([call("authed")])).committed
    finally:
        await store.close()


async def _store_error(attempt: Callable[[], Awaitable[object]]) -> str:
    with pytest.raises(StoreError) as caught:
        await attempt()
    return str(caught.value)


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_wrong_password_is_a_clear_store_error(
    protected_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RL_REDIS_PASSWORD", "wrong-pw")
    store = standalone(protected_redis.url, password_env="RL_REDIS_PASSWORD")
    try:
        message = await _store_error(store.ping)
        assert "AUTH" in message
        assert "WRONGPASS" in message
        assert "wrong-pw" not in message
        assert "WRONGPASS" in await _store_error(lambda: store.acquire([call("x")]))
    finally:
        await store.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_no_password_for_a_protected_server_is_a_store_error(
    protected_redis: RedisServer,
) -> None:
    store = standalone(protected_redis.url)
    try:
        assert "NOAUTH" in await _store_error(store.ping)
    finally:
        await store.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_the_db_of_the_url_is_selected(redis_server: RedisServer) -> None:
    store = standalone(f"redis://127.0.0.1:{redis_server.port}/3")
    try:
        await store.acquire([call("in-db-3")])
    finally:
        await store.close()
    db0 = redis_server.client()
    db3 = redis.Redis(host=redis_server.host, port=redis_server.port, db=3)
    try:
        assert not db0.exists("rl:in-db-3")
        assert db3.exists("rl:in-db-3")
        db3.flushdb()
    finally:
        db0.close()
        db3.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer.start(tmp_path, args=("--unixsocket", str(socket_path)))
    store = standalone(f"unix://{socket_path}")
    try:
        assert (await store.acquire([call("over-unix")])).committed
    finally:
        await store.close()
        server.stop()
