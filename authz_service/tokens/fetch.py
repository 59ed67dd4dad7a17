"""The HTTP edge: fetch one small document (a JWKS or an OIDC discovery document).

`Fetcher` is the port; `UrllibFetcher` the stdlib adapter, run in a worker thread so the
event loop never blocks. Its failures all become `FetchError`; HTTP error statuses are a
normal `FetchResult` so the caller decides what a 500 means.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.client import HTTPMessage, HTTPResponse
from typing import IO, Protocol
from urllib.parse import urlsplit

_ALLOWED_SCHEMES = ("http", "https")
_CHUNK = 65536


class FetchError(Exception):
    """The document could not be fetched (network, timeout, size, scheme or redirect)."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One HTTP response: status, body and headers with lower-cased names."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Fetcher(Protocol):
    """Fetch a URL with GET, within `timeout_seconds` and `max_bytes` of body."""

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult: ...


class _RefuseUnsafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a few redirects, but only to http(s), and never from https down to http."""

    max_redirections = 3

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old_scheme, new_scheme = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new_scheme not in _ALLOWED_SCHEMES or (
            old_scheme == "https" and new_scheme != old_scheme
        ):
            fp.close()
            raise FetchError(f"refused redirect from {old_scheme} to {new_scheme or 'no scheme'}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class UrllibFetcher:
    """GET with urllib in a worker thread; no environment proxies unless asked for."""

    def __init__(self, *, user_agent: str = "edgeguard-authz", use_env_proxies: bool = False):
        proxies = (
            urllib.request.ProxyHandler() if use_env_proxies else urllib.request.ProxyHandler({})
        )
        self._opener = urllib.request.build_opener(proxies, _RefuseUnsafeRedirects())
        self._user_agent = user_agent

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult:
        """Fetch `url`; raise FetchError on anything but a complete HTTP response."""
        if urlsplit(url).scheme not in _ALLOWED_SCHEMES:
            raise FetchError("only http and https URLs are fetched")
        work = asyncio.to_thread(self._fetch_blocking, url, timeout_seconds, max_bytes)
        try:
            return await asyncio.wait_for(work, timeout_seconds)
        except TimeoutError:
            raise FetchError(f"no complete response within {timeout_seconds}s") from None

    def _fetch_blocking(self, url: str, timeout: float, max_bytes: int) -> FetchResult:
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url, headers={"Accept": "application/json", "User-Agent": self._user_agent}
        )
        deadline = time.monotonic() + timeout
        try:
            response: HTTPResponse
            with self._opener.open(request, timeout=timeout) as response:
                body = _read_capped(response, max_bytes, deadline)
                return FetchResult(response.status, body, _lower(response.headers))
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:  # urllib refused to follow it (e.g. to file://)
                raise FetchError(f"refused redirect (HTTP {exc.code})") from None
            # Any other status is an answer, not a transport failure; its body is not needed.
            return FetchResult(exc.code, b"", _lower(exc.headers))
        except FetchError:
            raise
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
            raise FetchError(f"{type(exc).__name__}: {exc}") from None


def _read_capped(response: HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError("response body too slow")  # a trickling server must not pin us
        # read1: at most one socket read, so the deadline is checked between trickles.
        chunk = response.read1(min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"response body over {max_bytes} bytes")


def _lower(headers: Message) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
