"""grpcio's two servers behind one small interface, for `SidecarServer`.

`AioGrpc` is grpc.aio (the `aio` and `uvloop` stacks): handlers are coroutines on the
event loop. `ThreadedGrpc` is grpcio's thread-pool server (the `sync` stack): handlers
run on `threads` worker threads; at most `max_concurrent_rpcs` calls are in progress
(running or waiting for a thread) and the next is refused at once with
RESOURCE_EXHAUSTED, so there is never an unbounded queue. Both are driven from the event
loop (start, health, stop), so the shutdown sequence is one piece of code.

`health_only()` makes a second server of the same kind on the same health servicer, for
the plaintext health listener (`server.health_listen`): it has no other service, so any
other call is UNIMPLEMENTED, and every status, the drain and the end of Watch streams
are the first server's, with no copying between them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from sidecar_runtime.health import DrainingHealthServicer, DrainingSyncHealthServicer

# Reflection streams (grpcurl) run on a pool of their own on the threaded server: an open
# stream holds its thread, and must not hold one the handlers need.
_REFLECTION_THREADS = 1
# The threaded health-only server's pool: a Check answers from memory in microseconds and
# a Watch holds no thread (non-blocking streams), so one thread keeps up with any prober.
_HEALTH_ONLY_THREADS = 1


class GrpcServer(Protocol):
    """What SidecarServer needs from a grpcio server."""

    server: Any  # grpc.aio.Server or grpc.Server: services register on it

    def add_reflection(self, names: list[str]) -> None: ...

    def health_only(self, options: list[tuple[str, Any]]) -> GrpcServer: ...

    def add_port(self, listen: str, credentials: grpc.ServerCredentials | None) -> int: ...

    async def start(self) -> None: ...

    async def set_health(self, name: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...

    async def close_watches(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    async def wait_for_termination(self) -> None: ...


def _add_port(server: Any, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is None:
        return int(server.add_insecure_port(listen))
    return int(server.add_secure_port(listen, credentials))


class AioGrpc:
    """grpc.aio, on the running event loop (asyncio's or uvloop's)."""

    def __init__(
        self, options: list[tuple[str, Any]], *, health: DrainingHealthServicer | None = None
    ) -> None:
        self.server = grpc.aio.server(options=options)
        self.health = health or DrainingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def add_reflection(self, names: list[str]) -> None:
        reflection.enable_server_reflection(names, self.server)

    def health_only(self, options: list[tuple[str, Any]]) -> AioGrpc:
        """Another grpc.aio server on this loop, serving this one's health and nothing else."""
        return AioGrpc(options, health=self.health)

    def add_port(self, listen: str, credentials: grpc.ServerCredentials | None) -> int:
        return _add_port(self.server, listen, credentials)

    async def start(self) -> None:
        await self.server.start()

    async def set_health(self, name: str, status: int) -> None:
        await self.health.set(name, status)

    async def enter_graceful_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def close_watches(self) -> None:
        await self.health.close_watches()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


class ThreadedGrpc:
    """grpcio's thread-pool server; its methods are called from the event loop."""

    def __init__(
        self,
        options: list[tuple[str, Any]],
        *,
        threads: int,
        max_concurrent_rpcs: int,
        health: DrainingSyncHealthServicer | None = None,
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="grpc-worker")
        self._side_pool: ThreadPoolExecutor | None = None  # made for reflection only
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self.server = grpc.server(
            self._pool, options=options, maximum_concurrent_rpcs=max_concurrent_rpcs
        )
        self.health = health or DrainingSyncHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def add_reflection(self, names: list[str]) -> None:
        self._side_pool = ThreadPoolExecutor(_REFLECTION_THREADS, thread_name_prefix="grpc-side")
        servicer = _PooledReflection(reflection.ReflectionServicer(names), self._side_pool)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, self.server)

    def health_only(self, options: list[tuple[str, Any]]) -> ThreadedGrpc:
        """Another threaded server, on a pool of its own (the handlers' threads never answer
        a probe), serving this one's health and nothing else."""
        return ThreadedGrpc(
            options,
            threads=_HEALTH_ONLY_THREADS,
            max_concurrent_rpcs=self._max_concurrent_rpcs,
            health=self.health,
        )

    def add_port(self, listen: str, credentials: grpc.ServerCredentials | None) -> int:
        return _add_port(self.server, listen, credentials)

    async def start(self) -> None:
        self.server.start()

    async def set_health(self, name: str, status: int) -> None:
        # Sends to open Watch streams from this thread; a send waits only for grpc to
        # take the few bytes (non-blocking streams), not for the client.
        self.health.set(name, status)

    async def enter_graceful_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()

    async def close_watches(self) -> None:
        self.health.close_watches()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give those in flight `grace`, and wait until the server is
        down (on another thread: the loop keeps serving the handlers' fetches and Redis
        calls meanwhile)."""
        stopped = self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        # A handler cancelled at the end of the grace period may still be returning; its
        # thread ends when it does (every wait a handler makes is bounded).
        self._pool.shutdown(wait=False)
        if self._side_pool is not None:
            self._side_pool.shutdown(wait=False)

    async def wait_for_termination(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.server.wait_for_termination)


class _InPool:
    """A handler that grpc's threaded server runs on `pool` instead of its own
    (grpc's `experimental_thread_pool` attribute of a method's behaviour)."""

    def __init__(self, behaviour: Any, pool: ThreadPoolExecutor) -> None:
        self._behaviour = behaviour
        self.experimental_thread_pool = pool

    def __call__(self, *args: Any) -> Any:
        return self._behaviour(*args)


class _PooledReflection:
    """grpc's reflection servicer, its stream method on a pool of its own."""

    def __init__(self, inner: Any, pool: ThreadPoolExecutor) -> None:
        self.ServerReflectionInfo = _InPool(inner.ServerReflectionInfo, pool)
