"""The rate-limit sidecar's spans and metrics (OpenTelemetry), kept out of the core.

    ratelimit.decisions          counter   {code, reason}       one per ShouldRateLimit
    ratelimit.request.duration   histogram seconds              ShouldRateLimit latency
    ratelimit.store.duration     histogram seconds              one store (Redis) call
    ratelimit.store.errors       counter                        failed or timed-out calls
    ratelimit.failure_mode       counter                        answers by the failure mode
    ratelimit.circuit.closed     gauge                          1 closed (healthy), 0 open
    ratelimit.over_limit         counter   {rule}               enforced denials
    ratelimit.shadow_over_limit  counter   {rule}               shadow-mode would-be denials
    ratelimit.config.reloads     counter   {outcome}            ok | rejected

Counters are plain ints in the core, read by observable callbacks at export time; the
two histograms are plain bucket counts (sidecar_runtime.histograms). The decisions
counter and the histograms are updated per call only when metrics are enabled. With
telemetry off (the default) a call makes no span and reads no trace context.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from sidecar_runtime.telemetry import DISABLED, Telemetry, TelemetrySettings

if TYPE_CHECKING:
    from ratelimit_service.app import App


class RateLimitTelemetry:
    def __init__(
        self, telemetry: Telemetry = DISABLED, settings: TelemetrySettings | None = None
    ) -> None:
        settings = settings or TelemetrySettings()
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.tracing = telemetry.tracing
        self.drops_unsampled = telemetry.drops_unsampled_parents
        self.metering = telemetry.metering
        self.decisions: Counter[tuple[str, str]] = Counter()
        self._app: App | None = None
        meter = telemetry.meter
        own, buckets = telemetry.histograms, settings.latency_buckets
        self.request_duration = own.histogram(
            "ratelimit.request.duration",
            unit="s",
            description="ShouldRateLimit latency inside the sidecar",
            bounds=buckets,
        )
        self.store_duration = own.histogram(
            "ratelimit.store.duration",
            unit="s",
            description="one store call (a Redis round trip), failed ones included",
            bounds=buckets,
        )
        meter.create_observable_counter("ratelimit.decisions", [self._observe_decisions])
        meter.create_observable_counter("ratelimit.store.errors", [self._observe_store_errors])
        meter.create_observable_counter("ratelimit.failure_mode", [self._observe_failure_mode])
        meter.create_observable_gauge("ratelimit.circuit.closed", [self._observe_circuit])
        meter.create_observable_counter("ratelimit.over_limit", [self._observe_over_limit])
        meter.create_observable_counter("ratelimit.shadow_over_limit", [self._observe_shadow])
        meter.create_observable_counter("ratelimit.config.reloads", [self._observe_reloads])

    def attach(self, app: App) -> None:
        self._app = app

    def record(self, code: str, reason: str, started: float) -> None:
        """One decision; `started` is the call's time.perf_counter() at arrival."""
        if self.metering:  # only exported metrics read these
            self.decisions[(code, reason)] += 1
            self.request_duration.observe(time.perf_counter() - started)

    def record_store_call(self, started: float) -> None:
        """One store call, failed ones included (ratelimit.store.errors counts those);
        `started` is its time.perf_counter() when it was sent."""
        if self.metering:
            self.store_duration.observe(time.perf_counter() - started)

    # -- observable callbacks (export time) -------------------------------------------
    def _observe_decisions(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (code, reason), count in list(self.decisions.items()):
            yield Observation(count, {"code": code, "reason": reason})

    def _observe_store_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            yield Observation(self._app.service.guard.stats.store_errors)

    def _observe_failure_mode(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            yield Observation(self._app.service.guard.stats.failure_mode_answers)

    def _observe_circuit(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            yield Observation(1 if self._app.service.guard.healthy else 0)

    def _observe_over_limit(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            for rule, count in list(self._app.service.stats.over_limit_by_rule.items()):
                yield Observation(count, {"rule": rule})

    def _observe_shadow(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            for rule, count in list(self._app.service.stats.shadow_by_rule.items()):
                yield Observation(count, {"rule": rule})

    def _observe_reloads(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._app is not None:
            yield Observation(self._app.reloads_ok, {"outcome": "ok"})
            yield Observation(self._app.reloads_failed, {"outcome": "rejected"})
