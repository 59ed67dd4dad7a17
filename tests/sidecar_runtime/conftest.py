"""Fixtures for the shared server runtime: the stacks every in-process server runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from sidecar_runtime.settings import Stack
from tests.sidecar_runtime.stacks import IN_PROCESS_STACKS, loop_factories


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return loop_factories(item)


@pytest.fixture(params=IN_PROCESS_STACKS)
def stack(request: pytest.FixtureRequest) -> Stack:
    """The server stack of an in-process server (aio, sync)."""
    stack: Stack = request.param
    return stack
