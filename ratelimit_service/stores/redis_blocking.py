"""A blocking Redis client for the `sync` stack's worker threads: one connection per thread.

The pipelined client (`redis_pipe`) lives on the event loop; a worker thread that handed
each call to the loop and waited for it paid two thread hand-overs per call. Here the
thread that decides also sends the one EVALSHA and reads its reply, on a connection no
other thread uses: no lock, no hand-over, and the interpreter lock is released while the
thread waits in the kernel. Measured (`make bench`, one run each, 2 cores): the rate
limiter alone at saturation cost 541 µs of CPU per call with the hand-over and 331 with
this client; behind Envoy 335 and 300 (uvloop: 279).

Deadlines: a call's deadline bounds the send, the wait for the reply, and the connect of a
thread's first call (at most the connect timeout as well). A reply that arrived in time
is used even if the thread got the interpreter lock back late (the kernel holds it; the
wait itself ended in time). A reply that comes after its deadline is read and dropped in
order by the connection's next call, so the connection stays; one whose oldest unanswered
command is older than `stale_after_s` is closed (a hung server), as is one that errs.

The same endpoints (redis://, rediss:// with the settings' TLS context, unix://), the same
AUTH and SELECT on connect as the pipelined client.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any

import hiredis

from ratelimit_service.errors import StoreError, StoreReplyError
from ratelimit_service.stores.redis_pipe import Endpoint, client_tls, pack

_READ_BYTES = 65536


class _Connection:
    """One blocking socket, used by one thread only."""

    def __init__(self, sock: socket.socket, stale_after_s: float) -> None:
        self._sock = sock
        self._stale_after_s = stale_after_s
        self._reader = hiredis.Reader(replyError=StoreReplyError)
        # When each command whose caller gave up was sent: their replies come first.
        self._owed: deque[float] = deque()
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self.open = True

    def call(self, packed: bytes, deadline: float) -> Any:
        """Send one command and return its reply, by `deadline` (time.monotonic()).
        Raises StoreReplyError for an error reply, StoreError when the connection
        fails, and TimeoutError when no reply came in time."""
        sent = time.monotonic()
        if deadline <= sent:
            raise TimeoutError
        try:
            self._sock.settimeout(deadline - sent)
            self._sock.sendall(packed)
        except OSError as exc:  # a timeout too: a command sent in part cannot be finished
            self.close()
            if isinstance(exc, TimeoutError):
                raise
            raise StoreError(f"connection lost: {exc}") from exc
        try:
            return self._reply(deadline)
        except TimeoutError:
            self._gave_up(sent)
            raise
        except OSError as exc:
            self.close()
            raise StoreError(f"connection lost: {exc}") from exc

    def _reply(self, deadline: float) -> Any:
        reader = self._reader
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.close()
                raise StoreError(f"protocol error: {exc}") from exc
            if reply is False:
                self._receive(deadline)
            elif self._owed:
                self._owed.popleft()  # a late reply to a call that gave up: drop it
            elif isinstance(reply, StoreReplyError):
                raise reply
            else:
                return reply

    def _receive(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(left)
        data = self._sock.recv(_READ_BYTES)
        if not data:
            self.close()
            raise StoreError("connection closed by the server")
        self._reader.feed(data)

    def closed_by_server(self) -> bool:
        """Did the server close this idle connection (a restart, its idle timeout), or
        send something nobody asked for? One poll, before a call is sent on it: a call
        must not be lost on a connection that died while its thread was idle."""
        if self._owed or not self._readable.poll(0):
            return False  # replies are due (not idle), or nothing to read: alive
        sock = self._sock
        try:
            sock.setblocking(False)
            if isinstance(sock, ssl.SSLSocket):
                sock.recv(_READ_BYTES)  # TLS records (a session ticket) are read
            else:
                sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False  # a TLS record that was no data: alive
        except OSError:
            return True
        return True  # end of stream, or bytes nobody asked for

    def _gave_up(self, sent: float) -> None:
        self._owed.append(sent)
        if time.monotonic() - self._owed[0] > self._stale_after_s:
            self.close()  # the server has not answered for far too long: start over

    def close(self) -> None:
        self.open = False
        with contextlib.suppress(OSError):
            self._sock.close()


class ThreadRedis:
    """Blocking connections to one standalone Redis, one per calling thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        connect_timeout_s: float = 0.2,
        stale_after_s: float = 1.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: the context for a rediss:// endpoint (default: the system's CAs)."""
        self.endpoint = endpoint
        self._connect_timeout_s = connect_timeout_s
        self._stale_after_s = stale_after_s
        self._tls = client_tls(endpoint, tls)
        self._local = threading.local()
        self._all: set[_Connection] = set()  # every thread's, to close them all
        self._lock = threading.Lock()
        self._closed = False

    def connections(self) -> int:
        """How many connections are open now (all threads)."""
        with self._lock:
            return sum(1 for c in self._all if c.open)

    def execute(self, packed: bytes, *, timeout_s: float) -> Any:
        """Send one command (see `redis_pipe.pack`) on this thread's connection; its reply
        within `timeout_s`. Raises StoreReplyError, StoreError or TimeoutError."""
        deadline = time.monotonic() + timeout_s
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.open and connection.closed_by_server():
            connection.close()
        if connection is None or not connection.open:
            connection = self._connect(deadline)
        return connection.call(packed, deadline)

    def _connect(self, deadline: float) -> _Connection:
        if self._closed:
            raise StoreError("client closed")
        e = self.endpoint
        timeout = min(self._connect_timeout_s, max(deadline - time.monotonic(), 0.0))
        try:
            sock = self._open_socket(timeout)
        except TimeoutError as exc:
            raise StoreError(f"connect to {e.label}: no answer within the timeout") from exc
        except OSError as exc:
            raise StoreError(f"connect to {e.label}: {exc}") from exc
        connection = _Connection(sock, self._stale_after_s)
        try:
            self._log_in(connection, deadline)
        except BaseException:
            connection.close()
            raise
        with self._lock:
            self._all = {c for c in self._all if c.open}
            self._all.add(connection)
        self._local.connection = connection
        return connection

    def _open_socket(self, timeout: float) -> socket.socket:
        e = self.endpoint
        if e.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(e.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((e.host, e.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            return sock
        try:
            return self._tls.wrap_socket(sock, server_hostname=e.host)
        except BaseException:
            sock.close()
            raise

    def _log_in(self, connection: _Connection, deadline: float) -> None:
        """AUTH and SELECT before the connection takes calls."""
        e = self.endpoint
        if e.password is not None:
            credentials = (e.username, e.password) if e.username else (e.password,)
            self._checked(connection, "AUTH", pack("AUTH", *credentials), deadline)
        if e.db:
            self._checked(connection, "SELECT", pack("SELECT", e.db), deadline)

    def _checked(self, connection: _Connection, name: str, packed: bytes, deadline: float) -> None:
        try:
            connection.call(packed, deadline)
        except StoreReplyError as exc:
            raise StoreError(f"{name} on {self.endpoint.label} refused: {exc}") from exc

    def close(self) -> None:
        """Close every thread's connection; later calls fail with StoreError."""
        with self._lock:
            self._closed = True
            connections, self._all = self._all, set()
        for connection in connections:
            connection.close()
