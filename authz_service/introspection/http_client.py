"""The HTTP edge: POST one RFC 7662 introspection request, read the answer.

`Endpoint` is the port (tests wrap it to count calls); `HttpIntrospectionEndpoint` the
adapter: HTTP/1.1 via h11 over asyncio streams, TLS with the repo's context
(authz_service.tokens.settings.tls_context), one `asyncio.timeout` around the whole
exchange, the body capped. authz_service.jwks.http1 only sends GETs, so this module has
its own small POST. No redirects (a POST carrying a token and our secret is not
re-sent anywhere) and no proxies. Every failure becomes EndpointError, whose message
never holds the token or the secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote_plus, urlencode, urlsplit

import h11

from authz_service.tokens.settings import tls_context

_READ_CHUNK = 65536
MAX_HEAD_BYTES = 16384
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointError(Exception):
    """No usable answer: network, deadline, TLS, bad HTTP, non-200 or an oversized body."""


class Endpoint(Protocol):
    """Ask about one token; return the body of an HTTP 200 answer or raise EndpointError."""

    async def introspect(self, token: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    scheme: str
    host: str
    port: int
    path: str
    authority: str

    @classmethod
    def parse(cls, url: str) -> EndpointAddress:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("the introspection endpoint must be an absolute http(s) URL")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = host if port == _DEFAULT_PORTS[parts.scheme] else f"{host}:{port}"
        return cls(parts.scheme, parts.hostname, port, path, authority)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: both form-urlencoded, then joined with ':' and base64-encoded."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class HttpIntrospectionEndpoint:
    """POST `token=...&token_type_hint=access_token` with HTTP Basic client auth."""

    def __init__(
        self,
        *,
        url: str,
        client_id: str,
        client_secret: str,
        timeout_seconds: float,
        max_bytes: int,
        tls: ssl.SSLContext | None = None,
        user_agent: str = "edgeguard-authz",
    ) -> None:
        self._address = EndpointAddress.parse(url)
        self._authorization = basic_authorization(client_id, client_secret)
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._tls = tls if tls is not None or self._address.scheme == "http" else tls_context(None)
        self._user_agent = user_agent

    async def introspect(self, token: str) -> bytes:
        """The body of the endpoint's 200 answer; EndpointError for anything else."""
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(body)
        except TimeoutError:
            raise EndpointError(f"no complete answer within {self._timeout}s") from None
        except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
            raise EndpointError(f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, body: bytes) -> bytes:
        address = self._address
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            if address.scheme == "https":
                assert self._tls is not None
                await writer.start_tls(self._tls, server_hostname=address.host)
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            writer.write(conn.send(self._request(len(body))) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return await _read_answer(conn, reader, self._max_bytes)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.05)

    def _request(self, length: int) -> h11.Request:
        return h11.Request(
            method="POST",
            target=self._address.path,
            headers=[
                ("Host", self._address.authority),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", str(length)),
                ("Authorization", self._authorization),
                ("Accept", "application/json"),
                ("User-Agent", self._user_agent),
                ("Connection", "close"),
            ],
        )


async def _read_answer(conn: h11.Connection, reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    event = await _next_event(conn, reader)
    while isinstance(event, h11.InformationalResponse):
        event = await _next_event(conn, reader)
    if not isinstance(event, h11.Response):
        raise EndpointError(f"unexpected {type(event).__name__} before the response")
    if event.status_code != 200:
        # 401: our client credentials are wrong; 5xx: the IdP is down. Either way, no answer.
        raise EndpointError(f"HTTP {event.status_code}")
    chunks: list[bytes] = []
    size = 0
    while not isinstance(event := await _next_event(conn, reader), h11.EndOfMessage):
        if not isinstance(event, h11.Data):
            raise EndpointError(f"unexpected {type(event).__name__} in the body")
        size += len(event.data)
        if size > max_bytes:
            raise EndpointError(f"answer over {max_bytes} bytes")
        chunks.append(bytes(event.data))
    return b"".join(chunks)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(_READ_CHUNK))  # b"": the peer closed
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        raise EndpointError("the connection ended before the answer did")
    return event
