"""The server stacks the in-process tests run on, and the event loops under them.

Servicer tests take the `stack` fixture (aio and sync); a test marked `ALSO_ON_UVLOOP`
runs on uvloop's event loop as well as asyncio's (a conftest wires `loop_factories` into
pytest-asyncio's hook). On uvloop's loop, the `aio` stack is the `uvloop` stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

from sidecar_runtime.settings import Stack

IN_PROCESS_STACKS: tuple[Stack, ...] = ("aio", "sync")
LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
ALSO_ON_UVLOOP = pytest.mark.asyncio(loop_factories=list(LOOPS))


def loop_factories(item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Both loops for a test marked ALSO_ON_UVLOOP; asyncio's for every other."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_factories"):
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}


def running_stack(stack: Stack) -> Stack:
    """The stack a test on the running loop really exercises."""
    if stack == "aio" and isinstance(asyncio.get_running_loop(), uvloop.Loop):
        return "uvloop"
    return stack
