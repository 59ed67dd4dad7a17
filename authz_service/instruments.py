"""The authz sidecar's side of the telemetry port: what it counts, and how it is read.

The service owns plain values; the telemetry adapter (authz_service.telemetry, the only
module that imports OpenTelemetry) is handed a callable at wiring time and reads them
through it, at export time. Nothing here imports the adapter, so no cycle runs through it.

    AuthzSnapshot        the serving config's figures at one moment (keys per issuer, reloads)
    FetchInstruments     what compiling a config needs from telemetry: the verifiers'
                         counters (tokens, API keys), and a wrapper for each issuer's
                         JWKS fetcher
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from authz_service.apikeys.verifier import ApiKeyStats
from authz_service.jwks import Fetcher
from authz_service.tokens.verifier import VerifierStats


@dataclass(frozen=True, slots=True)
class AuthzSnapshot:
    """Read at export time: usable keys held per issuer, and config reloads so far."""

    keys_by_issuer: Mapping[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_failures: int = 0


SnapshotSource = Callable[[], AuthzSnapshot]


class FetchInstruments(Protocol):
    """Counters shared by every config a reload compiles, and a per-issuer fetch wrapper."""

    @property
    def verifier_stats(self) -> VerifierStats: ...

    @property
    def api_key_stats(self) -> ApiKeyStats: ...

    def instrument_fetcher(self, issuer: str, inner: Fetcher) -> Fetcher: ...
