"""TokenVerifier: a bearer token string in, a Principal or InvalidToken out.

The pipeline reads like RFC 8725 §3: caps and shape (compact.py) -> issuer chosen by the
unverified `iss` -> `alg` against that issuer's allow-list -> `typ` -> key by `kid` and
key type -> one signature check -> claims (claims.py) -> Principal, cached until it
expires or its key leaves the JWKS.

The pipeline itself is synchronous and does no I/O (`verify_now`), like h11: when the
issuer has no key set yet, or the token's kid is not in it, it answers `NeedKeys(issuer,
kid)` instead of waiting. The caller then has the keys fetched (`fetch_keys`, on the event
loop, at most the issuer's `check_wait_seconds`) and verifies once more with whatever
keys there are then (`verify_fetched`). `verify` does the three steps for an asyncio
caller; a handler on a worker thread does the same with the fetch handed to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from joserfc.jwa import JWSAlgModel

from authz_service.jwks.fetch import Fetcher, HttpFetcher
from authz_service.jwks.proxies import ProxyConfig
from authz_service.jwks.remote import RemoteKeySource
from authz_service.jwks.sources import FileKeySource, KeySource
from authz_service.principal import Principal
from authz_service.tokens.algorithms import ALGORITHMS, allow_list
from authz_service.tokens.cache import CachedToken, VerifiedTokenCache
from authz_service.tokens.claims import ClaimRules, build_principal, check_typ
from authz_service.tokens.compact import ParsedJws, parse_compact
from authz_service.tokens.errors import InvalidToken
from authz_service.tokens.jwk import KeyRing, VerificationKey
from authz_service.tokens.settings import IssuerSettings, TokenLimits, tls_context
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)


def build_key_source(
    settings: IssuerSettings,
    *,
    clock: Clock,
    fetcher: Fetcher | None = None,
    config_dir: Path | None = None,
    proxies: ProxyConfig | None = None,
) -> KeySource:
    """The KeySource an issuer's settings describe (file, URL or OIDC discovery).

    Without a `fetcher`, the issuer gets its own HttpFetcher: its own trust store
    (`ca_file`), the given proxies, and its own connections, so no issuer waits on another."""
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


@dataclass(frozen=True, slots=True)
class NeedKeys:
    """The token's issuer has no key set yet, or the set lacks the token's kid: fetch
    (`TokenVerifier.fetch_keys`), waiting `wait_s` at most, then verify again."""

    issuer: str
    kid: str | None
    wait_s: float  # the issuer's jwks.check_wait_seconds


@dataclass(slots=True)
class VerifierStats:
    """Plain counters a metrics layer can read; shared across reloads by the caller."""

    cache_hits: int = 0
    cache_misses: int = 0


Instrument = Callable[[str, Fetcher], Fetcher]  # (issuer, fetcher) -> wrapped fetcher


@dataclass(frozen=True, slots=True)
class _Issuer:
    signature: tuple[Any, ...]
    rules: ClaimRules
    algorithms: frozenset[str]
    source: KeySource
    check_wait: float  # the longest one Check waits for this issuer's keys


class TokenVerifier:
    """Verifies compact JWS bearer tokens for a fixed set of trusted issuers."""

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
        `fetcher` is given for all (tests); `instrument(issuer, fetcher)` may wrap each."""
        self._clock = clock
        self.stats = stats or VerifierStats()
        self._limits = limits
        self._cache = VerifiedTokenCache(cache_size)
        self._config_dir = config_dir
        self._started = False
        given = key_sources or {}
        self._issuers: dict[str, _Issuer] = {}
        for settings in issuers:
            if settings.issuer in self._issuers:
                raise ValueError(f"issuer {settings.issuer!r} is configured twice")
            source = given.get(settings.issuer) or self._new_source(
                settings, fetcher=fetcher, instrument=instrument, proxies=proxies
            )
            self._issuers[settings.issuer] = _Issuer(
                signature=_source_signature(settings, config_dir),
                rules=ClaimRules.from_settings(settings),
                algorithms=allow_list(settings.algorithms),
                source=source,
                check_wait=settings.jwks.check_wait_seconds,
            )

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

    async def start(self) -> None:
        """Load every issuer's keys and start background refreshes.

        A remote JWKS that cannot be fetched is logged and retried (its tokens fail with
        `keys_unavailable` meanwhile); a jwks_file that cannot be used raises ConfigError.
        """
        if self._started:
            return
        sources = [issuer.source for issuer in self._issuers.values()]
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
        self._cache.clear()
        for issuer in self._issuers.values():
            await issuer.source.close()

    def key_sources(self) -> Mapping[str, KeySource]:
        """Issuer -> KeySource, e.g. to hand unchanged sources to the next verifier."""
        return MappingProxyType({name: issuer.source for name, issuer in self._issuers.items()})

    def issuers_without_keys(self) -> dict[str, str]:
        """Issuer -> why it has no usable key set, for every issuer that has none now."""
        missing: dict[str, str] = {}
        for name, issuer in self._issuers.items():
            if issuer.source.current() is None:
                missing[name] = issuer.source.last_error() or "no key set loaded yet"
        return missing

    def reusable_key_sources(
        self, issuers: Sequence[IssuerSettings], *, config_dir: Path | None = None
    ) -> dict[str, KeySource]:
        """The sources a verifier for `issuers` can take over from this one (same issuer and
        key settings), for `TokenVerifier(issuers, key_sources=...)` on a config reload.
        The new verifier's start() and this one's close() then hand the source over."""
        reusable: dict[str, KeySource] = {}
        for settings in issuers:
            mine = self._issuers.get(settings.issuer)
            if mine is not None and mine.signature == _source_signature(settings, config_dir):
                reusable[settings.issuer] = mine.source
        return reusable

    async def verify(self, token: str) -> Principal:
        """Verify a compact JWS bearer token, fetching keys if it needs them; raise
        InvalidToken (and nothing else) if refused."""
        found = self.verify_now(token)
        if isinstance(found, NeedKeys):
            await self.fetch_keys(found)
            return self.verify_fetched(token)
        return found

    def verify_now(self, token: str) -> Principal | NeedKeys:
        """Verify with the keys known now: the Principal, or what must be fetched first.
        Raises InvalidToken (and nothing else) if refused. No I/O, no waiting."""
        return self._verify(token, may_need_keys=True)

    def verify_fetched(self, token: str) -> Principal:
        """Verify after `fetch_keys`, with the keys there are now (none, or still not the
        token's kid: the token is refused). Raises InvalidToken if refused."""
        found = self._verify(token, may_need_keys=False)
        if isinstance(found, NeedKeys):  # not reached: _verify asks only when allowed to
            raise InvalidToken("keys_unavailable")
        return found

    async def fetch_keys(self, need: NeedKeys) -> None:
        """Refetch `need.issuer`'s keys (gated and shared by its key source), waiting
        `need.wait_s` at most: past it the Check goes on with the keys it has, while the
        fetch (shielded in the source) finishes in the background for later Checks. A
        failure is logged, never raised: the keys there are then decide."""
        issuer = self._issuers.get(need.issuer)
        if issuer is None:
            return
        try:
            async with asyncio.timeout(need.wait_s):
                await issuer.source.refresh_for_unknown_kid(need.kid)
        except TimeoutError:
            return
        except Exception as exc:
            _log_unexpected("key fetch for a token failed unexpectedly", exc)

    def _verify(self, token: str, *, may_need_keys: bool) -> Principal | NeedKeys:
        try:
            cached = self._from_cache(token)
            if cached is not None:
                return cached
            parsed = parse_compact(token, self._limits)
            issuer = self._issuer_for(parsed)
            ring = issuer.source.current()
            if ring is None or (parsed.kid is not None and not ring.has_kid(parsed.kid)):
                if may_need_keys:
                    return NeedKeys(issuer.rules.issuer, parsed.kid, issuer.check_wait)
                if ring is None:
                    raise InvalidToken("keys_unavailable")
            key = _check_signature(parsed, ring)
            return self._admit(token, parsed, issuer, key)
        except InvalidToken:
            raise
        except Exception as exc:
            _log_unexpected("token verification failed unexpectedly", exc)
            raise InvalidToken("internal_error") from None

    def _from_cache(self, token: str) -> Principal | None:
        if not isinstance(token, str):
            raise InvalidToken("malformed")
        if len(token) > self._limits.max_token_bytes:
            raise InvalidToken("oversized")  # before hashing it for the cache lookup
        cached = self._cache.get(token)
        if cached is None:
            self.stats.cache_misses += 1
            return None
        now = self._clock.now()
        if cached.not_before <= now < cached.not_after:
            ring = self._issuers[cached.issuer].source.current()
            if ring is not None and cached.key_identity in ring.identities:
                self.stats.cache_hits += 1
                return cached.principal
        self.stats.cache_misses += 1
        # Expired, not yet valid again (clock stepped back) or key gone: decide afresh.
        self._cache.discard(token)
        return None

    def _issuer_for(self, parsed: ParsedJws) -> _Issuer:
        # Chosen by the unverified iss; that issuer's keys must then verify the token, and
        # claims.check_identity compares iss again once the signature is known good.
        iss = parsed.claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken("unknown_issuer")
        if parsed.alg not in issuer.algorithms:
            raise InvalidToken("alg_not_allowed")  # RFC 8725 §3.1; none/HS* are never listed
        check_typ(parsed.header, issuer.rules)
        return issuer

    def _admit(
        self, token: str, parsed: ParsedJws, issuer: _Issuer, key: VerificationKey
    ) -> Principal:
        principal, validity = build_principal(
            parsed.claims, issuer.rules, key_id=key.kid, algorithm=parsed.alg, now=self._clock.now()
        )
        entry = CachedToken(
            principal, issuer.rules.issuer, key.identity, validity.not_before, validity.not_after
        )
        self._cache.put(token, entry)
        return principal


def _log_unexpected(message: str, exc: Exception) -> None:
    """Fail closed. Log where, never the message (it could quote token content)."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    at = f"{where.filename}:{where.lineno}"
    log.error(message, extra={"fields": {"exc_type": type(exc).__name__, "at": at}})


def _check_signature(parsed: ParsedJws, ring: KeyRing) -> VerificationKey:
    """The key (chosen by kid, else by key type) whose signature check passes."""
    kid = parsed.kid
    if kid is not None and not ring.has_kid(kid):
        raise InvalidToken("unknown_key")
    candidates = ring.candidates(parsed.alg, kid)
    if not candidates:
        raise InvalidToken("alg_key_mismatch" if kid is not None else "unknown_key")
    model = ALGORITHMS[parsed.alg].model
    for key in candidates:
        if _signature_ok(model, parsed, key):
            return key
    raise InvalidToken("bad_signature")


def _signature_ok(model: JWSAlgModel, parsed: ParsedJws, key: VerificationKey) -> bool:
    try:
        return bool(model.verify(parsed.signing_input, parsed.signature, key.jwk))
    except Exception:  # e.g. a signature of the wrong length for the curve: not valid
        return False
