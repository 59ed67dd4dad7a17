from __future__ import annotations

import urllib.request
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from sidecar_runtime.telemetry import (
    TelemetrySettings,
    call_metadata,
    latency_histogram,
    parent_context,
    parse_trace_context,
    plainly_unsampled,
    setup_telemetry,
)
from tests.support.processes import free_port

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BOUNDS = (0.001, 0.01, 0.1)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ):
        monkeypatch.delenv(name, raising=False)


def test_nothing_configured_means_no_op() -> None:
    t = setup_telemetry("x", TelemetrySettings())
    assert (t.tracing, t.metering) == (False, False)
    with t.tracer.start_as_current_span("s") as span:
        assert not span.is_recording()


def test_otlp_endpoint_turns_on_traces_and_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    t = setup_telemetry("x", TelemetrySettings())
    try:
        assert (t.tracing, t.metering) == (True, True)
    finally:
        t.shutdown()


def test_exporter_none_and_sdk_disabled_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    t = setup_telemetry("x", TelemetrySettings())
    assert (t.tracing, t.metering) == (False, False)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    t = setup_telemetry("x", TelemetrySettings(), metric_readers=[InMemoryMetricReader()])
    assert t.metering is False


def test_prometheus_endpoint_serves_metrics() -> None:
    port = free_port()
    t = setup_telemetry("x", TelemetrySettings(prometheus_listen=f"127.0.0.1:{port}"))
    try:
        t.meter.create_counter("edge.test.events").add(3)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
        assert "edge_test_events" in body
    finally:
        t.shutdown()


def test_latency_histogram_uses_the_given_buckets_upper_bound_inclusive() -> None:
    reader = InMemoryMetricReader()
    t = setup_telemetry("svc", TelemetrySettings(), metric_readers=[reader])
    try:
        lat = latency_histogram(t.meter, "svc.latency", description="d", bounds=BOUNDS)
        latency_histogram(t.meter, "svc.idle", description="", bounds=BOUNDS)
        for value in (0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 7.0):
            lat.record(value)
        data = reader.get_metrics_data()
        assert data is not None
        metrics = {m.name: m for r in data.resource_metrics for s in r.scope_metrics
                   for m in s.metrics}  # fmt: skip
        assert "svc.idle" not in metrics  # nothing recorded: no point
        metric = metrics["svc.latency"]
        assert (metric.unit, metric.description) == ("s", "d")
        assert metric.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
        [point] = metric.data.data_points
        assert list(point.explicit_bounds) == list(BOUNDS)
        assert list(point.bucket_counts) == [2, 2, 2, 2]  # (b[i-1], b[i]], then +Inf
        assert (point.count, point.min, point.max) == (8, 0.0005, 7.0)
        assert point.sum == pytest.approx(7.3626)
    finally:
        t.shutdown()


@pytest.mark.parametrize("bounds", [(0.1, 0.01), (0.1, 0.1), (0.1, float("inf"))])
def test_latency_buckets_must_be_finite_and_increasing(bounds: Sequence[float]) -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        TelemetrySettings(latency_buckets=tuple(bounds))


def test_prometheus_endpoint_shows_latency_histograms() -> None:
    port = free_port()
    t = setup_telemetry("svc", TelemetrySettings(prometheus_listen=f"127.0.0.1:{port}"))
    try:
        lat = latency_histogram(t.meter, "svc.check.duration", description="", bounds=BOUNDS)
        lat.record(0.005)
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


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        VALID + "-extra",  # version 00 has exactly four fields
    ],
)
def test_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_trace_context(value) is None


def test_valid_traceparent() -> None:
    parsed = parse_trace_context(VALID)
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert parent_context({"traceparent": VALID})


def test_the_sampled_flag_is_read() -> None:
    sampled = parse_trace_context(VALID)
    unsampled = parse_trace_context(VALID[:-2] + "00")
    assert sampled is not None
    assert sampled.sampled
    assert unsampled is not None
    assert not unsampled.sampled


@pytest.mark.parametrize(
    ("value", "unsampled"),
    [
        (VALID[:-2] + "00", True),
        (VALID[:-2] + "02", True),  # another flag set, sampled bit clear
        (VALID, False),  # sampled
        (VALID[:-2] + "03", False),
        (None, False),
        ("", False),
        ("01" + VALID[2:-2] + "00", False),  # a later version: left to the full parser
        (VALID[:-2] + "00-extra", False),
        (VALID[:-3] + "000", False),  # no dash before the flags
        (" " + VALID[:-2] + "00", False),
    ],
)
def test_plainly_unsampled_reads_only_the_shape_and_the_flag(
    value: str | None, unsampled: bool
) -> None:
    assert plainly_unsampled(value) is unsampled
    # It never calls a value unsampled that the full parser reads as sampled.
    parsed = parse_trace_context(value)
    if unsampled:
        assert parsed is not None
        assert not parsed.sampled


@pytest.mark.parametrize(
    ("sampler", "drops"),
    [
        (None, True),  # OTel's default: parentbased_always_on
        ("parentbased_traceidratio", True),
        ("always_on", False),  # a span for every call, whatever Envoy decided
        ("traceidratio", False),
    ],
)
def test_only_parent_based_samplers_let_unsampled_calls_skip_their_span(
    monkeypatch: pytest.MonkeyPatch, sampler: str | None, drops: bool
) -> None:
    if sampler is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    telemetry = setup_telemetry(
        "test", TelemetrySettings(), span_processors=[SimpleSpanProcessor(InMemorySpanExporter())]
    )
    try:
        assert telemetry.tracing
        assert telemetry.drops_unsampled_parents is drops
    finally:
        telemetry.shutdown()


class _Call:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", VALID), ("user-agent", "envoy"), ("x-request-id", "r-1"))


def test_call_metadata_picks_the_named_keys() -> None:
    assert call_metadata(_Call(), ("traceparent", "x-request-id", "tracestate")) == {
        "traceparent": VALID,
        "x-request-id": "r-1",
    }
    assert call_metadata(None, ("traceparent",)) == {}
