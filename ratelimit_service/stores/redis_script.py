"""gcra.lua as Redis commands, and the one place that loads it and handles NOSCRIPT.

The script, its SHA, the EVALSHA arguments and the reply, shared by every client (the
pipelined one, the per-thread blocking one, redis-py for Sentinel and Cluster), so they
send the same bytes and read the same answers.

`ScriptRunner` runs EVALSHA over a `Transport` (a small interface each client adapts to:
send one command, load the script on one server). The script is loaded with SCRIPT LOAD
before the first call to a server, and again after a NOSCRIPT answer (a restarted,
flushed or newly promoted server): concurrent callers that hit NOSCRIPT together share
one load, then each retries once. The sync stack's worker threads use the same runner
through a `BlockingTransport` (their own connections; no lock is shared with the loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, Protocol

from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.limits.bucket import Outcome
from ratelimit_service.store import BucketCall

SCRIPT = (
    resources.files("ratelimit_service.stores").joinpath("gcra.lua").read_text(encoding="utf-8")
)
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
LOAD_ARGS: tuple[str, ...] = ("SCRIPT", "LOAD", SCRIPT)

Arg = str | int | float | bytes


def evalsha_args(mode: str, calls: Sequence[BucketCall]) -> list[Arg]:
    """The EVALSHA command for gcra.lua (see its header for the argument layout). Every
    key is declared in KEYS, so Redis Cluster routes the call and answers MOVED or ASK."""
    args: list[Arg] = ["EVALSHA", SCRIPT_SHA, len(calls)]
    args += [call.key for call in calls]
    args += [mode, len(calls)]
    for call in calls:
        args += [call.spec.interval_us, call.spec.capacity, call.cost, int(call.mode)]
    return args


def parse_reply(reply: Sequence[int], count: int) -> tuple[bool, list[Outcome]]:
    """(committed, one Outcome per bucket) from the script's `take` answer."""
    if not isinstance(reply, list) or len(reply) != 1 + 3 * count:
        size = len(reply) if isinstance(reply, list) else type(reply).__name__
        raise StoreError(f"unexpected script reply ({size}) for {count} keys")
    outcomes = [
        Outcome(reply[i] == 1, int(reply[i + 1]), int(reply[i + 2]))
        for i in range(1, len(reply), 3)
    ]
    return reply[0] == 1, outcomes


def check_loaded_sha(sha: object) -> None:
    """SCRIPT LOAD must answer with the SHA the EVALSHA calls use."""
    text = sha.decode() if isinstance(sha, bytes) else str(sha)
    if text != SCRIPT_SHA:
        raise StoreError(f"server returned script SHA {text}, expected {SCRIPT_SHA}")


class Transport(Protocol):
    """How a Redis client sends commands (adapted in redis_transports). Errors: an error
    reply is StoreReplyError (its first word the Redis code: NOSCRIPT ...), a failed
    connection StoreError, no answer within `timeout_s` TimeoutError."""

    def execute(self, args: Sequence[Arg], *, timeout_s: float | None) -> Awaitable[Any]:
        """Send one command to the server its keys belong to; its reply."""
        ...

    async def execute_on(self, server: str, args: Sequence[Arg], *, timeout_s: float) -> Any:
        """Send one command to `server` (a name from `server_of`); its reply."""
        ...

    def server_of(self, key: str) -> str:
        """The name of the server that serves `key` now (one name for a single server)."""
        ...


class BlockingTransport(Protocol):
    """A transport a worker thread calls itself, blocking (redis_blocking.ThreadRedis)."""

    def execute(self, args: Sequence[Arg], *, timeout_s: float) -> Any: ...


class ScriptRunner:
    """EVALSHA of gcra.lua over one transport, loading the script where it is missing."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._generation: dict[str, int] = {}  # per server: bumped by every SCRIPT LOAD
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self, args: Sequence[Arg], *, server: str, timeout_s: float | None) -> Any:
        """The reply to `args` (an EVALSHA) from `server` (where its keys live). After a
        NOSCRIPT the reload and the retry share one more `timeout_s`."""
        generation = self._generation.get(server)
        if generation is None:
            await self._load(server, None, timeout_s)
            generation = self._generation[server]
        try:
            return await self.transport.execute(args, timeout_s=timeout_s)
        except StoreReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        started = time.monotonic()
        await self._load(server, generation, timeout_s)
        left = None if timeout_s is None else max(timeout_s - (time.monotonic() - started), 1e-3)
        return await self.transport.execute(args, timeout_s=left)

    async def ensure_loaded(self, server: str, *, timeout_s: float | None) -> None:
        """Load the script on `server` unless this runner already did."""
        if server not in self._generation:
            await self._load(server, None, timeout_s)

    async def _load(self, server: str, seen: int | None, timeout_s: float | None) -> None:
        """SCRIPT LOAD once: callers that found the same generation share one load."""
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            if self._generation.get(server) != seen:
                return  # someone else (re)loaded it meanwhile
            sha = await self.transport.execute_on(
                server, LOAD_ARGS, timeout_s=30.0 if timeout_s is None else timeout_s
            )
            check_loaded_sha(sha)
            self._generation[server] = (seen or 0) + 1

    @staticmethod
    def run_blocking(transport: BlockingTransport, args: Sequence[Arg], *, timeout_s: float) -> Any:
        """`run` on the calling worker thread's own connection: the thread's first call
        and a NOSCRIPT are answered by SCRIPT LOAD and one retry, within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        try:
            return transport.execute(args, timeout_s=timeout_s)
        except StoreReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        check_loaded_sha(transport.execute(LOAD_ARGS, timeout_s=_left(deadline)))
        return transport.execute(args, timeout_s=_left(deadline))


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1e-3)
