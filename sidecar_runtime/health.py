"""grpc.health.v1 for a server that drains: grpc's own servicers (asyncio and threaded),
plus open Watch streams that end when the server stops.

grpc's asyncio HealthServicer already reports NOT_SERVING for good on
`enter_graceful_shutdown()` and ignores every later `set()` (so a dependency that recovers
during the drain cannot turn it back to SERVING). What it lacks is a way to end a Watch:
each open stream waits for the next status change forever, and `server.stop(grace)` then
waits the whole grace period for it. `close_watches()` ends them, with UNAVAILABLE
("the server is shutting down"), after the last status they saw was NOT_SERVING; a
client's health checking retries a stream that ended so and finds the server gone.

The threaded servicer (the `sync` stack) runs Watch in grpc's non-blocking mode: an open
stream holds no worker thread, and a status change is sent by whoever sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health

_CLOSING_DETAILS = "the server is shutting down"


class DrainingHealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc's health servicer whose Watch streams end on `close_watches()`."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    async def Watch(  # noqa: N802 - the gRPC method name
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """grpc's Watch until the status stream ends or the server closes the watches."""
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, closing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._closing.is_set():
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(_CLOSING_DETAILS)

    async def close_watches(self) -> None:
        """Report NOT_SERVING for good and end every open (and any later) Watch stream."""
        await self.enter_graceful_shutdown()
        self._closing.set()


SendResponse = Callable[[Any], None]  # grpc's non-blocking stream callback; None ends it


class DrainingSyncHealthServicer(health.HealthServicer):  # type: ignore[misc]
    """grpc's threaded health servicer whose Watch streams end on `close_watches()`."""

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        self._streams_lock = threading.Lock()
        self._streams: dict[int, tuple[Any, SendResponse]] = {}
        self._closing = False

    def Watch(  # noqa: N802 - the gRPC method name
        self, request: Any, context: Any, send_response_callback: SendResponse | None = None
    ) -> Any:
        """grpc's Watch, its stream remembered so that `close_watches()` can end it."""
        if send_response_callback is None:  # a server without non-blocking streams
            return super().Watch(request, context)
        send = _ended_once(send_response_callback)
        key = id(send)
        with self._streams_lock:
            self._streams[key] = (context, send)
            closing = self._closing
        context.add_callback(lambda: self._forget(key))
        super().Watch(request, context, send)
        if closing:  # a Watch that arrived after the close: its status, then the end
            self._end(context, send)
        return None

    def close_watches(self) -> None:
        """Report NOT_SERVING for good and end every open (and any later) Watch stream."""
        self.enter_graceful_shutdown()
        with self._streams_lock:
            self._closing = True
            streams = list(self._streams.values())
        for context, send in streams:
            self._end(context, send)

    def _forget(self, key: int) -> None:
        with self._streams_lock:
            self._streams.pop(key, None)

    @staticmethod
    def _end(context: Any, send: SendResponse) -> None:
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(_CLOSING_DETAILS)
        send(None)


def _ended_once(send: SendResponse) -> SendResponse:
    """`send`, ending the stream at most once: grpc's servicer ends it again (send(None))
    when the call terminates, and a second status on a finished call is an error."""
    lock = threading.Lock()
    ended = False

    def send_once(response: Any) -> None:
        nonlocal ended
        with lock:
            if ended:
                return
            if response is None:
                ended = True
        send(response)

    return send_once
