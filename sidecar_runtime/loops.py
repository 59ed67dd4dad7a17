"""The event loop a sidecar process runs on, and the bridge from gRPC's worker threads to it.

Every stack has one event loop, on the main thread (where signals arrive): on `aio` and
`uvloop` it runs the gRPC server and the handlers; on `sync` it runs what is asynchronous
(JWKS fetches, reloads, health, the Redis probe, telemetry) while grpcio's worker threads
run the handlers. A handler that needs the loop (a key fetch; a call to a store that
lives there) hands a coroutine over with `LoopBridge.submit` and waits on the returned
future with its own deadline; the thread holds no lock meanwhile, so other calls go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sidecar_runtime.settings import Stack

T = TypeVar("T")


def loop_factory(stack: Stack) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new loop of the kind `stack` runs on: uvloop's for `uvloop`, asyncio's otherwise."""
    if stack == "uvloop":
        import uvloop  # only a process that asks for it pays for the import

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, stack: Stack) -> T:
    """`asyncio.run(main)` on the loop `stack` needs."""
    with asyncio.Runner(loop_factory=loop_factory(stack)) as runner:
        return runner.run(main)


class LoopUnavailableError(RuntimeError):
    """The bridge has no loop (not bound yet) or the loop is closed (shutting down)."""


class LoopBridge:
    """Coroutines from worker threads onto one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` from now on (a server binds it when it starts)."""
        self._loop = loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop (from any thread but the loop's own); its future.

        The task runs in a copy of the caller's context (asyncio copies it when the
        callback is scheduled), so context variables set by the handler (the call's
        correlation, the current span) reach the coroutine."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise LoopUnavailableError("no event loop to run on")
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # closed between the check and the call
            coro.close()
            raise LoopUnavailableError(str(exc)) from exc
