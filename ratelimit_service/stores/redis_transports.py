"""The Redis clients behind the one `Transport` interface of redis_script.

- `PipeTransport`: the pipelined client (redis_pipe), a standalone URL's hot path.
- `ThreadTransport`: the sync stack's per-thread blocking client (redis_blocking).
- `RedisPyTransport`: redis.asyncio for Sentinel and for URLs with query options.
- `ClusterTransport`: redis.asyncio's RedisCluster. A command carries its keys (EVALSHA
  with KEYS), so the client routes it by slot, follows MOVED (patching its slot map) and
  ASK (ASKING first), and retries TRYAGAIN; a connection error makes it re-read the slot
  map before its next command. Calls are never retried on a connection error: a retried
  take could charge twice.

redis-py's errors are translated here, where they enter: an error reply becomes
StoreReplyError with the Redis code first (redis-py strips NOSCRIPT from the text), any
other failure StoreError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.stores.redis_blocking import ThreadRedis
from ratelimit_service.stores.redis_pipe import RedisPipe, pack
from ratelimit_service.stores.redis_script import Arg

SINGLE = "server"  # the one server name of a non-cluster transport


class PipeTransport:
    """One standalone server over the pipelined client."""

    def __init__(self, pipe: RedisPipe) -> None:
        self.pipe = pipe

    async def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Any:
        return await self.pipe.execute(pack(*args), timeout_s=timeout_s)

    async def execute_on(self, server: str, args: Sequence[Arg], *, timeout_s: float) -> Any:
        return await self.pipe.execute(pack(*args), timeout_s=timeout_s)

    def server_of(self, key: str) -> str:
        return SINGLE

    async def connect(self) -> None:
        """Open every connection (a burst on a cold pool must not wait for connects)."""
        await self.pipe.open_all()

    async def close(self) -> None:
        await self.pipe.close()


class ThreadTransport:
    """The same server over the calling worker thread's own blocking connection."""

    def __init__(self, threads: ThreadRedis) -> None:
        self.threads = threads

    def execute(self, args: Sequence[Arg], *, timeout_s: float) -> Any:
        return self.threads.execute(pack(*args), timeout_s=timeout_s)

    def close(self) -> None:
        self.threads.close()


def translated(exc: BaseException) -> StoreError:
    """A redis-py failure as this service's error."""
    if isinstance(exc, NoScriptError):
        return StoreReplyError(f"NOSCRIPT {exc}")
    if isinstance(exc, ResponseError):
        return StoreReplyError(str(exc))
    return StoreError(f"{type(exc).__name__}: {exc}")


_REDIS_PY_ERRORS = (RedisError, RedisClusterException, OSError)


class RedisPyTransport:
    """One server (a URL with options, or Sentinel's current master) over redis-py."""

    def __init__(self, client: Redis, *, sentinel: Sentinel | None = None) -> None:
        self.client = client
        self._sentinel = sentinel

    async def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py
        except _REDIS_PY_ERRORS as exc:
            raise translated(exc) from exc

    async def execute_on(self, server: str, args: Sequence[Arg], *, timeout_s: float) -> Any:
        return await self.execute(args, timeout_s=timeout_s)

    def server_of(self, key: str) -> str:
        return SINGLE

    async def connect(self) -> None:
        """redis-py connects on demand."""

    async def close(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class ClusterTransport:
    """A Redis Cluster over redis-py's cluster client; servers are primaries' host:port.

    The slot map is (re)read by one shared task, shielded from the callers' deadlines:
    redis-py closes every node's connections when a map read is cancelled, which would
    fail the calls in flight on healthy nodes. It is re-read after a call fails other
    than by an error reply (a dead or unreachable node: a failover may follow).
    """

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._stale = True  # no map read yet
        self._reading: asyncio.Task[Any] | None = None

    async def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                return await self.client.execute_command(*args)
        except _REDIS_PY_ERRORS as exc:
            raise self._failed(exc) from exc

    async def execute_on(self, server: str, args: Sequence[Arg], *, timeout_s: float) -> Any:
        node = self.client.get_node(node_name=server)
        if node is None:
            raise StoreError(f"{server} is no longer a cluster node")
        try:
            async with asyncio.timeout(timeout_s):
                return await self.client.execute_command(*args, target_nodes=node)
        except _REDIS_PY_ERRORS as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> StoreError:
        error = translated(exc)
        if not isinstance(error, StoreReplyError):
            self._stale = True
        return error

    async def refresh(self, *, timeout_s: float) -> None:
        """Have a slot map: read it (one shared read) when there is none yet or the last
        call failed; StoreError when it cannot be read, TimeoutError when not in time."""
        if not self._stale:
            return
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self._read_map())
            # Callers that timed out never see its error: retrieve it here (no warning).
            reading.add_done_callback(_retrieved)
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(reading)

    async def _read_map(self) -> None:
        self._stale = False  # a failure from now on asks for another read
        try:
            await self.client.initialize()
        except _REDIS_PY_ERRORS as exc:
            self._stale = True
            raise translated(exc) from exc
        except BaseException:
            self._stale = True
            raise

    def server_of(self, key: str) -> str:
        node = self.client.get_node_from_key(key)
        if node is None:
            raise StoreError(f"no node serves the slot of {key!r}")
        return str(node.name)

    def slot_of(self, key: str) -> int:
        return int(self.client.keyslot(key))

    def primaries(self) -> list[str]:
        return [str(node.name) for node in self.client.get_primaries()]

    async def close(self) -> None:
        await self.client.aclose()
