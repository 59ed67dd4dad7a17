"""One config file, loaded and compiled for the hot path: the `Engine` bundle.

`Engine` bundles everything one config produces (policy trie and CEL programs, token
verifier with its key sources and cache, response builder). A reload compiles a whole new
Engine and swaps one reference (config_holder.py); a bad new config leaves the old Engine
serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz_service.envoy_adapter import ResponseBuilder
from authz_service.instruments import FetchInstruments
from authz_service.jwks import Fetcher, ProxyConfig
from authz_service.pipeline import Authorizer
from authz_service.policy import CompiledPolicy
from authz_service.settings import AuthzSettings, load_settings
from authz_service.tokens.verifier import TokenVerifier
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    source: Path
    settings: AuthzSettings
    authorizer: Authorizer
    responses: ResponseBuilder

    async def close(self) -> None:
        await self.authorizer.verifier.close()


def compile_engine(
    settings: AuthzSettings,
    source: Path,
    *,
    clock: Clock,
    previous: Engine | None = None,
    telemetry: FetchInstruments | None = None,
    proxies: ProxyConfig | None = None,
) -> Engine:
    """Compile `settings` (raises ConfigError). Key sources of unchanged issuers are reused
    from `previous`, so a policy edit does not refetch every JWKS. `proxies` (default: none)
    carry the HTTPS_PROXY / HTTP_PROXY / NO_PROXY environment, read once at start."""
    policy = CompiledPolicy.compile(settings.policy(), source=str(source))
    reused = (
        previous.authorizer.verifier.reusable_key_sources(
            settings.issuers, config_dir=source.parent
        )
        if previous is not None
        else {}
    )
    verifier = TokenVerifier(
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
    authorizer = Authorizer(policy, verifier, cookie_names=settings.credentials.cookie_names)
    return Engine(source, settings, authorizer, ResponseBuilder(settings.identity))


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


async def load_engine(
    path: Path,
    *,
    clock: Clock,
    previous: Engine | None = None,
    telemetry: FetchInstruments | None = None,
    settings: AuthzSettings | None = None,
    proxies: ProxyConfig | None = None,
) -> Engine:
    """Load (unless `settings` were already read from `path`), compile and start an Engine."""
    settings = settings or load_settings(path)
    _warn_about_plain_http(settings)
    engine = compile_engine(
        settings, path, clock=clock, previous=previous, telemetry=telemetry, proxies=proxies
    )
    await engine.authorizer.verifier.start()
    return engine
