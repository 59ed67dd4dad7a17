"""A JWKS fetched over HTTP, from a fixed URL or found by OIDC discovery.

Lifecycle (ARCHITECTURE §5a):
  * one fetch at start; a failure there is logged, never raised, and retried;
  * a background task refreshes before the TTL runs out (TTL from `Cache-Control: max-age`
    clamped to [min_ttl, max_ttl], else `ttl_seconds`), or `retry_seconds` after a failure;
  * an unknown `kid` triggers a refetch when the UnknownKidGate allows it (tokens/refetch.py: a
    short minimum interval, a per-minute budget, kids a refetch showed absent remembered),
    and every concurrent caller shares the one fetch in flight;
  * a failure of any kind (network, deadline, non-200, not JSON, no usable key) keeps the
    last good key set; a successful fetch replaces it whole, so removed keys are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from authz_service.jwks.fetch import Fetcher, FetchError, FetchResult
from authz_service.tokens.encoding import loads_strict
from authz_service.tokens.jwk import KeyRing, load_key_ring
from authz_service.tokens.refetch import RefetchPolicy, UnknownKidGate
from authz_service.tokens.settings import JwksSettings, check_transport
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/openid-configuration"  # OIDC Discovery 1.0 §4
REFRESH_AT = 0.9  # refresh at 90% of the TTL, so the set is renewed before it goes stale
_SHOWN = 200  # characters of an IdP-supplied value quoted in a log line


def ttl_from_headers(headers: Mapping[str, str], settings: JwksSettings) -> float:
    """The key set's lifetime from Cache-Control (RFC 9111 §5.2.2), clamped to the bounds.

    `no-store`/`no-cache` mean "revalidate often", which here is the minimum TTL.
    """
    ttl = settings.ttl_seconds
    for directive in headers.get("cache-control", "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return settings.min_ttl_seconds
        if name == "max-age" and value.strip('"').isdigit():
            ttl = float(value.strip('"'))
    return min(max(ttl, settings.min_ttl_seconds), settings.max_ttl_seconds)


class RemoteKeySource:
    """Keys from `jwks_url`, or (when it is None) from the issuer's discovery document."""

    def __init__(
        self,
        *,
        issuer: str,
        settings: JwksSettings,
        fetcher: Fetcher,
        clock: Clock,
        jwks_url: str | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self._issuer = issuer
        self._settings = settings
        self._fetcher = fetcher
        self._fixed_url = jwks_url
        self._allow_insecure_http = allow_insecure_http
        self._discovered_url: str | None = None
        self._ring: KeyRing | None = None
        self._last_error: str | None = None
        self._gate = UnknownKidGate(clock, RefetchPolicy.from_settings(settings))
        self._next_delay = settings.retry_seconds
        self._inflight: asyncio.Task[bool] | None = None
        self._background: asyncio.Task[None] | None = None
        self._users = 0

    async def start(self) -> None:
        """First fetch (failures logged, not raised) and the background refresh task."""
        self._users += 1
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._run())
        if self._ring is None:
            await self.refresh()  # joins the background task's first fetch: one request

    async def close(self) -> None:
        """Drop one user; the last one cancels the background task and any fetch."""
        self._users = max(self._users - 1, 0)
        if self._users > 0:
            return
        for task in (self._background, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._background = self._inflight = None

    def current(self) -> KeyRing | None:
        """The last good key set, or None if no fetch ever succeeded."""
        return self._ring

    def last_error(self) -> str | None:
        """Why the last fetch failed (None after a success), for health and logs."""
        return self._last_error

    async def refresh_for_unknown_kid(self, kid: str | None = None) -> KeyRing | None:
        """Refetch if the gate allows it, or join the fetch in flight; return current().

        A kid that a successful refetch did not bring is remembered as absent, so repeats
        of it cost no further fetches for a while (new kids still may)."""
        if self._inflight is None and not self._gate.allow(kid):
            return self._ring
        installed = await self.refresh()
        ring = self._ring
        if installed and kid is not None and ring is not None and not ring.has_kid(kid):
            self._gate.remember_absent(kid)
        return ring

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch in flight; True if a new key set was installed."""
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._load())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        task = self._inflight
        try:
            # shield: a caller cancelled mid-wait must not cancel the fetch others wait on.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                return False  # the source was closed under us, not this caller cancelled
            raise

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._next_delay)

    async def _load(self) -> bool:
        try:
            result = await self._fetch(await self._jwks_url())
            ring, ttl = self._accept(result.status, result.body, result.headers)
        except (FetchError, ValueError) as exc:
            return self._failed(str(exc))
        except Exception as exc:  # an injected Fetcher may raise anything; stay up
            return self._failed(f"{type(exc).__name__}: {exc}")
        self._ring = ring
        self._last_error = None
        self._next_delay = ttl * REFRESH_AT
        log.info(
            "JWKS loaded", extra={"fields": {"issuer": self._issuer, "keys": len(ring), "ttl": ttl}}
        )
        return True

    def _accept(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> tuple[KeyRing, float]:
        if status != 200:
            raise ValueError(f"JWKS answered HTTP {status}")
        ring = load_key_ring(loads_strict(body), origin=self._issuer)
        if not ring:
            raise ValueError("the JWKS holds no usable key")
        return ring, ttl_from_headers(headers, self._settings)

    def _failed(self, error: str) -> bool:
        self._next_delay = self._settings.retry_seconds
        self._discovered_url = None  # the jwks_uri may have moved: discover again next time
        self._last_error = error
        fields: dict[str, object] = {"issuer": self._issuer, "error": error}
        if self._ring is None:
            fields["retry_s"] = self._settings.retry_seconds
            message = "JWKS fetch failed and no key set was ever loaded; retrying"
        else:
            fields["keys"] = len(self._ring)
            message = "JWKS refresh failed; keeping the last good key set"
        log.warning(message, extra={"fields": fields})
        return False

    async def _fetch(self, url: str) -> FetchResult:
        """One document (the JWKS or the discovery document) within the issuer's limits."""
        return await self._fetcher.fetch(
            url,
            timeout_seconds=self._settings.fetch_timeout_seconds,
            max_bytes=self._settings.max_bytes,
        )

    async def _jwks_url(self) -> str:
        if self._fixed_url is not None:
            return self._fixed_url
        if self._discovered_url is None:
            self._discovered_url = await self._discover()
        return self._discovered_url

    async def _discover(self) -> str:
        # OIDC Discovery §4: "any terminating / MUST be removed before appending".
        url = self._issuer.rstrip("/") + WELL_KNOWN
        result = await self._fetch(url)
        if result.status != 200:
            raise ValueError(f"discovery answered HTTP {result.status}")
        document = loads_strict(result.body)
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not a JSON object")
        # OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer
        # URL that was used as the prefix" - otherwise another issuer's keys would be used.
        named = document.get("issuer")
        if named != self._issuer:
            raise ValueError(
                f"the discovery document at {url} names issuer {_shown(named)}, but the "
                f"configured issuer is {self._issuer!r}; they must be identical (a trailing "
                "slash, scheme, port or case counts)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        return check_transport(
            jwks_uri, "the discovered jwks_uri", allow_insecure_http=self._allow_insecure_http
        )


def _shown(value: object) -> str:
    """An IdP-supplied value for a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
