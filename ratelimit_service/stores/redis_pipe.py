"""A pipelined Redis client for the hot path: one standalone server, a few long-lived
connections, replies parsed by hiredis.

Why not redis-py here: its generic command path (pool checkout and release, one `encode`
per argument, the retry wrapper, the parser) costs ~130 us of CPU per call on the bench
machine, around a script Redis runs in a few microseconds (docs/benchmarks.md, R1).

Each connection is an `asyncio.Protocol` with a `hiredis.Reader` and a FIFO of the futures
of the commands written on it. Redis answers one connection's commands in order, so any
number of concurrent calls share a socket (pipelining) and every reply goes to the oldest
waiting future. Commands written during one loop iteration leave in one `write`.

Deadlines (docs/benchmarks.md, R3): a call's deadline is a loop timer that fails the call's
future only if it is still pending. asyncio runs the I/O callbacks of an iteration before
the timers that expired in it, so a reply that is in the socket when the loop wakes wins
over a deadline that expired while the loop was busy: an overloaded process reads its
replies late but still uses them, instead of failing open. A reply that does come after its
deadline is read and dropped in order; the connection stays. A connection whose oldest
unanswered command is older than `stale_after_s` is closed and its calls fail, so a hung
server cannot grow a FIFO without bound.

A lost connection fails its pending calls with StoreError. Its slot is re-opened in the
background by the next call that picks it; calls use the other open connections meanwhile
and wait for a connect only when none is open. `open_all` opens every slot up front (the
health probe does, before the service reports SERVING).

URLs: redis://, rediss:// and unix://, with user, password and db from the URL (which
wins, as in redis-py) or the settings. rediss:// is TLS with the server's certificate
verified and its name checked against the URL's host, against the system's CAs or the
context the caller hands in (the settings' `store.tls`: a private CA, a client
certificate). A URL with query options (`?ssl_ca_certs=...`) is left to redis-py: see
`endpoint_from_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio.connection import parse_url

from ratelimit_service.errors import StoreError, StoreReplyError

_PIPELINE_OPTIONS = frozenset({"host", "port", "path", "db", "username", "password"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one standalone Redis listens, and how to log in."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def label(self) -> str:
        """For error messages: never the password."""
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


def client_tls(endpoint: Endpoint, tls: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context a client of `endpoint` connects with: `tls`, or the system's CAs,
    for a rediss:// endpoint; None for a plain one (ValueError if `tls` is given)."""
    if not endpoint.tls:
        if tls is not None:
            raise ValueError(f"a TLS context for {endpoint.label}, which is not rediss://")
        return None
    return tls or ssl.create_default_context()


def endpoint_from_url(
    url: str, *, db: int = 0, username: str | None = None, password: str | None = None
) -> Endpoint | None:
    """The endpoint of a standalone URL, or None when the URL carries options this client
    does not implement (then redis-py serves it). Parsed by redis-py's own `parse_url`, so
    both clients read a URL alike; what the URL says wins over the arguments."""
    options: dict[str, Any] = dict(parse_url(url))
    connection_class = options.pop("connection_class", None)
    if not set(options) <= _PIPELINE_OPTIONS:
        return None
    return Endpoint(
        host=options.get("host", "127.0.0.1"),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        tls=connection_class is not None and url.startswith("rediss://"),
        username=options.get("username", username),
        password=options.get("password", password),
        db=int(options.get("db", db)),
    )


def pack(*args: str | int | float | bytes) -> bytes:
    """One command in RESP, by hiredis's C packer (~2 us; redis-py's takes ~13 us)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed


_Pending = tuple["asyncio.Future[Any]", float, "asyncio.TimerHandle | None"]


class _Transport(Protocol):
    """What a connection uses of its transport. uvloop's transports have these methods
    but do not derive from asyncio.Transport, so no isinstance check on the class."""

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One socket: commands out in order, replies matched to the oldest pending future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stale_after_s: float) -> None:
        self._loop = loop
        self._stale_after_s = stale_after_s
        self._reader = hiredis.Reader(replyError=StoreReplyError)
        # Written commands, oldest first: (future, loop time written, deadline timer).
        # A future already done was abandoned by its caller; its reply is dropped.
        self._pending: deque[_Pending] = deque()
        # Commands queued in this loop iteration: (packed, future, timeout_s).
        self._outbox: list[tuple[bytes, asyncio.Future[Any], float | None]] = []
        self._transport: _Transport | None = None
        self.open = False
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's): create_connection made it.
        self._transport = cast(_Transport, transport)
        self.open = True

    def send(self, packed: bytes, timeout_s: float | None) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply, or its error, or
        TimeoutError when no reply came `timeout_s` after the command was written."""
        future = self._loop.create_future()
        entry = (packed, future, timeout_s)
        if not self._pending and not self._outbox:
            self._write([entry])  # an idle connection: nothing to batch with, go now
        else:
            if not self._outbox:
                self._loop.call_soon(self._flush)
            self._outbox.append(entry)
        return future

    def _flush(self) -> None:
        """One write for everything queued while the connection was busy."""
        outbox, self._outbox = self._outbox, []
        self._write([entry for entry in outbox if not entry[1].done()])  # skip cancelled

    def _write(self, entries: list[tuple[bytes, asyncio.Future[Any], float | None]]) -> None:
        """Write, then start the deadlines: the time this process took to get here
        (an event loop lagging under load) is not counted against Redis."""
        if self._transport is None or not self.open:
            for _, future, _ in entries:
                if not future.done():
                    future.set_exception(StoreError("connection closed"))
            return
        if not entries:
            return
        self._transport.write(
            entries[0][0] if len(entries) == 1 else b"".join([entry[0] for entry in entries])
        )
        loop = self._loop
        now = loop.time()
        for _, future, timeout_s in entries:
            timer = (
                None if timeout_s is None else loop.call_at(now + timeout_s, self.expire, future)
            )
            self._pending.append((future, now, timer))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(f"protocol error: {exc}")
                return
            if reply is False:
                return
            if not pending:
                self.abort("a reply nobody asked for")
                return
            future, _, timer = pending.popleft()
            if timer is not None:
                timer.cancel()
            if future.done():
                continue  # its caller gave up (deadline or cancellation): drop the reply
            if isinstance(reply, StoreReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def expire(self, future: asyncio.Future[Any]) -> None:
        """A call's deadline (a loop timer): fail it unless its reply came first."""
        if future.done():
            return
        future.set_exception(TimeoutError())
        pending = self._pending
        if pending and self._loop.time() - pending[0][1] > self._stale_after_s:
            self.abort(f"no reply for {self._stale_after_s:g} s")

    def abort(self, reason: str) -> None:
        """Close at once and fail every pending call."""
        self._fail_all(StoreError(f"connection closed: {reason}"))
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(StoreError(f"connection lost: {exc or 'closed by the server'}"))

    def _fail_all(self, error: StoreError) -> None:
        self.open = False
        futures = [entry[1] for entry in self._outbox]
        self._outbox.clear()
        while self._pending:
            future, _, timer = self._pending.popleft()
            if timer is not None:
                timer.cancel()
            futures.append(future)
        for future in futures:
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)


class RedisPipe:
    """A few pipelined connections to one standalone Redis."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        connections: int = 2,
        connect_timeout_s: float = 0.2,
        stale_after_s: float = 1.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: the context for a rediss:// endpoint (default: the system's CAs)."""
        self.endpoint = endpoint
        self._connect_timeout_s = connect_timeout_s
        self._stale_after_s = stale_after_s
        self._slots: list[_Connection | None] = [None] * connections
        self._opening: list[asyncio.Task[None] | None] = [None] * connections
        self._next = 0
        self._closed = False
        self.last_error = ""
        self._tls = client_tls(endpoint, tls)

    def connections(self) -> int:
        """How many connections are open now."""
        return sum(1 for c in self._slots if c is not None and c.open)

    async def execute(self, packed: bytes, *, timeout_s: float | None = None) -> Any:
        """Send one command (see `pack`); its reply. Raises StoreReplyError for an error
        reply, StoreError when the connection fails, and TimeoutError when no reply came
        within `timeout_s` of writing the command (or of waiting for a connection)."""
        connection = self._pick(reopen=True) or await self._wait_for_connection(timeout_s)
        return await connection.send(packed, timeout_s)

    def _pick(self, *, reopen: bool) -> _Connection | None:
        """The next open connection, round robin; closed slots start re-opening."""
        slots = self._slots
        for _ in range(len(slots)):
            index = self._next
            self._next = index + 1 if index + 1 < len(slots) else 0
            connection = slots[index]
            if connection is not None and connection.open:
                return connection
            if reopen:
                self._start_opening(index)
        return None

    def _start_opening(self, index: int) -> None:
        if self._opening[index] is None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._open(index))
            self._opening[index] = task

    async def _wait_for_connection(self, timeout_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            connection = self._pick(reopen=False)
            if connection is not None:
                return connection
            opening = [task for task in self._opening if task is not None]
            if not opening:
                raise StoreError(f"cannot connect to {self.endpoint.label}: {self.last_error}")
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            # asyncio.wait cancels nothing: a connect outlives a caller's short deadline.
            done, _ = await asyncio.wait(
                opening, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError

    async def open_all(self) -> None:
        """Open every closed slot and wait; StoreError if none could be opened."""
        for index in range(len(self._slots)):
            connection = self._slots[index]
            if connection is None or not connection.open:
                self._start_opening(index)
        opening = [task for task in self._opening if task is not None]
        if opening:
            await asyncio.wait(opening)
        if self.connections() == 0:
            raise StoreError(f"cannot connect to {self.endpoint.label}: {self.last_error}")

    async def _open(self, index: int) -> None:
        try:
            connection = await self._connect()
            if self._closed:
                connection.abort("client closed")
                return
            self._slots[index] = connection
        except Exception as exc:  # a background task: keep the reason for the callers
            self.last_error = str(exc) or type(exc).__name__
        finally:
            self._opening[index] = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        e = self.endpoint
        stale = self._stale_after_s

        def factory() -> _Connection:
            return _Connection(loop, stale)

        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if e.path is not None:
                    _, connection = await loop.create_unix_connection(factory, e.path)
                else:
                    server_hostname = e.host if self._tls is not None else None
                    _, connection = await loop.create_connection(
                        factory, e.host, e.port, ssl=self._tls, server_hostname=server_hostname
                    )
                try:
                    await self._log_in(connection)
                except BaseException:
                    connection.abort("login failed")
                    raise
        except TimeoutError as exc:
            raise StoreError(f"connect to {e.label}: no answer within the timeout") from exc
        except OSError as exc:
            raise StoreError(f"connect to {e.label}: {exc}") from exc
        return connection

    async def _log_in(self, connection: _Connection) -> None:
        """AUTH and SELECT, pipelined, before the connection takes calls."""
        e = self.endpoint
        commands: list[tuple[str, tuple[Any, ...]]] = []
        if e.password is not None:
            credentials = (e.username, e.password) if e.username else (e.password,)
            commands.append(("AUTH", ("AUTH", *credentials)))
        if e.db:
            commands.append(("SELECT", ("SELECT", e.db)))
        futures = [connection.send(pack(*args), None) for _, args in commands]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for (name, _), reply in zip(commands, replies, strict=True):
            if isinstance(reply, StoreReplyError):
                raise StoreError(f"{name} on {e.label} refused: {reply}") from reply
            if isinstance(reply, BaseException):
                raise reply

    async def close(self) -> None:
        """Close every connection; pending calls fail with StoreError."""
        self._closed = True
        for task in self._opening:
            if task is not None:
                task.cancel()
        for task in self._opening:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for index, connection in enumerate(self._slots):
            if connection is not None:
                connection.abort("client closed")
                await connection.lost
            self._slots[index] = None
