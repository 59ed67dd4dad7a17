"""Decision ids: unique, cheap, and meaningless to anyone outside.

A random per-process prefix plus a counter: no syscall or UUID per request, and ids from
different processes (workers, replicas, restarts) do not collide in practice (64 random
bits of prefix).
"""

from __future__ import annotations

import itertools
import secrets


class DecisionIds:
    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"
