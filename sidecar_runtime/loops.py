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
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sidecar_runtime.settings import Stack

T = TypeVar("T")

log = logging.getLogger(__name__)


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
    """Coroutines (and plain calls) from worker threads onto one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` from now on (a server binds it when it starts)."""
        self._loop = loop

    def call_soon(self, function: Callable[..., object], *args: object) -> None:
        """Run `function(*args)` on the loop soon, without waiting for it; dropped when
        there is no loop (not bound yet, or shutting down)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(function, *args)

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


class Periodic:
    """Awaits `step()` every `interval()` seconds on the running loop until stopped.

    The interval is read before each wait, so it follows a reloaded setting. A step that
    raises is logged and the next one still runs: a watcher that died on one bad pass
    would leave health or config stale for the life of the process."""

    def __init__(
        self, step: Callable[[], Awaitable[object]], *, interval: Callable[[], float], what: str
    ) -> None:
        self._step = step
        self._interval = interval
        self._what = what
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval())
            try:
                await self._step()
            except Exception:
                log.exception("%s failed", self._what)
