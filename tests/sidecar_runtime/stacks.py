"""The server stacks the in-process tests run on, and the event loops under them.

Servicer tests take the `stack` fixture (aio and sync); a test marked `ALSO_ON_UVLOOP`
runs on uvloop's event loop as well as asyncio's. The hook and the fixture are defined here
once; a suite's conftest imports both (a hook in a conftest applies to the tests under it
only, so tests/e2e keeps its own `stack`). On uvloop's loop, the `aio` stack is the
`uvloop` stack.
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


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: both loops for a test marked ALSO_ON_UVLOOP; asyncio's for
    every other."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_factories"):
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(params=IN_PROCESS_STACKS)
def stack(request: pytest.FixtureRequest) -> Stack:
    """The server stack of an in-process server (aio, sync)."""
    stack: Stack = request.param
    return stack


def running_stack(stack: Stack) -> Stack:
    """The stack a test on the running loop really exercises."""
    if stack == "aio" and isinstance(asyncio.get_running_loop(), uvloop.Loop):
        return "uvloop"
    return stack
