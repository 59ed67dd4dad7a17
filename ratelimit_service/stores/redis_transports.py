"""The Redis clients behind the one `Transport` interface of redis_script.

- `PipeTransport`: the pipelined client (redis_pipe), a standalone URL's hot path.
- `ThreadTransport`: the sync stack's per-thread blocking client (redis_blocking).
- `RedisPyTransport`: redis.asyncio for Sentinel and for URLs with query options.
- `ClusterTransport`: redis.asyncio's RedisCluster for the slot map and the node
  connection pools, with the MOVED / ASK / TRYAGAIN handling of its own (see the class).

A call is never retried after a connection error or a timeout: a retried take could
charge twice (a redirection is safe: the node that redirects did not run the script).

redis-py's errors are translated here, where they enter: an error reply becomes
StoreReplyError with the Redis code first (redis-py strips NOSCRIPT from the text), any
other failure StoreError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.stores.redis_blocking import ThreadRedis
from ratelimit_service.stores.redis_pipe import RedisPipe, pack
from ratelimit_service.stores.redis_script import Arg

SINGLE = "server"  # the one server name of a non-cluster transport


class PipeTransport:
    """One standalone server over the pipelined client."""

    def __init__(self, pipe: RedisPipe) -> None:
        self.pipe = pipe

    def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Awaitable[Any]:
        # A plain function handing back the pipe's coroutine: one frame fewer per call.
        return self.pipe.execute(pack(*args), timeout_s=timeout_s)

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


class SlotMovingError(StoreError):
    """A call met its slot in the middle of a migration (TRYAGAIN: its keys are split
    between the two nodes, or too many redirections): no fault of the node's."""


_MAX_REDIRECTIONS = 5
_TRYAGAIN_FIRST_WAIT_S = 0.001  # doubled after each TRYAGAIN, within the call's deadline


class ClusterTransport:
    """A Redis Cluster through redis-py's slot map and node connection pools; servers are
    primaries' host:port.

    Routing is done here, on redis-py's map, not by `RedisCluster.execute_command`:
    redis-py 8.1 (asyncio/cluster.py, `_execute_command`) follows ASK by sending ASKING
    and then the command as two pool checkouts, which on a node with several free
    connections land on different connections; the target then answers MOVED back to
    the source, and the call loops until "TTL exhausted" for as long as the slot is
    migrating. Here: MOVED patches the map (`NodesManager.move_slot`, as redis-py does)
    and goes to the new owner; ASK sends ASKING and the call together on one
    connection of the target; TRYAGAIN (a multi-key call whose keys are half migrated)
    is retried after 1, 2, 4 ... ms within the call's deadline, and if the deadline comes
    first it is a `SlotMovingError`, not a node failure.

    The slot map is read before the first call (the callers wait), and read again in the
    background after a call or a probe fails other than by an error reply (a dead or
    unreachable node: a failover may follow, which no MOVED would tell), not on a timer:
    redis-py marks every connection for a reconnect on each read. A read is one shared
    task, never cancelled by a caller's deadline: redis-py closes every node's
    connections when a map read is cancelled.
    """

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._has_map = False
        self._stale = True
        self._reading: asyncio.Task[Any] | None = None

    async def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Any:
        """Send an EVALSHA to the owner of its keys' slot (they share one)."""
        key = args[3]  # EVALSHA sha numkeys key ...
        moving: list[str] = []
        try:
            async with asyncio.timeout(timeout_s):
                return await self._routed(str(key), args, moving)
        except TimeoutError:
            if moving:
                raise SlotMovingError(f"{moving[-1]} until the deadline") from None
            self._stale = True
            raise
        except _REDIS_PY_ERRORS as exc:
            raise self._failed(exc) from exc

    async def _routed(self, key: str, args: Sequence[Arg], moving: list[str]) -> Any:
        node = self._node_of(key)
        asking = False
        wait_s = _TRYAGAIN_FIRST_WAIT_S
        for _ in range(_MAX_REDIRECTIONS):
            try:
                if asking:
                    return await _on_one_connection(node, [_ASKING, pack(*args)])
                return await _on_one_connection(node, [pack(*args)])
            except MovedError as moved:  # before AskError: it is a subclass
                await self.client.nodes_manager.move_slot(moved)
                node, asking = self._node_of(key), False
            except AskError as ask:
                node, asking = self._node_at(ask.host, ask.port), True
            except TryAgainError:
                moving.append("TRYAGAIN: the slot is being migrated")
                await asyncio.sleep(wait_s)
                wait_s *= 2
                asking = False
                node = self._node_of(key)
        raise SlotMovingError(f"{_MAX_REDIRECTIONS} redirections for one call")

    def _node_of(self, key: str) -> ClusterNode:
        try:
            node = self.client.get_node_from_key(key)
        except _REDIS_PY_ERRORS as exc:  # SlotNotCoveredError: read the map again
            raise self._failed(exc) from exc
        if node is None:
            raise StoreError(f"no node serves the slot of {key!r}")
        return node

    def _node_at(self, host: str, port: int) -> ClusterNode:
        node = self.client.get_node(host=host, port=port)
        if node is None:  # a node the map does not know yet: read it again
            self._stale = True
            raise StoreError(f"redirected to {host}:{port}, not in the slot map")
        return node

    async def execute_on(self, server: str, args: Sequence[Arg], *, timeout_s: float) -> Any:
        node = self.client.get_node(node_name=server)
        if node is None:
            raise StoreError(f"{server} is no longer a cluster node")
        try:
            async with asyncio.timeout(timeout_s):
                return await node.execute_command(*args)
        except TimeoutError:
            self._stale = True
            raise
        except _REDIS_PY_ERRORS as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> StoreError:
        error = translated(exc)
        if not isinstance(error, StoreReplyError):
            self._stale = True
        return error

    async def refresh(self, *, timeout_s: float) -> None:
        """Have a slot map: wait for the first read (StoreError when it fails,
        TimeoutError when not in time); later, start a background read when the last
        call failed, and go on with the map there is."""
        if not self._stale:
            return
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self._read_map())
            # Callers that do not wait never see its error: retrieve it here.
            reading.add_done_callback(_retrieved)
        if not self._has_map:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(reading)

    async def _read_map(self) -> None:
        self._stale = False  # a failure from now on asks for another read
        try:
            if self._has_map:
                await self.client.nodes_manager.initialize()
            else:
                await self.client.initialize()  # the map, and the client's set-up
            self._has_map = True
        except _REDIS_PY_ERRORS as exc:
            self._stale = True
            raise translated(exc) from exc
        except BaseException:
            self._stale = True
            raise

    def server_of(self, key: str) -> str:
        return str(self._node_of(key).name)

    def slot_of(self, key: str) -> int:
        return int(self.client.keyslot(key))

    def primaries(self) -> list[str]:
        return [str(node.name) for node in self.client.get_primaries()]

    async def close(self) -> None:
        await self.client.aclose()


_ASKING = pack("ASKING")


async def _on_one_connection(node: ClusterNode, commands: list[bytes]) -> Any:
    """Write `commands` (packed by hiredis: redis-py's own packer costs ~10 us more per
    call) in one go on one pooled connection of `node`; the last one's reply. ASKING must
    go this way: an ASK allows only the next command of the connection that sent it."""
    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)  # marked by a slot map re-read
        await connection.send_packed_command(commands[0] if len(commands) == 1 else commands)
        reply: Any = None
        for _ in commands:  # read every reply, so the connection stays in step
            try:
                reply = await connection.read_response()
            except ResponseError as exc:
                reply = exc
    finally:
        node.release(connection)
    if isinstance(reply, ResponseError):
        raise reply
    return reply
