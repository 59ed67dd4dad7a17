"""One HTTP/1.1 exchange over asyncio streams, with h11 doing the protocol.

h11 is sans-I/O (bytes in, events out), so this module only moves bytes between it and a
StreamReader/StreamWriter. It has no timeouts of its own: the caller bounds the whole
exchange with one `asyncio.timeout`, so a peer that trickles bytes cannot stretch it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import h11

_READ_CHUNK = 65536
# Status line plus headers: a JWKS or discovery answer needs a few hundred bytes. h11
# refuses (RemoteProtocolError) a head larger than this instead of buffering it.
MAX_HEAD_BYTES = 16384


class ProtocolError(Exception):
    """The peer did not speak HTTP/1.1 as expected, closed early, or sent too much."""


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status and headers (names lower-cased, repeats joined with ', ')."""

    status: int
    headers: dict[str, str]


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    target: str,
    headers: Sequence[tuple[str, str]],
    max_bytes: int,
) -> tuple[Head, bytes]:
    """Send one GET and read the answer. The body (capped at `max_bytes`) is read only for
    a 2xx: an error page or a redirect's body is never needed, so it is never waited for."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    await _send(conn, writer, h11.Request(method="GET", target=target, headers=list(headers)))
    head = await _read_head(conn, reader)
    if not 200 <= head.status < 300:
        return head, b""
    declared = head.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ProtocolError(f"response body over {max_bytes} bytes")
    return head, await _read_body(conn, reader, max_bytes)


async def tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    authority: str,
    authorization: str | None,
) -> None:
    """Ask an HTTP proxy for a CONNECT tunnel to `authority` (RFC 9110 §9.3.6)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    headers = [("Host", authority)]
    if authorization is not None:
        headers.append(("Proxy-Authorization", authorization))
    await _send(conn, writer, h11.Request(method="CONNECT", target=authority, headers=headers))
    head = await _read_head(conn, reader)
    if not 200 <= head.status < 300:
        raise ProtocolError(f"the proxy refused CONNECT with HTTP {head.status}")
    leftover, _ = conn.trailing_data
    if leftover:
        # TLS starts with our ClientHello; a proxy talking first is not a clean tunnel.
        raise ProtocolError("the proxy sent data before the TLS handshake")


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: h11.Request) -> None:
    writer.write(conn.send(event) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def _read_head(conn: h11.Connection, reader: asyncio.StreamReader) -> Head:
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.InformationalResponse):
            continue  # 1xx: the real answer follows
        if isinstance(event, h11.Response):
            return Head(event.status_code, _headers(event.headers))
        raise ProtocolError(f"unexpected {type(event).__name__} before the response")


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        if not isinstance(event, h11.Data):
            raise ProtocolError(f"unexpected {type(event).__name__} in the body")
        size += len(event.data)
        if size > max_bytes:
            raise ProtocolError(f"response body over {max_bytes} bytes")
        chunks.append(bytes(event.data))


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"bad HTTP from the server: {exc}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(_READ_CHUNK)
            try:
                conn.receive_data(data)  # b"" tells h11 the peer closed
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(f"bad HTTP from the server: {exc}") from None
            continue
        if event is h11.PAUSED:
            raise ProtocolError("the connection switched protocols unexpectedly")
        if isinstance(event, h11.ConnectionClosed):
            raise ProtocolError("the server closed the connection before the response ended")
        return event


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
