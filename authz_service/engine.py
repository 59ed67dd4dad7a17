"""A loaded config, compiled for the hot path, and the holder that swaps it on reload.

`Engine` bundles everything one config produces (policy trie and CEL programs, token
verifier with its key sources and cache, response builder). A reload compiles a whole new
Engine and swaps one reference; a bad new config leaves the old Engine serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz_service.decision import Authorizer
from authz_service.envoy_adapter import ResponseBuilder
from authz_service.instruments import AuthzSnapshot, FetchInstruments
from authz_service.policy import CompiledPolicy
from authz_service.settings import AuthzSettings, load_settings
from authz_service.tokens import Fetcher, KeySource, ProxyConfig, TokenVerifier
from sidecar_runtime.clock import Clock
from sidecar_runtime.errors import ConfigError

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


class EngineHolder:
    """The current Engine; `reload()` swaps it atomically or keeps it.

    Reloads may overlap (SIGHUP during a file-change reload) and finish out of order: one
    that waits on a hanging JWKS can end after a later, faster one. Each reload takes a
    generation number when it reads the file; one whose generation is older than the
    installed engine's read an older file, so it is discarded: the latest file wins.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock,
        telemetry: FetchInstruments | None = None,
        proxies: ProxyConfig | None = None,
    ) -> None:
        self.current = engine
        self._clock = clock
        self._telemetry = telemetry
        self._proxies = proxies
        self._started_generation = 0  # the last generation handed to a reload
        self._installed_generation = 0  # the generation of `current`
        self.reloads = 0
        self.reload_failures = 0
        self.stale_reloads = 0

    def snapshot(self) -> AuthzSnapshot:
        """The figures telemetry exports (a `SnapshotSource` for AuthzTelemetry.attach)."""
        sources = self.current.authorizer.verifier.key_sources()
        keys = {issuer: _usable_keys(source) for issuer, source in sources.items()}
        return AuthzSnapshot(keys, self.reloads, self.reload_failures)

    async def reload(self) -> bool:
        """Load the config file again; True if the new engine was installed."""
        self._started_generation += 1
        generation = self._started_generation
        base = self.current
        try:
            new = await load_engine(
                base.source,
                clock=self._clock,
                previous=base,
                telemetry=self._telemetry,
                proxies=self._proxies,
            )
        except ConfigError as exc:
            self.reload_failures += 1
            log.error(
                "config reload rejected; keeping the previous config",
                extra={"fields": {"file": exc.file, "key": exc.key, "reason": exc.reason}},
            )
            return False
        if generation < self._installed_generation:
            self.stale_reloads += 1
            log.warning(
                "config reload finished after a newer one; discarding it",
                extra={"fields": {"file": str(base.source), "generation": generation}},
            )
            await new.close()
            return False
        replaced, self.current = self.current, new
        self._installed_generation = generation
        self.reloads += 1
        await replaced.close()
        log.info(
            "config reloaded",
            extra={"fields": {"file": str(base.source), "routes": len(new.settings.routes)}},
        )
        return True


def _usable_keys(source: KeySource) -> int:
    ring = source.current()
    return 0 if ring is None else len(ring)
