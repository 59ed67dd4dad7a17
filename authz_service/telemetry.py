"""The authz sidecar's spans and metrics (OpenTelemetry), kept out of the pure core.

Metrics (names follow OTel conventions; Prometheus shows them with `_total` etc.):

    authz.decisions              counter   {decision, reason, enforced}   one per Check
    authz.check.duration         histogram seconds              Check latency
    authz.token_cache.lookups    counter   {result: hit|miss}   verified-token cache
    authz.jwks.fetches           counter   {issuer, outcome}    outcome: ok | error
    authz.jwks.keys              gauge     {issuer}             usable keys held
    authz.config.reloads         counter   {outcome}            ok | rejected

Hot-path cost: the decision counter is a plain dict increment read by an observable
callback at export time; the latency histogram is the SDK's own instrument, recorded only
when metrics are enabled. Spans are created only when tracing is enabled.

The serving config's figures (keys per issuer, reloads) are read through the `SnapshotSource`
given to `attach` (`ConfigHolder.snapshot`); the config reaches this module only through
the `FetchInstruments` port (authz_service.instruments), so neither imports the other.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from authz_service.apikeys.verifier import ApiKeyStats
from authz_service.instruments import SnapshotSource
from authz_service.jwks import Fetcher, FetchResult
from authz_service.tokens.verifier import VerifierStats
from sidecar_runtime.telemetry import (
    Telemetry,
    TelemetrySettings,
    latency_histogram,
    parent_context,
)


class AuthzTelemetry:
    def __init__(self, telemetry: Telemetry, settings: TelemetrySettings) -> None:
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.tracing = telemetry.tracing
        self.drops_unsampled = telemetry.drops_unsampled_parents
        self.metering = telemetry.metering
        self.decisions: Counter[tuple[str, str, bool]] = Counter()
        self.verifier_stats = VerifierStats()
        self.api_key_stats = ApiKeyStats()
        self.jwks_fetches: Counter[tuple[str, str]] = Counter()
        self._snapshot: SnapshotSource | None = None  # until `attach`
        meter = telemetry.meter
        self.check_duration = latency_histogram(
            meter,
            "authz.check.duration",
            description="Check latency inside the sidecar",
            bounds=settings.latency_buckets,
        )
        meter.create_observable_counter(
            "authz.decisions", [self._observe_decisions], description="Check decisions"
        )
        meter.create_observable_counter(
            "authz.token_cache.lookups",
            [self._observe_cache],
            description="verified-token cache lookups by result",
        )
        meter.create_observable_counter(
            "authz.jwks.fetches", [self._observe_fetches], description="JWKS/discovery fetches"
        )
        meter.create_observable_gauge(
            "authz.jwks.keys", [self._observe_keys], description="usable keys per issuer"
        )
        meter.create_observable_counter(
            "authz.config.reloads", [self._observe_reloads], description="config reloads"
        )
        meter.create_observable_counter(
            "authz.api_keys.checks",
            [self._observe_api_keys],
            description="API keys presented, by result (accepted, or the refusal's reason)",
        )
        meter.create_observable_gauge(
            "authz.api_keys.guesses",
            [self._observe_guessers],
            description="unknown key ids and bad secrets of the 10 addresses with the most",
        )

    def attach(self, snapshot: SnapshotSource) -> None:
        """Where the config's figures come from (`ConfigHolder.snapshot`), read at export."""
        self._snapshot = snapshot

    def instrument_fetcher(self, issuer: str, inner: Fetcher) -> Fetcher:
        """`inner`, counted and traced per fetch (the FetchInstruments port of compiled_config)."""
        return InstrumentedFetcher(inner, issuer=issuer, telemetry=self)

    def check_span(self, carrier: Mapping[str, str] | None) -> AbstractContextManager[Span]:
        """The Check's server span, child of the trace in `carrier` if there is one."""
        parent = parent_context(carrier) if carrier is not None else None
        return self.tracer.start_as_current_span(
            "authz.Check", context=parent, kind=SpanKind.SERVER
        )

    def record(self, decision: str, reason: str, seconds: float, *, enforced: bool = True) -> None:
        if self.metering:  # only exported metrics read these
            self.decisions[(decision, reason, enforced)] += 1
            self.check_duration.record(seconds)

    # -- observable callbacks (run at export time, off the hot path) -----------------
    def _observe_api_keys(self, _options: CallbackOptions) -> Iterable[Observation]:
        stats = self.api_key_stats
        yield Observation(stats.accepted, {"result": "accepted"})
        for reason, count in list(stats.refused.items()):
            yield Observation(count, {"result": reason})

    def _observe_guessers(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Ten addresses at most: a label per client address would grow without bound.
        for address, count in self.api_key_stats.top_guessers(10):
            yield Observation(count, {"client_address": address})

    def _observe_decisions(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (decision, reason, enforced), count in list(self.decisions.items()):
            labels = {"decision": decision, "reason": reason, "enforced": str(enforced).lower()}
            yield Observation(count, labels)

    def _observe_cache(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.verifier_stats.cache_hits, {"result": "hit"})
        yield Observation(self.verifier_stats.cache_misses, {"result": "miss"})

    def _observe_fetches(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (issuer, outcome), count in list(self.jwks_fetches.items()):
            yield Observation(count, {"issuer": issuer, "outcome": outcome})

    def _observe_keys(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is None:
            return
        for issuer, keys in self._snapshot().keys_by_issuer.items():
            yield Observation(keys, {"issuer": issuer})

    def _observe_reloads(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is None:
            return
        snapshot = self._snapshot()
        yield Observation(snapshot.reloads, {"outcome": "ok"})
        yield Observation(snapshot.reload_failures, {"outcome": "rejected"})


class InstrumentedFetcher:
    """Wraps a Fetcher: one span per fetch (child of the Check that caused it, if any)
    and a count per issuer and outcome. The URL is the IdP's, never a token."""

    def __init__(self, inner: Fetcher, *, issuer: str, telemetry: AuthzTelemetry) -> None:
        self._inner = inner
        self._issuer = issuer
        self._telemetry = telemetry

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult:
        t = self._telemetry
        started = time.perf_counter()
        with t.tracer.start_as_current_span(
            "authz.jwks.fetch",
            kind=SpanKind.CLIENT,
            attributes={"authz.issuer": self._issuer, "url.full": url},
        ) as span:
            try:
                result = await self._inner.fetch(
                    url, timeout_seconds=timeout_seconds, max_bytes=max_bytes
                )
            except Exception as exc:
                t.jwks_fetches[(self._issuer, "error")] += 1
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            outcome = "ok" if result.status == 200 else "error"
            t.jwks_fetches[(self._issuer, outcome)] += 1
            span.set_attribute("http.response.status_code", result.status)
            span.set_attribute("authz.fetch.seconds", round(time.perf_counter() - started, 6))
            return result
