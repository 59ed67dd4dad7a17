from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sidecar_runtime.telemetry import (
    TelemetrySettings,
    parent_context,
    parse_traceparent,
    setup_telemetry,
)

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
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    assert parse_traceparent(value) is None


def test_valid_traceparent() -> None:
    assert parse_traceparent(VALID) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert parent_context({"traceparent": VALID})
