"""Fixtures for the shared server runtime: the stacks every in-process server runs on."""

from __future__ import annotations

# The shared pytest-asyncio loop hook and `stack` fixture (see stacks.py).
from tests.sidecar_runtime.stacks import (
    pytest_asyncio_loop_factories as pytest_asyncio_loop_factories,
)
from tests.sidecar_runtime.stacks import stack as stack
