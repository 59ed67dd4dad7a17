"""The rate-limit sidecar's spans and metrics (OpenTelemetry), kept out of the core.

    ratelimit.decisions          counter   {code, reason}       one per ShouldRateLimit
    ratelimit.request.duration   histogram seconds              ShouldRateLimit latency
    ratelimit.store.duration     histogram seconds              one store (Redis) call
    ratelimit.store.errors       counter                        failed or timed-out calls
    ratelimit.failure_mode       counter                        answers by the failure mode
    ratelimit.circuit.closed     gauge                          1 closed (healthy), 0 open
    ratelimit.store.node_open    gauge     {node}               1 per Cluster master whose
                                                                breaker is open (degraded)
    ratelimit.over_limit         counter   {rule}               enforced denials
    ratelimit.shadow_over_limit  counter   {rule}               shadow-mode would-be denials
    ratelimit.config.reloads     counter   {outcome}            ok | rejected

and, under envoyproxy/ratelimit's own names (so dashboards built on it keep working; the
mapping to its Prometheus names is in docs/ratelimit.md):

    ratelimit.service.rate_limit.<stat>     {domain, key1, key2}   per stat key, <stat> one of
        total_hits, over_limit, near_limit, over_limit_with_local_cache, within_limit,
        shadow_mode (ratelimit_service.descriptor_stats)
    ratelimit.service.rate_limit.domain_not_found      {domain}
    ratelimit.service.rate_limit.detailed_keys_folded            checks past max_detailed_keys
    ratelimit.service.config_load_success / config_load_error
    ratelimit.service.should_rate_limit.error          {err_type="redis_error"}
    ratelimit.service.global_shadow_mode

The labels are those of the reference's Prometheus mapper: the stat key's first three
dot-separated parts (domain, key1, key2); deeper parts are dropped and the series that
then share labels are summed, as its statsd exporter sums them.

Counters are plain ints in the core, read by observable callbacks at export time; the
two histograms are the SDK's own instruments. The decisions counter and the histograms
are updated per call only when metrics are enabled. With telemetry off (the default) a
call makes no span and reads no trace context.

The service's counters are read through the `SnapshotSource` given to `attach`
(`App.snapshot`), the per-descriptor ones through its `StatsSource`, and the guard
reports its store calls through the `StoreTelemetry` port (ratelimit_service.instruments):
no core module imports this one or OpenTelemetry.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span

from ratelimit_service.descriptor_stats import STAT_NAMES, StatsSnapshot
from ratelimit_service.errors import StoreError
from ratelimit_service.instruments import SnapshotSource, StatsSource
from ratelimit_service.limits.rules import sanitize_stat_name
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
        meter.create_observable_gauge("ratelimit.store.node_open", [self._observe_open_nodes])
        meter.create_observable_counter("ratelimit.over_limit", [self._observe_over_limit])
        meter.create_observable_counter("ratelimit.shadow_over_limit", [self._observe_shadow])
        meter.create_observable_counter("ratelimit.config.reloads", [self._observe_reloads])
        self._series = ReferenceSeries()
        self._reference_instruments(meter)

    def _reference_instruments(self, meter: Meter) -> None:
        """The reference's counters, under its names (see the module docstring)."""
        for index, stat in enumerate(STAT_NAMES):
            observe = functools.partial(self._observe_stat, index)
            meter.create_observable_counter(f"{RATE_LIMIT}.{stat}", [observe])
        counters: dict[str, Callable[[CallbackOptions], Iterable[Observation]]] = {
            f"{RATE_LIMIT}.domain_not_found": self._observe_domains,
            f"{RATE_LIMIT}.detailed_keys_folded": self._observe_folded,
            f"{SERVICE}.config_load_success": self._observe_loads,
            f"{SERVICE}.config_load_error": self._observe_load_errors,
            f"{SERVICE}.should_rate_limit.error": self._observe_redis_errors,
            f"{SERVICE}.global_shadow_mode": self._observe_global_shadow,
        }
        for name, callback in counters.items():
            meter.create_observable_counter(name, [callback])

    def attach(self, snapshot: SnapshotSource, stats: StatsSource | None = None) -> None:
        """Where the service's counters come from (`App.snapshot`), and the
        per-descriptor ones (`DescriptorStats.snapshot`; None when they are off), read at
        export."""
        self._snapshot = snapshot
        self._series = ReferenceSeries(stats)

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

    def _observe_open_nodes(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            for node in self._snapshot().open_nodes:
                yield Observation(1, {"node": node})

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

    def _observe_stat(self, index: int, _options: CallbackOptions) -> Iterable[Observation]:
        for labels, counts in self._series.current().values():
            yield Observation(counts[index], labels)

    def _observe_domains(self, _options: CallbackOptions) -> Iterable[Observation]:
        for domain, count in self._series.snapshot().domains_not_found:
            yield Observation(count, {"domain": domain})

    def _observe_folded(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._series.enabled:
            yield Observation(self._series.snapshot().folded)

    def _observe_loads(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:  # the first load (at start) is one too
            yield Observation(self._snapshot().reloads_ok + 1)

    def _observe_load_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(self._snapshot().reloads_failed)

    def _observe_redis_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(self._snapshot().store_errors, {"err_type": "redis_error"})

    def _observe_global_shadow(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is not None:
            yield Observation(self._snapshot().global_shadow_mode)


RATE_LIMIT = "ratelimit.service.rate_limit"
SERVICE = "ratelimit.service"
# The callbacks of one collection run back to back: they share one snapshot taken at
# most this long ago, so an export's figures are of one moment and it copies them once.
_SNAPSHOT_REUSE_S = 1.0

Labels = tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=65_536)
def reference_labels(stat_key: str) -> Labels:
    """The labels the reference's Prometheus mapper gives a stat key: its first three
    dot-separated parts, as `domain`, `key1` and (if there is one) `key2`. The rules
    sanitize the keys already (an IPv4 address is one part); doing it again is free of
    effect on those, and keeps a key made elsewhere from splitting inside an address."""
    parts = sanitize_stat_name(stat_key).split(".", 3)
    labels = [("domain", parts[0]), ("key1", parts[1] if len(parts) > 1 else "")]
    if len(parts) > 2:
        labels.append(("key2", parts[2]))
    return tuple(labels)


class ReferenceSeries:
    """The per-descriptor counters as the reference's Prometheus series, summed per label
    set, from one snapshot per export (`_SNAPSHOT_REUSE_S`)."""

    def __init__(
        self, source: StatsSource | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = source is not None
        self._source = source
        self._clock = clock
        self._taken_at = -_SNAPSHOT_REUSE_S
        self._snapshot = StatsSnapshot()
        self._series: dict[Labels, tuple[dict[str, str], list[int]]] = {}

    def snapshot(self) -> StatsSnapshot:
        """The counters, taken afresh unless a snapshot was taken moments ago."""
        now = self._clock()
        if self._source is not None and now - self._taken_at >= _SNAPSHOT_REUSE_S:
            self._snapshot = self._source()
            self._series = {}
            self._taken_at = now
        return self._snapshot

    def current(self) -> dict[Labels, tuple[dict[str, str], list[int]]]:
        """Label set -> (labels, the six counters summed over the keys that share it)."""
        snapshot = self.snapshot()
        if not self._series and snapshot.rows:
            self._series = _summed(snapshot)
        return self._series


def _summed(snapshot: StatsSnapshot) -> dict[Labels, tuple[dict[str, str], list[int]]]:
    series: dict[Labels, tuple[dict[str, str], list[int]]] = {}
    for key, counts in snapshot.rows:
        labels = reference_labels(key)
        found = series.get(labels)
        if found is None:
            series[labels] = (dict(labels), list(counts))
        else:
            totals = found[1]
            for index, count in enumerate(counts):
                totals[index] += count
    return series
