"""The config currently serving, and the reload that swaps it whole or keeps it.

A reload loads and compiles a whole new CompiledConfig (compiled_config.py) and swaps one
reference; a bad new config leaves the old CompiledConfig serving.
"""

from __future__ import annotations

import logging

from authz_service.compiled_config import CompiledConfig, load_compiled_config
from authz_service.instruments import AuthzSnapshot, FetchInstruments
from authz_service.jwks import KeySource, ProxyConfig
from authz_service.pipeline import RevocationCheck
from sidecar_runtime.clock import Clock
from sidecar_runtime.errors import ConfigError

log = logging.getLogger(__name__)


class ConfigHolder:
    """The current CompiledConfig; `reload()` swaps it atomically or keeps it.

    Reloads may overlap (SIGHUP during a file-change reload) and finish out of order: one
    that waits on a hanging JWKS can end after a later, faster one. Each reload takes a
    generation number when it reads the file; one whose generation is older than the
    installed config's read an older file, so it is discarded: the latest file wins.
    """

    def __init__(
        self,
        compiled: CompiledConfig,
        *,
        clock: Clock,
        telemetry: FetchInstruments | None = None,
        proxies: ProxyConfig | None = None,
        revoked: RevocationCheck | None = None,
    ) -> None:
        self.current = compiled
        self._revoked = revoked  # the process's revocation list: it outlives reloads
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
        sources = self.current.tokens.key_sources()
        keys = {issuer: _usable_keys(source) for issuer, source in sources.items()}
        return AuthzSnapshot(keys, self.reloads, self.reload_failures)

    async def reload(self) -> bool:
        """Load the config file again; True if the new config was installed."""
        self._started_generation += 1
        generation = self._started_generation
        base = self.current
        try:
            new = await load_compiled_config(
                base.source,
                clock=self._clock,
                previous=base,
                telemetry=self._telemetry,
                proxies=self._proxies,
                revoked=self._revoked,
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
