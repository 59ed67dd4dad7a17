"""The demo upstream API (ARCHITECTURE.md section 4) on 127.0.0.1:8081.

It trusts Envoy completely (it is never exposed) and echoes the identity headers it got,
so users and tests can see exactly what the authz sidecar injected:

    GET    /api/v1/public/ping
    GET    /api/v1/users/{user_id}
    PUT    /api/v1/users/{user_id}
    DELETE /api/v1/users/{user_id}
    POST   /api/v1/users/{user_id}/notes
    GET    /api/v1/admin/stats
    GET    /api/v1/reports/{report_id}
    GET    /api/v1/internal/reports
    GET    /api/v1/orders/{order_id}

It is a correct HTTP/1.1 server, because Envoy keeps its upstream connections alive and
sends other clients' requests on them: bytes a server leaves unread are parsed as the next
request (request smuggling; docs/edge.md). h11 does the parsing, so framing follows
RFC 9112 exactly; this module only owns the socket loop. Every request's body is read to
its end (and discarded) before the answer, and a body over `max_body_bytes` gets a 413
and the connection closed: never a keep-alive with bytes left over. Every request served
is recorded in `DemoUpstream.served` (the e2e tests check what reached the upstream).
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11

from devstack.envoy_config import IDENTITY_HEADERS, EnvoyParams
from devstack.http_thread import BackgroundHttpServer

# The edge's default body limit (docs/edge.md): the upstream takes at least that much.
MAX_BODY_BYTES = EnvoyParams.max_request_body_bytes
# Envoy forwards up to max_request_headers_kb plus its own and authz's headers: accept all.
MAX_HEADER_BYTES = 128 * 1024
# Longer than Envoy's idle timeout for its upstream connections, so Envoy always closes an
# idle connection first and never sends a request on one this side is closing.
IDLE_TIMEOUT_S = 75.0
# After a response that ends a connection early: how long to keep reading (and dropping)
# what the peer still sends, so closing does not reset the connection under the response.
LINGER_S = 1.0
LINGER_BYTES = 4 << 20
SERVER_HEADER = (b"server", b"demo-upstream")
_USER = re.compile(r"^/api/v1/users/([^/]+)$")
_NOTES = re.compile(r"^/api/v1/users/([^/]+)/notes$")
_REPORT = re.compile(r"^/api/v1/reports/([^/]+)$")
_ORDER = re.compile(r"^/api/v1/orders/([^/]+)$")


@dataclass(frozen=True)
class ServedRequest:
    """One request the upstream answered: as it arrived, body counted but not kept."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body_bytes: int

    def header(self, name: str) -> str | None:
        """Every value of `name`, joined with ', ' (None if absent)."""
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None


class ServedLog:
    """The last `limit` requests served, in order (thread safe)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._items: collections.deque[ServedRequest] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()

    def append(self, item: ServedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[ServedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# --- the demo API: plain values in, plain values out ---------------------------------------


def route(method: str, target: str) -> tuple[HTTPStatus, dict[str, Any]]:
    """The demo API's answer to `method target`: a status and the JSON payload."""
    path = target.partition("?")[0]
    if method == "GET" and path == "/api/v1/public/ping":
        return HTTPStatus.OK, {"pong": True}
    if method == "GET" and path == "/api/v1/admin/stats":
        return HTTPStatus.OK, {"users": 2, "uptime_s": 42}
    if (m := _USER.match(path)) and method in ("GET", "PUT", "DELETE"):
        verb = {"GET": "read", "PUT": "updated", "DELETE": "deleted"}[method]
        return HTTPStatus.OK, {"user_id": m.group(1), "action": verb}
    if (m := _NOTES.match(path)) and method == "POST":
        return HTTPStatus.CREATED, {"user_id": m.group(1), "action": "note filed"}
    if (m := _REPORT.match(path)) and method == "GET":
        return HTTPStatus.OK, {"report_id": m.group(1), "rows": 3}
    if method == "GET" and path == "/api/v1/internal/reports":
        return HTTPStatus.OK, {"reports": 2}
    if (m := _ORDER.match(path)) and method == "GET":
        return HTTPStatus.OK, {"order_id": m.group(1), "state": "shipped"}
    return HTTPStatus.NOT_FOUND, {"error": "not_found"}


def echo_body(request: ServedRequest, payload: dict[str, Any]) -> bytes:
    """`payload` plus the identity headers and request id the upstream got."""
    identity = {h: v for h in IDENTITY_HEADERS if (v := request.header(h)) is not None}
    body = {**payload, "identity": identity, "request_id": request.header("x-request-id")}
    return json.dumps(body).encode()


# --- HTTP/1.1 over h11 ------------------------------------------------------------------------


class _BodyTooLargeError(Exception):
    pass


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _declared_length(request: h11.Request) -> int | None:
    """The body's declared length; refuses what h11 accepts but a strict server should not."""
    names = [name for name, _ in request.headers]
    # RFC 9112 section 6.3: both framings at once "ought to be handled as an error" (h11
    # lets Transfer-Encoding win); section 3.2: more than one Host is a 400.
    if b"content-length" in names and b"transfer-encoding" in names:
        raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", 400)
    if names.count(b"host") > 1:
        raise h11.RemoteProtocolError("more than one Host", 400)
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is one decimal number
    return None


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: requests in order, each read to its end, then answered."""

    served: ClassVar[ServedLog]
    max_body_bytes: ClassVar[int]

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.sock.settimeout(IDLE_TIMEOUT_S)
        # Headers and body go out in one write; no Nagle delay on a kept-alive connection.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    def handle(self) -> None:
        try:
            self._serve()
        except (OSError, h11.LocalProtocolError):
            return  # the peer went away, or timed out idle: nothing to answer
        finally:
            self._close()

    def _serve(self) -> None:
        while True:
            try:
                event = self._next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request)
                served = self._read_request(event)
            except h11.RemoteProtocolError as exc:
                self._answer_error(HTTPStatus(exc.error_status_hint))
                return
            except _BodyTooLargeError:
                self._answer_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                return
            self.served.append(served)
            self._answer(served)
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            self.conn.start_next_cycle()

    def _next_event(self) -> h11.Event:
        # PAUSED cannot happen: a cycle's events are read only until its EndOfMessage.
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Event):
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def _read_request(self, request: h11.Request) -> ServedRequest:
        declared = _declared_length(request)
        if declared is not None and declared > self.max_body_bytes:
            raise _BodyTooLargeError
        if self.conn.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[SERVER_HEADER]))
        received = 0
        while not isinstance(event := self._next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > self.max_body_bytes:  # chunked: no length to check up front
                    raise _BodyTooLargeError
        return ServedRequest(
            method=_text(request.method),
            target=_text(request.target),
            headers=tuple((_text(k), _text(v)) for k, v in request.headers),
            body_bytes=received,
        )

    def _answer(self, served: ServedRequest) -> None:
        status, payload = route(served.method, served.target)
        body = echo_body(served, payload)
        self._respond(status, body, close=False)

    def _answer_error(self, status: HTTPStatus) -> None:
        # Only while a response may still start: h11 knows (a broken request line, a body
        # too large, before or during the body).
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = json.dumps({"error": status.phrase.lower().replace(" ", "_")}).encode()
            self._respond(status, body, close=True)

    def _respond(self, status: HTTPStatus, body: bytes, *, close: bool) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            SERVER_HEADER,
        ]
        if close:
            headers.append((b"connection", b"close"))
        out = self.conn.send(h11.Response(status_code=int(status), headers=headers)) or b""
        out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out)

    def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def _close(self) -> None:
        """Close without resetting: stop writing, drop what the peer still sends, close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            dropped = 0
            while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        self.sock.close()


class DemoUpstream(BackgroundHttpServer):
    """The demo API on a background thread; `served` records every request answered."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8081, *, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.served = ServedLog()

        class Handler(_Connection):
            pass

        Handler.served = self.served
        Handler.max_body_bytes = max_body_bytes
        super().__init__(Handler, host=host, port=port)
