"""One config file, loaded and compiled for the hot path: `CompiledConfig`.

`CompiledConfig` bundles everything one config produces (policy trie and CEL programs,
the token verifier with its key sources and cache, the response builder). A reload
compiles a whole new one and swaps one reference (config_holder.py); a bad new config
leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from authz_service.apikeys.fetching import FetchingApiKeyVerifier
from authz_service.apikeys.settings import load_peppers
from authz_service.apikeys.verifier import API_KEY_ALGORITHM
from authz_service.envoy_adapter import ResponseBuilder
from authz_service.instruments import FetchInstruments
from authz_service.introspection.fetching import FetchingIntrospectionVerifier
from authz_service.jwks import Fetcher, ProxyConfig
from authz_service.jwks.verification import FetchingVerifier
from authz_service.pipeline import (
    NEEDS,
    Authorizer,
    Decision,
    Need,
    NeedIntrospection,
    NeedKey,
    RevocationCheck,
)
from authz_service.policy import RequestFacts, RuleSets
from authz_service.principal import Principal
from authz_service.settings import AuthzSettings, load_settings
from sidecar_runtime.clock import Clock
from sidecar_runtime.errors import ConfigError

log = logging.getLogger(__name__)

# The longest one Check waits for an API key's record from Redis (a cache miss).
API_KEY_FETCH_WAIT_S = 0.25
# The longest one Check waits for an introspection answer; Envoy's ext_authz timeout is
# the real bound (docs/introspection.md), a slower endpoint fills the cache for later.
INTROSPECTION_WAIT_S = 0.15


@dataclass(frozen=True)
class CompiledConfig:
    source: Path
    settings: AuthzSettings
    authorizer: Authorizer  # pure: decides with the keys known now
    tokens: FetchingVerifier  # the authorizer's verifier and the key sources it reads
    responses: ResponseBuilder
    api_keys: FetchingApiKeyVerifier | None = None  # the API keys' cache and Redis
    introspection: FetchingIntrospectionVerifier | None = None  # opaque tokens' endpoint

    async def fetch(self, need: Need) -> None:
        """Fetch what the pipeline said it needs: an issuer's keys, an API key's record or
        an opaque token's introspection."""
        if isinstance(need, NeedKey):
            if self.api_keys is not None:
                await self.api_keys.fetch(need)
        elif isinstance(need, NeedIntrospection):
            if self.introspection is not None:
                await self.introspection.fetch(need)
        else:
            await self.tokens.fetch_keys(need)

    def fetch_wait(self, need: Need) -> float:
        """How long one Check waits for `fetch(need)`; past it the fetch goes on in the
        background and fills the cache for the next request."""
        if isinstance(need, NeedKey):
            return API_KEY_FETCH_WAIT_S
        if isinstance(need, NeedIntrospection):
            settings = self.settings.introspection
            return (
                INTROSPECTION_WAIT_S
                if settings is None
                else min(settings.timeout_seconds, INTROSPECTION_WAIT_S)
            )
        return need.wait_s

    def key_used(self, decision: Decision) -> Principal | None:
        """The principal of an API key that `decision` was made for, else None."""
        principal = decision.principal
        if self.api_keys is None or principal is None:
            return None
        return principal if principal.algorithm == API_KEY_ALGORITHM else None

    def note_use(self, principal: Principal) -> None:
        """On the event loop: record an API key's use (`last_used`, throttled)."""
        if self.api_keys is not None:
            self.api_keys.note_use(principal)

    async def decide(
        self, facts: RequestFacts, *, authorization: Sequence[str], cookie: str
    ) -> Decision:
        """Decide one request on the event loop, fetching keys if its token needs them."""
        decided = self.authorizer.decide_now(facts, authorization=authorization, cookie=cookie)
        if isinstance(decided, NEEDS):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.fetch_wait(decided)):
                    await self.fetch(decided)
            decided = self.authorizer.decide_fetched(
                facts, authorization=authorization, cookie=cookie
            )
        used = self.key_used(decided)
        if used is not None:
            self.note_use(used)
        return decided

    async def start(self) -> None:
        await self.tokens.start()
        if self.api_keys is not None:
            await self.api_keys.start()

    async def close(self) -> None:
        await self.tokens.close()
        if self.api_keys is not None:
            await self.api_keys.close()
        if self.introspection is not None:
            await self.introspection.close()


def compile_config(
    settings: AuthzSettings,
    source: Path,
    *,
    clock: Clock,
    previous: CompiledConfig | None = None,
    telemetry: FetchInstruments | None = None,
    proxies: ProxyConfig | None = None,
    revoked: RevocationCheck | None = None,
) -> CompiledConfig:
    """Compile `settings` (raises ConfigError). Key sources of unchanged issuers are reused
    from `previous`, so a policy edit does not refetch every JWKS. `proxies` (default: none)
    carry the HTTPS_PROXY / HTTP_PROXY / NO_PROXY environment, read once at start."""
    rule_sets = RuleSets.compile(settings.policy(), settings.rule_sets, source=str(source))
    reused = (
        previous.tokens.reusable_key_sources(settings.issuers, config_dir=source.parent)
        if previous is not None
        else {}
    )
    tokens = FetchingVerifier(
        settings.issuers,
        clock=clock,
        limits=settings.limits,
        cache_size=settings.verified_token_cache_size,
        key_sources=reused or None,
        config_dir=source.parent,
        stats=telemetry.verifier_stats if telemetry else None,
        instrument=_instrumenter(telemetry),
        proxies=proxies,
    )
    api_keys = None
    if settings.api_keys is not None:
        api_keys = FetchingApiKeyVerifier.from_settings(
            settings.api_keys,
            peppers=load_peppers(settings.api_keys, source),
            clock=clock,
            stats=telemetry.api_key_stats if telemetry else None,
        )
    introspection = None
    if settings.introspection is not None:
        try:
            introspection = FetchingIntrospectionVerifier.from_settings(
                settings.introspection, clock=clock
            )
        except ValueError as exc:  # its client secret cannot be read
            raise ConfigError(source, "introspection", str(exc)) from None
    authorizer = Authorizer(
        rule_sets,
        tokens.verifier,
        cookie_names=settings.credentials.cookie_names,
        mtls=settings.mtls,
        revoked=revoked,
        api_keys=None if api_keys is None else api_keys.verifier,
        api_key_header=_own_header(settings),
        introspection=None if introspection is None else introspection.verifier,
    )
    responses = ResponseBuilder(settings.identity)
    return CompiledConfig(source, settings, authorizer, tokens, responses, api_keys, introspection)


def _own_header(settings: AuthzSettings) -> str | None:
    """The API keys' own header, or None when they come as `Authorization: ApiKey`."""
    if settings.api_keys is None or settings.api_keys.header == "authorization":
        return None
    return settings.api_keys.header


def _instrumenter(
    telemetry: FetchInstruments | None,
) -> Callable[[str, Fetcher], Fetcher] | None:
    return None if telemetry is None else telemetry.instrument_fetcher


def _warn_about_plain_http(settings: AuthzSettings) -> None:
    for issuer in settings.issuers:
        if issuer.allow_insecure_http:
            log.warning(
                "allow_insecure_http is on: this issuer's keys may be fetched over plain "
                "http, where anyone on the network path can replace them",
                extra={"fields": {"issuer": issuer.issuer, "jwks_url": issuer.jwks_url}},
            )


async def load_compiled_config(
    path: Path,
    *,
    clock: Clock,
    previous: CompiledConfig | None = None,
    telemetry: FetchInstruments | None = None,
    settings: AuthzSettings | None = None,
    proxies: ProxyConfig | None = None,
    revoked: RevocationCheck | None = None,
) -> CompiledConfig:
    """Load (unless `settings` were already read from `path`), compile and start a config."""
    settings = settings or load_settings(path)
    _warn_about_plain_http(settings)
    compiled = compile_config(
        settings,
        path,
        clock=clock,
        previous=previous,
        telemetry=telemetry,
        proxies=proxies,
        revoked=revoked,
    )
    await compiled.start()
    return compiled
