"""FetchingVerifier: the pure TokenVerifier wired to each trusted issuer's key source.

The I/O half of token verification. It builds one KeySource per issuer (a key file, a
JWKS URL or OIDC discovery; each remote issuer with its own HttpFetcher, trust store and
connections, so no issuer waits on another), starts and closes them, hands the verifier
their current key sets, and fetches when the verifier answers `NeedKeys`. On a config
reload, the sources of unchanged issuers pass to the next FetchingVerifier, so a policy
edit does not refetch every JWKS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from authz_service.jwks.fetch import Fetcher, HttpFetcher
from authz_service.jwks.proxies import ProxyConfig
from authz_service.jwks.remote import RemoteKeySource
from authz_service.jwks.sources import FileKeySource, KeySource
from authz_service.principal import Principal
from authz_service.tokens.errors import log_unexpected
from authz_service.tokens.jwk import KeyRing
from authz_service.tokens.settings import IssuerSettings, TokenLimits, tls_context
from authz_service.tokens.verifier import NeedKeys, TokenVerifier, VerifierStats
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)

Instrument = Callable[[str, Fetcher], Fetcher]  # (issuer, fetcher) -> wrapped fetcher


def build_key_source(
    settings: IssuerSettings,
    *,
    clock: Clock,
    fetcher: Fetcher | None = None,
    config_dir: Path | None = None,
    proxies: ProxyConfig | None = None,
) -> KeySource:
    """The KeySource an issuer's settings describe (file, URL or OIDC discovery)."""
    if settings.jwks_file is not None:
        path = _resolve(settings.jwks_file, config_dir)
        return FileKeySource(path, issuer=settings.issuer, settings=settings.jwks, clock=clock)
    return RemoteKeySource(
        issuer=settings.issuer,
        settings=settings.jwks,
        fetcher=fetcher or issuer_fetcher(settings, config_dir=config_dir, proxies=proxies),
        clock=clock,
        jwks_url=settings.jwks_url,  # None means: use discovery
        allow_insecure_http=settings.allow_insecure_http,
    )


def issuer_fetcher(
    settings: IssuerSettings, *, config_dir: Path | None = None, proxies: ProxyConfig | None
) -> HttpFetcher:
    """The HttpFetcher for one issuer's JWKS and discovery documents."""
    ca_file = None if settings.ca_file is None else _resolve(settings.ca_file, config_dir)
    return HttpFetcher(
        tls=tls_context(ca_file),
        proxies=proxies,
        allow_insecure_http=settings.allow_insecure_http,
    )


def _resolve(path: Path, config_dir: Path | None) -> Path:
    return path if path.is_absolute() or config_dir is None else config_dir / path


def _source_signature(settings: IssuerSettings, config_dir: Path | None) -> tuple[Any, ...]:
    """What a KeySource depends on; equal signatures mean a source can be reused."""
    path = None if settings.jwks_file is None else _resolve(settings.jwks_file, config_dir)
    ca_file = None if settings.ca_file is None else _resolve(settings.ca_file, config_dir)
    transport = (ca_file, settings.allow_insecure_http)
    return (settings.issuer, path, settings.jwks_url, settings.discovery, settings.jwks, transport)


class FetchingVerifier:
    """A TokenVerifier (`.verifier`, pure) and the key sources it reads and asks."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        *,
        clock: Clock,
        limits: TokenLimits = TokenLimits(),  # noqa: B008 - frozen, so sharing is safe
        cache_size: int = 10_000,
        key_sources: Mapping[str, KeySource] | None = None,
        fetcher: Fetcher | None = None,
        instrument: Instrument | None = None,
        proxies: ProxyConfig | None = None,
        config_dir: Path | None = None,
        stats: VerifierStats | None = None,
    ) -> None:
        """Remote issuers each get their own HttpFetcher (with `proxies`), unless one
        `fetcher` is given for all (tests); `instrument(issuer, fetcher)` may wrap each.
        `key_sources` (issuer -> source) are used as given, e.g. from a previous config."""
        # Built first: it refuses an issuer configured twice before any source exists.
        self.verifier = TokenVerifier(
            issuers,
            keys=self._current,
            clock=clock,
            limits=limits,
            cache_size=cache_size,
            stats=stats,
        )
        self._clock = clock
        self._config_dir = config_dir
        self._started = False
        given = key_sources or {}
        self._sources: dict[str, KeySource] = {}
        self._signatures: dict[str, tuple[Any, ...]] = {}
        for settings in issuers:
            self._sources[settings.issuer] = given.get(settings.issuer) or self._new_source(
                settings, fetcher=fetcher, instrument=instrument, proxies=proxies
            )
            self._signatures[settings.issuer] = _source_signature(settings, config_dir)

    def _new_source(
        self,
        settings: IssuerSettings,
        *,
        fetcher: Fetcher | None,
        instrument: Instrument | None,
        proxies: ProxyConfig | None,
    ) -> KeySource:
        if settings.jwks_file is None:
            fetcher = fetcher or issuer_fetcher(
                settings, config_dir=self._config_dir, proxies=proxies
            )
            if instrument is not None:
                fetcher = instrument(settings.issuer, fetcher)
        return build_key_source(
            settings, clock=self._clock, fetcher=fetcher, config_dir=self._config_dir
        )

    def _current(self, issuer: str) -> KeyRing | None:
        source = self._sources.get(issuer)
        return None if source is None else source.current()

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Load every issuer's keys and start background refreshes.

        A remote JWKS that cannot be fetched is logged and retried (its tokens fail with
        `keys_unavailable` meanwhile); a jwks_file that cannot be used raises ConfigError.
        """
        if self._started:
            return
        sources = list(self._sources.values())
        results = await asyncio.gather(*(s.start() for s in sources), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for source, result in zip(sources, results, strict=True):
                if not isinstance(result, BaseException):
                    await source.close()
            raise failures[0]
        self._started = True

    async def close(self) -> None:
        """Release the key sources (stopping their background tasks if no one else uses them)."""
        if not self._started:
            return
        self._started = False
        self.verifier.clear_cache()
        for source in self._sources.values():
            await source.close()

    async def verify(self, token: str) -> Principal:
        """Verify a compact JWS bearer token, fetching keys if it needs them; raise
        InvalidToken (and nothing else) if refused."""
        found = self.verifier.verify_now(token)
        if isinstance(found, NeedKeys):
            await self.fetch_keys(found)
            return self.verifier.verify_fetched(token)
        return found

    async def fetch_keys(self, need: NeedKeys) -> None:
        """Refetch `need.issuer`'s keys (gated and shared by its key source), waiting
        `need.wait_s` at most: past it the Check goes on with the keys it has, while the
        fetch (shielded in the source) finishes in the background for later Checks. A
        failure is logged, never raised: the keys there are then decide."""
        source = self._sources.get(need.issuer)
        if source is None:
            return
        try:
            async with asyncio.timeout(need.wait_s):
                await source.refresh_for_unknown_kid(need.kid)
        except TimeoutError:
            return
        except Exception as exc:
            log_unexpected(log, "key fetch for a token failed unexpectedly", exc)

    def key_sources(self) -> Mapping[str, KeySource]:
        """Issuer -> KeySource, e.g. to hand unchanged sources to the next verifier."""
        return MappingProxyType(self._sources)

    def issuers_without_keys(self) -> dict[str, str]:
        """Issuer -> why it has no usable key set, for every issuer that has none now."""
        return {
            name: source.last_error() or "no key set loaded yet"
            for name, source in self._sources.items()
            if source.current() is None
        }

    def reusable_key_sources(
        self, issuers: Sequence[IssuerSettings], *, config_dir: Path | None = None
    ) -> dict[str, KeySource]:
        """The sources a verifier for `issuers` can take over from this one (same issuer and
        key settings), for `FetchingVerifier(issuers, key_sources=...)` on a reload. The
        new one's start() and this one's close() then hand the source over."""
        return {
            settings.issuer: self._sources[settings.issuer]
            for settings in issuers
            if self._signatures.get(settings.issuer) == _source_signature(settings, config_dir)
        }
