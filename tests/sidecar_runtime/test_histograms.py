from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from sidecar_runtime.histograms import InMemoryReader, LatencyHistogram, PeriodicReader
from sidecar_runtime.telemetry import TelemetrySettings, setup_telemetry
from tests.support.processes import free_port

BOUNDS = (0.001, 0.01, 0.1)


def _points(data: MetricsData | None) -> dict[str, tuple[str, HistogramDataPoint | Any]]:
    """metric name -> (scope name, its only data point)."""
    assert data is not None
    out = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = list(metric.data.data_points)
                out[metric.name] = (scope.scope.name, points[0] if len(points) == 1 else points)
    return out


def _scope_names(data: MetricsData | None) -> list[str]:
    assert data is not None
    return [s.scope.name for r in data.resource_metrics for s in r.scope_metrics]


def test_values_land_in_otel_buckets_upper_bound_inclusive() -> None:
    h = LatencyHistogram("x", unit="s", description="", bounds=BOUNDS)
    for value in (0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 2, 2]
    assert (h.count, h.min, h.max) == (8, 0.0005, 7.0)
    assert h.sum == pytest.approx(7.3626)


@pytest.mark.parametrize("bounds", [(0.1, 0.01), (0.1, 0.1), (0.1, float("inf"))])
def test_bounds_must_be_finite_and_increasing(bounds: Sequence[float]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LatencyHistogram("bad", unit="s", description="", bounds=bounds)


def test_metric_is_one_cumulative_point() -> None:
    h = LatencyHistogram("lat", unit="s", description="d", bounds=BOUNDS)
    h.observe(0.002)
    h.observe(0.003)
    metric = h.metric(now_ns=h.start_ns + 5)
    assert (metric.name, metric.unit, metric.description) == ("lat", "s", "d")
    assert metric.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    [point] = metric.data.data_points
    assert point.bucket_counts == [0, 2, 0, 0]
    assert list(point.explicit_bounds) == list(BOUNDS)
    assert (point.count, point.min, point.max) == (2, 0.002, 0.003)
    assert point.time_unix_nano - point.start_time_unix_nano == 5
    h.observe(0.5)
    assert h.metric(now_ns=0).data.data_points[0].bucket_counts == [0, 2, 0, 1]  # cumulative


def test_collection_carries_own_histograms_beside_sdk_instruments() -> None:
    reader = InMemoryReader()
    t = setup_telemetry("svc", TelemetrySettings(), metric_readers=[reader])
    try:
        lat = t.histograms.histogram("svc.latency", unit="s", description="", bounds=BOUNDS)
        idle = t.histograms.histogram("svc.idle", unit="s", description="", bounds=BOUNDS)
        t.meter.create_counter("svc.events").add(2)
        lat.observe(0.02)
        data = reader.get_metrics_data()
        points = _points(data)
        assert _scope_names(data) == ["svc"]  # merged, not a second "svc" entry
        assert points["svc.events"][1].value == 2
        scope, point = points["svc.latency"]
        assert scope == "svc"  # merged into the service's own meter scope
        assert (point.count, list(point.bucket_counts)) == (1, [0, 0, 1, 0])
        assert idle.name not in points  # nothing observed: no point
    finally:
        t.shutdown()


def test_own_histograms_get_their_own_scope_when_the_sdk_has_none() -> None:
    reader = InMemoryReader()
    t = setup_telemetry("svc", TelemetrySettings(), metric_readers=[reader])
    try:
        t.histograms.histogram("svc.lat", unit="s", description="", bounds=BOUNDS).observe(1.0)
        # Only a meter of another name has SDK data: ours get a scope entry of their own.
        t._providers[-1].get_meter("elsewhere").create_counter("elsewhere.events").add(1)
        data = reader.get_metrics_data()
        points = _points(data)
        assert sorted(_scope_names(data)) == ["elsewhere", "svc"]
        assert points["elsewhere.events"][0] == "elsewhere"
        assert points["svc.lat"][0] == "svc"
    finally:
        t.shutdown()


class _Capture(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_periodic_reader_exports_them() -> None:
    exporter = _Capture()
    t = setup_telemetry("svc", TelemetrySettings(), metric_readers=[PeriodicReader(exporter)])
    try:
        t.meter.create_counter("svc.events").add(1)
        t.histograms.histogram("svc.lat", unit="s", description="", bounds=BOUNDS).observe(0.5)
        t._providers[-1].force_flush()
        assert exporter.batches
        assert _points(exporter.batches[-1])["svc.lat"][1].count == 1
    finally:
        t.shutdown()


def test_prometheus_endpoint_shows_them_as_histograms() -> None:
    port = free_port()
    t = setup_telemetry("svc", TelemetrySettings(prometheus_listen=f"127.0.0.1:{port}"))
    try:
        lat = t.histograms.histogram("svc.check.duration", unit="s", description="", bounds=BOUNDS)
        lat.observe(0.005)
        t.meter.create_counter("svc.events").add(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "# TYPE svc_check_duration_seconds histogram" in body
        samples = {}  # sample name + le label -> value (other labels: the OTel scope)
        for line in body.splitlines():
            if line.startswith("svc_check_duration_seconds_"):
                name = line.split("{")[0]
                le = line.split('le="')[1].split('"')[0] if 'le="' in line else ""
                samples[(name, le)] = float(line.rsplit(" ", 1)[1])
        assert samples[("svc_check_duration_seconds_bucket", "0.001")] == 0
        assert samples[("svc_check_duration_seconds_bucket", "0.01")] == 1
        assert samples[("svc_check_duration_seconds_bucket", "+Inf")] == 1
        assert samples[("svc_check_duration_seconds_count", "")] == 1
        assert samples[("svc_check_duration_seconds_sum", "")] == 0.005
    finally:
        t.shutdown()
