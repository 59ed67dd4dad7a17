"""The rate-limit sidecar's side of the telemetry port: what it counts, and how it is told.

The service owns plain counters; the telemetry adapter (ratelimit_service.telemetry, the
only module here that imports OpenTelemetry) reads them through a `SnapshotSource` handed
to it at wiring time, and the reference's per-descriptor counters
(ratelimit_service.descriptor_stats) through a `StatsSource`. The guard reports store
calls through `StoreTelemetry`, whose default does nothing. Nothing here imports the
adapter, so no cycle runs through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from ratelimit_service.descriptor_stats import StatsSnapshot


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """The figures read at export time (off the hot path), copied at one moment."""

    store_errors: int = 0
    failure_mode_answers: int = 0
    circuit_closed: bool = True
    open_nodes: tuple[str, ...] = ()  # Redis Cluster masters whose breaker is open
    over_limit_by_rule: Mapping[str, int] = field(default_factory=dict)
    shadow_by_rule: Mapping[str, int] = field(default_factory=dict)
    reloads_ok: int = 0
    reloads_failed: int = 0
    global_shadow_mode: int = 0  # OVER_LIMIT answers the global shadow mode turned OK


SnapshotSource = Callable[[], RateLimitSnapshot]
StatsSource = Callable[[], StatsSnapshot]


class StoreTelemetry(Protocol):
    """What the guard tells telemetry about its store calls."""

    @property
    def tracing(self) -> bool:
        """Whether spans are made at all; read first, so telemetry off costs one read."""
        ...

    def span_recording(self) -> bool:
        """Whether the current span records (only then is a child span worth making)."""
        ...

    def store_span(self, *, system: str, buckets: int) -> AbstractContextManager[object]:
        """A client span around one store call; a call that fails marks it an error."""
        ...

    def record_store_call(self, started: float) -> None:
        """One store call, failed ones included; `started` is its time.perf_counter()."""
        ...


class NoTelemetry:
    """StoreTelemetry that records nothing (the default, and for tests)."""

    tracing = False

    def span_recording(self) -> bool:
        return False

    def store_span(self, *, system: str, buckets: int) -> AbstractContextManager[object]:
        return nullcontext()

    def record_store_call(self, started: float) -> None:
        pass
