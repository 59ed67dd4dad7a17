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
two histograms are the SDK's own instruments. The decisions counter and the histograms
are updated per call only when metrics are enabled. With telemetry off (the default) a
call makes no span and reads no trace context.

The service's counters are read through the `SnapshotSource` given to `attach`
(`App.snapshot`), and the guard reports its store calls through the `StoreTelemetry`
port (ratelimit_service.instruments): no core module imports this one or OpenTelemetry.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span

from ratelimit_service.errors import StoreError
from ratelimit_service.instruments import SnapshotSource
from sidecar_runtime.telemetry import (
    DISABLED,
    Telemetry,
    TelemetrySettings,
    latency_histogram,
)


class RateLimitTelemetry:
    """The adapter: implements the guard's StoreTelemetry, makes the servicer's span,
    and exports the service's counters, read through the `SnapshotSource` given to
    `attach` (`App.snapshot`)."""

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
        self._snapshot: SnapshotSource | None = None
        meter = telemetry.meter
        buckets = settings.latency_buckets
        self.request_duration = latency_histogram(
            meter,
            "ratelimit.request.duration",
            description="ShouldRateLimit latency inside the sidecar",
            bounds=buckets,
        )
        self.store_duration = latency_histogram(
            meter,
            "ratelimit.store.duration",
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

    def attach(self, snapshot: SnapshotSource) -> None:
        """Where the service's counters come from (`App.snapshot`), read at export."""
        self._snapshot = snapshot

    def server_span(self, parent: Any) -> AbstractContextManager[Span]:
        """ShouldRateLimit's server span, child of `parent` (an OTel context) if given."""
        return self.tracer.start_as_current_span(
            "ratelimit.ShouldRateLimit", context=parent, kind=SpanKind.SERVER
        )

    def span_recording(self) -> bool:
        """Whether the current span records (StoreTelemetry)."""
        return bool(get_current_span().is_recording())

    @contextmanager
    def store_span(self, *, system: str, buckets: int) -> Iterator[Span]:
        """A client span around one store call (StoreTelemetry); a timeout or a
        StoreError marks it an error."""
        with self.tracer.start_as_current_span(
            "ratelimit.store.acquire",
            kind=SpanKind.CLIENT,
            attributes={"db.system": system, "ratelimit.buckets": buckets},
        ) as span:
            try:
                yield span
            except (TimeoutError, StoreError) as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def record(self, code: str, reason: str, started: float) -> None:
        """One decision; `started` is the call's time.perf_counter() at arrival."""
        if self.metering:  # only exported metrics read these
            self.decisions[(code, reason)] += 1
            self.request_duration.record(time.perf_counter() - started)

    def record_store_call(self, started: float) -> None:
        """One store call, failed ones included (ratelimit.store.errors counts those);
        `started` is its time.perf_counter() when it was sent."""
        if self.metering:
            self.store_duration.record(time.perf_counter() - started)

    # -- observable callbacks (export time) -------------------------------------------
    def _observe_decisions(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (code, reason), count in list(self.decisions.items()):
            yield Observation(count, {"code": code, "reason": reason})

    def _observe_store_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(self._snapshot().store_errors)

    def _observe_failure_mode(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(self._snapshot().failure_mode_answers)

    def _observe_circuit(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(1 if self._snapshot().circuit_closed else 0)

    def _observe_over_limit(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            for rule, count in self._snapshot().over_limit_by_rule.items():
                yield Observation(count, {"rule": rule})

    def _observe_shadow(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            for rule, count in self._snapshot().shadow_by_rule.items():
                yield Observation(count, {"rule": rule})

    def _observe_reloads(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            snapshot = self._snapshot()
            yield Observation(snapshot.reloads_ok, {"outcome": "ok"})
            yield Observation(snapshot.reloads_failed, {"outcome": "rejected"})
