"""The Redis bucket store of one server (standalone or Sentinel), and the factory that
picks the store and the client for the configured topology.

With redis_transports (the clients behind one small `Transport` interface), redis_pipe,
redis_blocking and redis_cluster, the only modules that talk to Redis. Every call runs
gcra.lua through redis_script's `ScriptRunner`, the one place that loads the script
(SCRIPT LOAD once per server, then EVALSHA by SHA) and reloads it after a NOSCRIPT.

Standalone (`url:`): the pipelined client (`redis_pipe`): a few long-lived connections
shared by all calls, one EVALSHA round trip per request, and a deadline per call that a
late reply does not turn into a discarded connection; the sync stack's worker threads
(`acquire_blocking`) use a connection of their own each (`redis_blocking`), through the
same runner. A URL with query options (`?ssl_ca_certs=...`) is served by redis-py
instead. TLS (rediss://) either way, with the settings' `store.tls` CA and client
certificate; on redis-py, what the URL's query says wins.

Sentinel: redis.asyncio (with hiredis), which finds the master. One request's buckets
are decided in one round trip, atomically, as on a standalone server.

Cluster: `ClusterRedisStore` (redis_cluster).

Timeouts: a call that timed out may still have run on the server; its tokens are then
spent although the request was answered by the failure mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ratelimit_service.settings import StoreSettings, host_port
from ratelimit_service.store import Acquired, BucketCall
from ratelimit_service.stores.redis_blocking import ThreadRedis
from ratelimit_service.stores.redis_cluster import ClusterRedisStore
from ratelimit_service.stores.redis_pipe import RedisPipe, endpoint_from_url
from ratelimit_service.stores.redis_script import (
    SCRIPT,
    SCRIPT_SHA,
    ScriptRunner,
    Transport,
    evalsha_args,
    parse_reply,
)
from ratelimit_service.stores.redis_transports import (
    SINGLE,
    ClusterTransport,
    PipeTransport,
    RedisPyTransport,
    ThreadTransport,
)

__all__ = [
    "SCRIPT",
    "SCRIPT_SHA",
    "ClusterRedisStore",
    "RedisStore",
    "StandaloneRedisStore",
    "open_redis_store",
    "redis_py_store",
]

FailureMode = Literal["fail_open", "fail_closed"]
_TAKE = "take"


class ServerTransport(Transport, Protocol):
    """A transport to one server, as `RedisStore` uses it."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...


class RedisStore:
    """Buckets in one Redis server (standalone or Sentinel's master), over one transport."""

    hash_tags = False
    remote = True

    def __init__(self, transport: ServerTransport, *, name: str = "redis") -> None:
        self.transport = transport
        self.name = name
        self._runner = ScriptRunner(transport)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        return await self.acquire_within(calls, timeout_s=None)

    async def acquire_within(
        self, calls: Sequence[BucketCall], *, timeout_s: float | None
    ) -> Acquired:
        """Like `acquire`; TimeoutError when no answer came within `timeout_s` of sending."""
        reply = await self._runner.run(
            evalsha_args(_TAKE, calls), server=SINGLE, timeout_s=timeout_s
        )
        committed, outcomes = parse_reply(reply, len(calls))
        return Acquired(committed, tuple(outcomes))

    async def ping(self) -> None:
        """Connected, the server answering, and the script loaded."""
        await self._ping(None)

    async def ping_within(self, *, timeout_s: float) -> None:
        """`ping`, each command bounded by `timeout_s` from when it was sent: a PONG read
        late by a busy loop still counts (on the pipelined client)."""
        await self._ping(timeout_s)

    async def _ping(self, timeout_s: float | None) -> None:
        await self.transport.connect()
        await self.transport.execute(("PING",), timeout_s=timeout_s)
        await self._runner.ensure_loaded(SINGLE, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.transport.close()


class StandaloneRedisStore(RedisStore):
    """A standalone server on the pipelined client, and (`acquire_blocking`, a
    `BlockingStore`: the sync stack's worker threads) on a connection per thread."""

    def __init__(self, transport: PipeTransport, threads: ThreadTransport) -> None:
        super().__init__(transport)
        self.threads = threads

    def acquire_blocking(self, calls: Sequence[BucketCall], *, timeout_s: float) -> Acquired:
        """`acquire_within` on the calling thread's own connection (see redis_blocking)."""
        reply = ScriptRunner.run_blocking(
            self.threads, evalsha_args(_TAKE, calls), timeout_s=timeout_s
        )
        committed, outcomes = parse_reply(reply, len(calls))
        return Acquired(committed, tuple(outcomes))

    async def close(self) -> None:
        await super().close()
        self.threads.close()


def open_redis_store(
    settings: StoreSettings, *, failure_mode: FailureMode = "fail_open"
) -> RedisStore | ClusterRedisStore:
    """The store for the configured topology; nothing connects until first use.
    `failure_mode` is what a Cluster store counts a failed node's calls as."""
    if settings.url is not None:
        endpoint = endpoint_from_url(
            settings.url, db=settings.db, username=settings.username, password=_password(settings)
        )
        if endpoint is not None:
            tls = settings.tls.context() if settings.tls is not None else None
            connect_timeout_s = settings.timeouts.connect_ms / 1000
            # Far beyond any call's deadline: only a hung server gets here.
            stale_after_s = max(1.0, 50 * settings.timeouts.call_ms / 1000)
            pipe = RedisPipe(
                endpoint,
                connections=settings.pipelined_connections,
                connect_timeout_s=connect_timeout_s,
                stale_after_s=stale_after_s,
                tls=tls,
            )
            # Opens connections only for worker threads that call it (the sync stack).
            threads = ThreadRedis(
                endpoint, connect_timeout_s=connect_timeout_s, stale_after_s=stale_after_s, tls=tls
            )
            return StandaloneRedisStore(PipeTransport(pipe), ThreadTransport(threads))
    return redis_py_store(settings, failure_mode=failure_mode)


def redis_py_store(
    settings: StoreSettings, *, failure_mode: FailureMode = "fail_open"
) -> RedisStore | ClusterRedisStore:
    """The store on redis-py's client for the topology (`open_redis_store` prefers the
    pipelined client for standalone URLs); nothing connects until first use."""
    common = _redis_py_options(settings)
    # Headroom over the calls the service lets through, for health probes and loads.
    pool_size = settings.max_connections + 4
    if settings.cluster is not None:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(*host_port(a)) for a in settings.cluster.addresses],
            max_connections=pool_size,
            **common,
        )
        return ClusterRedisStore(ClusterTransport(cluster), failure_mode=failure_mode)
    if settings.sentinel is not None:
        found = settings.sentinel
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
            [host_port(a) for a in found.addresses],
            sentinel_kwargs={
                "socket_timeout": common["socket_connect_timeout"],
                "password": os.environ.get(found.password_env) if found.password_env else None,
            },
            **common,
        )
        master = sentinel.master_for(found.master_name, max_connections=pool_size, db=settings.db)
        return RedisStore(RedisPyTransport(master, sentinel=sentinel), name="redis-sentinel")
    assert settings.url is not None  # checked by the settings model
    client = Redis.from_url(
        settings.url, max_connections=pool_size, db=settings.db, **common, **_tls(settings)
    )
    return RedisStore(RedisPyTransport(client))


def _redis_py_options(settings: StoreSettings) -> dict[str, Any]:
    return {
        # Every call is already bounded by the store's asyncio timeout (a cancelled call
        # drops its connection); a socket timeout on top costs ~40 us CPU per call.
        "socket_timeout": None,
        "socket_connect_timeout": settings.timeouts.connect_ms / 1000,
        # A retried take could charge twice; the service's failure mode handles errors.
        "retry": Retry(NoBackoff(), 0),
        "username": settings.username,
        "password": _password(settings),
    }


def _tls(settings: StoreSettings) -> dict[str, Any]:
    """redis-py's TLS options from the settings' `store.tls` (a rediss:// url only)."""
    tls = settings.tls
    if tls is None:
        return {}
    options = {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
    }
    return {name: str(value) for name, value in options.items() if value is not None}


def _password(settings: StoreSettings) -> str | None:
    """The store's password, from the environment variable the settings name (if any)."""
    return os.environ.get(settings.password_env) if settings.password_env else None
