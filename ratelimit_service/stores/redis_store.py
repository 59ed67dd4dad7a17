"""The Redis bucket stores: standalone, Sentinel or Cluster.

With `redis_pipe` (the pipelined client) and `redis_blocking` (a connection per worker
thread, for the `sync` stack), the only modules that talk to Redis. Every call
runs `gcra.lua`, loaded once per server with SCRIPT LOAD and then called by SHA (EVALSHA);
a NOSCRIPT answer (a restarted or flushed server) reloads it once and retries.

Standalone (`url:`): `StandaloneRedisStore`, on the pipelined client (`redis_pipe`): a few
long-lived connections shared by all calls, one EVALSHA round trip per request, and a
deadline per call that a late reply does not turn into a discarded connection. A URL with
query options (`?ssl_ca_certs=...`) falls back to redis-py (`RedisStore`). TLS (rediss://)
either way, with the settings' `store.tls` CA and client certificate; on redis-py, what
the URL's query says wins.

Sentinel and Cluster: `RedisStore`, on redis.asyncio (with hiredis), which does the
discovery. Sentinel: one request's buckets are decided in one round trip, atomically.

Cluster: buckets are grouped by the node that owns their slot; each node runs the script
once for its group, all nodes in parallel. (Redis refuses declared keys of several slots in
one call, so there the keys travel in ARGV; the script's `allow-cross-slot-keys` flag lets
it touch any slot of its node, and a key the node does not own is an error, not a miss.)
Each node is all-or-nothing for its own keys; when one node denies and another has already
charged its buckets, the charge is refunded with a second call. Error bound: between the
charge and the refund (one round trip) those buckets hold up to `cost` tokens too few, so
concurrent requests on them may be denied that would have been admitted; the limiter
never admits more than the limit. If the refund itself fails, those tokens stay spent
until the bucket refills.

Timeouts: a call that timed out may still have run on the server; its tokens are then
spent although the request was answered by the failure mode.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.limits.bucket import Outcome
from ratelimit_service.settings import StoreSettings, host_port
from ratelimit_service.store import Acquired, BucketCall, BucketStore, refund_outcome
from ratelimit_service.stores.redis_blocking import ThreadRedis
from ratelimit_service.stores.redis_pipe import RedisPipe, endpoint_from_url, pack
from ratelimit_service.stores.redis_script import (
    SCRIPT,
    SCRIPT_SHA,
    check_loaded_sha,
    evalsha_args,
    parse_reply,
)

__all__ = ["SCRIPT", "SCRIPT_SHA", "RedisStore", "StandaloneRedisStore", "open_redis_store"]

_STANDALONE = "standalone"
_LOAD = pack("SCRIPT", "LOAD", SCRIPT)
_PING = pack("PING")


def open_redis_store(settings: StoreSettings) -> BucketStore:
    """The store for the configured topology; nothing connects until first use."""
    if settings.url is not None:
        endpoint = endpoint_from_url(
            settings.url,
            db=settings.db,
            username=settings.username,
            password=_password(settings),
        )
        if endpoint is not None:
            call_timeout_s = settings.timeouts.call_ms / 1000
            tls = settings.tls.context() if settings.tls is not None else None
            connect_timeout_s = settings.timeouts.connect_ms / 1000
            # Far beyond any call's deadline: only a hung server gets here.
            stale_after_s = max(1.0, 50 * call_timeout_s)
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
            return StandaloneRedisStore(pipe, threads)
    return RedisStore.from_settings(settings)


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


class StandaloneRedisStore:
    """Buckets in one standalone Redis, over the pipelined client on the event loop, and
    (`acquire_blocking`, the sync stack's worker threads) over a connection per thread."""

    name = "redis"
    hash_tags = False
    remote = True

    def __init__(self, pipe: RedisPipe, threads: ThreadRedis) -> None:
        self.pipe = pipe
        self.threads = threads
        self._loaded = False
        self._generation = 0  # bumped by every SCRIPT LOAD
        self._load_lock = asyncio.Lock()

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        return await self.acquire_within(calls, timeout_s=None)

    async def acquire_within(
        self, calls: Sequence[BucketCall], *, timeout_s: float | None
    ) -> Acquired:
        """Like `acquire`; TimeoutError when no answer came within `timeout_s` of sending.
        After a NOSCRIPT (once per Redis restart) the reload and the retry share one more
        `timeout_s`."""
        if not self._loaded:
            await self._load(self._generation, timeout_s)
        packed = self._packed(calls)
        generation = self._generation
        try:
            reply = await self.pipe.execute(packed, timeout_s=timeout_s)
        except StoreReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
            reply = await self._reload_and_retry(packed, generation, timeout_s)
        committed, outcomes = parse_reply(reply, len(calls))
        return Acquired(committed, tuple(outcomes))

    def acquire_blocking(self, calls: Sequence[BucketCall], *, timeout_s: float) -> Acquired:
        """`acquire_within` on the calling thread's own connection (see redis_blocking).
        After a NOSCRIPT, the SCRIPT LOAD and the retry share the rest of `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        packed = self._packed(calls)
        try:
            reply = self.threads.execute(packed, timeout_s=timeout_s)
        except StoreReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
            check_loaded_sha(self.threads.execute(_LOAD, timeout_s=_left(deadline)))
            reply = self.threads.execute(packed, timeout_s=_left(deadline))
        committed, outcomes = parse_reply(reply, len(calls))
        return Acquired(committed, tuple(outcomes))

    @staticmethod
    def _packed(calls: Sequence[BucketCall]) -> bytes:
        """The EVALSHA command's bytes."""
        packed: bytes = pack(*evalsha_args("take", calls, keys_in_argv=False))
        return packed

    async def _reload_and_retry(
        self, packed: bytes, generation: int, timeout_s: float | None
    ) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._load(generation, timeout_s)
        left = None if timeout_s is None else max(timeout_s - (loop.time() - started), 1e-3)
        return await self.pipe.execute(packed, timeout_s=left)

    async def _load(self, seen_generation: int, timeout_s: float | None) -> None:
        """SCRIPT LOAD once: concurrent callers that hit NOSCRIPT together share one."""
        async with self._load_lock:
            if self._generation != seen_generation:
                return  # someone else (re)loaded it meanwhile
            check_loaded_sha(await self.pipe.execute(_LOAD, timeout_s=timeout_s))
            self._loaded = True
            self._generation += 1

    async def ping(self) -> None:
        """Every connection open (a burst on a cold pool must not wait for connects), the
        server answering, and the script loaded."""
        await self._ping(None)

    async def ping_within(self, *, timeout_s: float) -> None:
        """`ping`, each command bounded by `timeout_s` from when it was sent (connects by
        the pipe's own connect timeout): a PONG read late by a busy loop still counts."""
        await self._ping(timeout_s)

    async def _ping(self, timeout_s: float | None) -> None:
        await self.pipe.open_all()
        await self.pipe.execute(_PING, timeout_s=timeout_s)
        if not self._loaded:
            await self._load(self._generation, timeout_s)

    async def close(self) -> None:
        await self.pipe.close()
        self.threads.close()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1e-3)


class RedisStore:
    """Buckets in Redis through redis-py: Sentinel, Cluster, and URLs with query options."""

    def __init__(
        self, client: Redis | RedisCluster, *, name: str = "redis", sentinel: Sentinel | None = None
    ) -> None:
        self._client = client
        self._sentinel = sentinel
        self._cluster = client if isinstance(client, RedisCluster) else None
        self.name = name
        self.hash_tags = self._cluster is not None
        self.remote = True
        self._loaded: set[str] = set()
        self._generation: dict[str, int] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> RedisStore:
        """redis-py's client for the configured topology (`open_redis_store` prefers the
        pipelined client for standalone URLs); nothing connects until first use."""
        password = _password(settings)
        # Headroom over the calls the service lets through, for health probes and loads.
        pool_size = settings.max_connections + 4
        common: dict[str, Any] = {
            # Every call is already bounded by the service's asyncio timeout (a cancelled
            # call drops its connection); a socket timeout on top costs ~40 us CPU per call.
            "socket_timeout": None,
            "socket_connect_timeout": settings.timeouts.connect_ms / 1000,
            # A retried take could charge twice; the service's failure mode handles errors.
            "retry": Retry(NoBackoff(), 0),
            "username": settings.username,
            "password": password,
        }
        if settings.cluster is not None:
            nodes = [ClusterNode(*host_port(a)) for a in settings.cluster.addresses]
            client: Redis | RedisCluster = RedisCluster(
                startup_nodes=nodes, max_connections=pool_size, **common
            )
            return cls(client, name="redis-cluster")
        if settings.sentinel is not None:
            sentinel_password = (
                os.environ.get(settings.sentinel.password_env)
                if settings.sentinel.password_env
                else None
            )
            sentinel = Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
                [host_port(a) for a in settings.sentinel.addresses],
                sentinel_kwargs={
                    "socket_timeout": common["socket_connect_timeout"],
                    "password": sentinel_password,
                },
                **common,
            )
            master = sentinel.master_for(
                settings.sentinel.master_name,
                max_connections=pool_size,
                db=settings.db,
            )
            return cls(master, name="redis-sentinel", sentinel=sentinel)
        assert settings.url is not None  # checked by the settings model
        client = Redis.from_url(
            settings.url, max_connections=pool_size, db=settings.db, **common, **_tls(settings)
        )
        return cls(client)

    async def acquire(self, calls: Sequence[BucketCall]) -> Acquired:
        try:
            if self._cluster is None:
                committed, outcomes = await self._take(None, calls)
                return Acquired(committed, tuple(outcomes))
            return await self._acquire_cluster(self._cluster, calls)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def _acquire_cluster(
        self, cluster: RedisCluster, calls: Sequence[BucketCall]
    ) -> Acquired:
        await cluster.initialize()
        groups: dict[str, list[int]] = {}
        nodes: dict[str, ClusterNode] = {}
        for index, call in enumerate(calls):
            node = cluster.get_node_from_key(call.key)
            if node is None:
                raise StoreError(f"no node serves the slot of {call.key!r}")
            nodes[node.name] = node
            groups.setdefault(node.name, []).append(index)
        names = list(groups)
        replies = await asyncio.gather(
            *(self._take(nodes[n], [calls[i] for i in groups[n]]) for n in names),
            return_exceptions=True,
        )
        outcomes: list[Outcome | None] = [None] * len(calls)
        failed: BaseException | None = None
        charged: list[str] = []
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, BaseException):
                failed = failed or reply
                continue
            node_committed, node_outcomes = reply
            if node_committed:
                charged.append(name)
            for index, outcome in zip(groups[name], node_outcomes, strict=True):
                outcomes[index] = outcome
        committed = failed is None and len(charged) == len(names)
        if not committed and charged:
            await self._refund(nodes, groups, charged, calls, outcomes)
        if failed is not None:
            raise failed
        return Acquired(committed, tuple(o for o in outcomes if o is not None))

    async def _refund(
        self,
        nodes: dict[str, ClusterNode],
        groups: dict[str, list[int]],
        charged: list[str],
        calls: Sequence[BucketCall],
        outcomes: list[Outcome | None],
    ) -> None:
        jobs = []
        for name in charged:
            taken = [
                i for i in groups[name] if calls[i].cost > 0 and (o := outcomes[i]) and o.allowed
            ]
            if taken:
                jobs.append(self._run(nodes[name], [calls[i] for i in taken], "refund"))
            for i in taken:
                outcome = outcomes[i]
                if outcome is not None:
                    outcomes[i] = refund_outcome(outcome, calls[i])
        # Best effort: a failed refund leaves tokens spent (the documented bound).
        await asyncio.gather(*jobs, return_exceptions=True)

    async def _take(
        self, node: ClusterNode | None, calls: Sequence[BucketCall]
    ) -> tuple[bool, list[Outcome]]:
        reply = await self._run(node, calls, "take")
        return parse_reply(reply, len(calls))

    async def _run(self, node: ClusterNode | None, calls: Sequence[BucketCall], mode: str) -> Any:
        name = node.name if node is not None else _STANDALONE
        await self._ensure_loaded(node)
        generation = self._generation.get(name, 0)
        command = evalsha_args(mode, calls, keys_in_argv=node is not None)
        try:
            return await self._command(node, *command)
        except NoScriptError:
            await self._load(node, name, generation)
            return await self._command(node, *command)

    async def _load(self, node: ClusterNode | None, name: str, seen_generation: int) -> None:
        """SCRIPT LOAD once per server: concurrent callers that hit NOSCRIPT together
        (after a restart) share one load."""
        lock = self._load_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if self._generation.get(name, 0) != seen_generation:
                return  # someone else (re)loaded it meanwhile
            check_loaded_sha(await self._command(node, "SCRIPT", "LOAD", SCRIPT))
            self._loaded.add(name)
            self._generation[name] = self._generation.get(name, 0) + 1

    async def _command(self, node: ClusterNode | None, *args: Any) -> Any:
        if self._cluster is not None and node is not None:
            return await self._cluster.execute_command(*args, target_nodes=node)
        return await self._client.execute_command(*args)

    async def ping(self) -> None:
        """Reachable, and ready: the script is loaded on every primary (so the first real
        call after a start or a Redis restart does not pay for SCRIPT LOAD)."""
        try:
            if self._cluster is None:
                await self._client.execute_command("PING")
                await self._ensure_loaded(None)
                return
            await self._cluster.initialize()
            primaries = self._cluster.get_primaries()
            await self._cluster.execute_command("PING", target_nodes=primaries)
            for node in primaries:
                await self._ensure_loaded(node)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def _ensure_loaded(self, node: ClusterNode | None) -> None:
        name = node.name if node is not None else _STANDALONE
        if name not in self._loaded:
            await self._load(node, name, self._generation.get(name, 0))

    async def close(self) -> None:
        await self._client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
