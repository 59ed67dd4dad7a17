"""grpc.health.v1 for a server that drains: grpc's own servicer, plus open Watch streams
that end when the server stops.

grpc's asyncio HealthServicer already reports NOT_SERVING for good on
`enter_graceful_shutdown()` and ignores every later `set()` (so a dependency that recovers
during the drain cannot turn it back to SERVING). What it lacks is a way to end a Watch:
each open stream waits for the next status change forever, and `server.stop(grace)` then
waits the whole grace period for it. `close_watches()` ends them, with UNAVAILABLE
("the server is shutting down"), after the last status they saw was NOT_SERVING; a
client's health checking retries a stream that ended so and finds the server gone.
"""

from __future__ import annotations

import asyncio
import contextlib
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
