from __future__ import annotations

import urllib.request

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar_runtime.histograms import InMemoryReader
from sidecar_runtime.telemetry import (
    TelemetrySettings,
    call_metadata,
    parent_context,
    parse_trace_context,
    plainly_unsampled,
    setup_telemetry,
)
from tests.support.processes import free_port

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


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
    t = setup_telemetry("x", TelemetrySettings(), metric_readers=[InMemoryReader()])
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
