"""Injected time. The pure cores take a `Clock` so tests advance time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (token `exp`/`nbf`/`iat` are compared to it)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps backwards (TTLs, cooldowns, timeouts)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; the in-memory double for `Clock`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 1_000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += max(seconds, 0.0)

    def set_wall(self, when: float) -> None:
        """Step the wall clock (possibly backwards) without touching the monotonic one."""
        self._now = when
