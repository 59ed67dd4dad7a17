"""The HTTP edge: fetch one small document (a JWKS or an OIDC discovery document).

`Fetcher` is the port; `HttpFetcher` the adapter: HTTP/1.1 (h11, see http1.py) over asyncio
streams. One `asyncio.timeout` bounds a whole fetch (connect, proxy CONNECT, TLS handshake,
redirects, every byte of the body), so an IdP that trickles a byte a second is cut off at
the deadline, and no thread is pinned meanwhile: issuers share nothing but the event loop,
so one slow IdP cannot hold up another's refresh. (The old urllib fetcher ran in the
default thread pool, where a few trickling IdPs starved everyone.) One caveat: resolving a
host NAME uses the loop's getaddrinfo thread; the fetch still ends at its deadline, but a
hung resolver keeps that thread until the system resolver gives up. IP literals and
proxied URLs (the proxy resolves) need no lookup here.

Failures all become `FetchError`; an HTTP error status is a normal `FetchResult` (with an
empty body) so the caller decides what a 500 means.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from authz_service.jwks import http1
from authz_service.jwks.proxies import Proxy, ProxyConfig
from authz_service.tokens.settings import insecure_http, tls_context

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int], Awaitable[Streams]]


class FetchError(Exception):
    """The document could not be fetched (network, deadline, size, scheme or redirect)."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One HTTP response: status, body and headers with lower-cased names."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Fetcher(Protocol):
    """Fetch a URL with GET, within `timeout_seconds` in all and `max_bytes` of body."""

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult: ...


async def open_tcp(host: str, port: int) -> Streams:
    """The default Connector: a plain TCP connection."""
    return await asyncio.open_connection(host, port)


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # origin-form: path and query

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise FetchError("only http and https URLs (absolute, with a host) are fetched")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise FetchError("the URL has an invalid port") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def connect_authority(self) -> str:  # CONNECT always names the port (RFC 9110 §9.3.6)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class HttpFetcher:
    """GET over HTTP/1.1 on asyncio streams: TLS, proxies, redirects, one deadline."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        proxies: ProxyConfig | None = None,
        allow_insecure_http: bool = False,
        user_agent: str = "edgeguard-authz",
        connect: Connector = open_tcp,
    ) -> None:
        """`tls` defaults to the system trust store; `proxies` to none (the service passes
        `ProxyConfig.from_env()`); `allow_insecure_http` lets redirects lead to plain http
        off loopback; `connect` opens TCP connections (tests map names to loopback)."""
        self._tls = tls or tls_context(None)
        self._proxies = proxies or ProxyConfig()
        self._allow_insecure_http = allow_insecure_http
        self._user_agent = user_agent
        self._connect = connect

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult:
        """Fetch `url`; raise FetchError on anything but a complete HTTP response."""
        target = self._checked(url, previous=None)
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self._follow(target, url, max_bytes)
        except TimeoutError:
            raise FetchError(f"no complete response within {timeout_seconds}s") from None

    async def _follow(self, target: _Target, url: str, max_bytes: int) -> FetchResult:
        for _ in range(MAX_REDIRECTS + 1):
            result = await self._once(target, max_bytes)
            location = result.headers.get("location")
            if result.status not in _REDIRECTS or location is None:
                return result
            url = urljoin(url, location)
            target = self._checked(url, previous=target)
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _checked(self, url: str, *, previous: _Target | None) -> _Target:
        try:
            target = _Target.parse(url)
        except FetchError:
            if previous is None:
                raise
            raise FetchError("refused redirect to a URL that is not http(s)") from None
        if previous is not None and previous.scheme == "https" and target.scheme != "https":
            raise FetchError("refused redirect from https to http")
        if insecure_http(url) and not self._allow_insecure_http:
            raise FetchError("refused plain http to a host that is not loopback")
        return target

    async def _once(self, target: _Target, max_bytes: int) -> FetchResult:
        proxy = self._proxies.for_target(target.scheme, target.host)
        try:
            reader, writer = await self._open(target, proxy)
        except (OSError, ssl.SSLError, http1.ProtocolError) as exc:
            raise FetchError(_describe(exc)) from None
        try:
            head, body = await http1.request(
                reader,
                writer,
                target=self._request_target(target, proxy),
                headers=self._headers(target, proxy),
                max_bytes=max_bytes,
            )
        except (OSError, ssl.SSLError, http1.ProtocolError) as exc:
            raise FetchError(_describe(exc)) from None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                # closing a TLS stream waits for the peer's close_notify; the deadline
                # above still bounds it, and a peer that never answers is not our problem
                await asyncio.wait_for(writer.wait_closed(), 0.05)
        return FetchResult(head.status, body, head.headers)

    async def _open(self, target: _Target, proxy: Proxy | None) -> Streams:
        host, port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
        reader, writer = await self._connect(host, port)
        try:
            if target.scheme == "https":
                if proxy is not None:
                    await http1.tunnel(
                        reader,
                        writer,
                        authority=target.connect_authority,
                        authorization=proxy.authorization,
                    )
                await writer.start_tls(self._tls, server_hostname=target.host)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    @staticmethod
    def _request_target(target: _Target, proxy: Proxy | None) -> str:
        if proxy is None or target.scheme == "https":
            return target.path  # direct, or inside a CONNECT tunnel: origin-form
        return f"http://{target.authority}{target.path}"  # to a forward proxy: absolute-form

    def _headers(self, target: _Target, proxy: Proxy | None) -> list[tuple[str, str]]:
        headers = [
            ("Host", target.authority),
            ("Accept", "application/json"),
            ("User-Agent", self._user_agent),
            ("Connection", "close"),
        ]
        if proxy is not None and target.scheme == "http" and proxy.authorization is not None:
            headers.append(("Proxy-Authorization", proxy.authorization))
        return headers


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, http1.ProtocolError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
