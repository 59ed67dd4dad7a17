"""A loaded config, compiled for the hot path, and the holder that swaps it on reload.

`Engine` bundles everything one config produces (policy trie and CEL programs, token
verifier with its key sources and cache, response builder). A reload compiles a whole new
Engine and swaps one reference; a bad new config leaves the old Engine serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from authz_service.decision import Authorizer
from authz_service.envoy_adapter import ResponseBuilder
from authz_service.policy import CompiledPolicy
from authz_service.settings import AuthzSettings, load_settings
from authz_service.telemetry import AuthzTelemetry
from authz_service.tokens import TokenVerifier, UrllibFetcher
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
    telemetry: AuthzTelemetry | None = None,
) -> Engine:
    """Compile `settings` (raises ConfigError). Key sources of unchanged issuers are reused
    from `previous`, so a policy edit does not refetch every JWKS."""
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
        fetcher_for=telemetry.fetcher_for(UrllibFetcher()) if telemetry else None,
    )
    authorizer = Authorizer(policy, verifier, cookie_names=settings.credentials.cookie_names)
    return Engine(source, settings, authorizer, ResponseBuilder(settings.identity))


async def load_engine(
    path: Path,
    *,
    clock: Clock,
    previous: Engine | None = None,
    telemetry: AuthzTelemetry | None = None,
    settings: AuthzSettings | None = None,
) -> Engine:
    """Load (unless `settings` were already read from `path`), compile and start an Engine."""
    settings = settings or load_settings(path)
    engine = compile_engine(settings, path, clock=clock, previous=previous, telemetry=telemetry)
    await engine.authorizer.verifier.start()
    return engine


class EngineHolder:
    """The current Engine; `reload()` swaps it atomically or keeps it."""

    def __init__(
        self, engine: Engine, *, clock: Clock, telemetry: AuthzTelemetry | None = None
    ) -> None:
        self.current = engine
        self._clock = clock
        self._telemetry = telemetry
        self.reloads = 0
        self.reload_failures = 0

    async def reload(self) -> bool:
        old = self.current
        try:
            new = await load_engine(
                old.source, clock=self._clock, previous=old, telemetry=self._telemetry
            )
        except ConfigError as exc:
            self.reload_failures += 1
            log.error(
                "config reload rejected; keeping the previous config",
                extra={"fields": {"file": exc.file, "key": exc.key, "reason": exc.reason}},
            )
            return False
        self.current = new
        self.reloads += 1
        await old.close()
        log.info(
            "config reloaded",
            extra={"fields": {"file": str(old.source), "routes": len(new.settings.routes)}},
        )
        return True
