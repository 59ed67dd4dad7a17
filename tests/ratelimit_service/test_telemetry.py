"""Spans, metrics and decision lines of the rate-limit sidecar, with in-memory exporters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ratelimit_service.app import App
from ratelimit_service.limits.bucket import BucketSpec
from ratelimit_service.servicer import RateLimitServicer
from ratelimit_service.settings import ServiceSettings
from ratelimit_service.store import BucketCall
from ratelimit_service.telemetry import RateLimitTelemetry
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.settings import Stack
from sidecar_runtime.telemetry import TelemetrySettings, setup_telemetry
from tests.ratelimit_service.test_grpc import make_settings
from tests.support.grpc_clients import channel
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.grpc

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
METADATA = (("traceparent", f"00-{TRACE_ID}-{PARENT}-01"), ("x-request-id", "req-77"))

# Not the default buckets, so the tests see that the configured ones reach the export.
LATENCY_BUCKETS = (0.001, 0.01, 0.1, 1.0)


@dataclass
class Observed:
    app: App
    address: str
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    sink: AuditSink
    decisions_file: Path


async def _observed(settings: ServiceSettings, tmp_path: Path) -> Observed:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = RateLimitTelemetry(
        setup_telemetry(
            "ratelimit",
            TelemetrySettings(),
            span_processors=[SimpleSpanProcessor(spans)],
            metric_readers=[metrics],
        ),
        TelemetrySettings(latency_buckets=LATENCY_BUCKETS),
    )
    decisions_file = tmp_path / "decisions.log"
    sink = AuditSink(str(decisions_file))
    # A stopped clock: the per-subject bucket refills one token per 100 ms, and 22 calls on
    # fresh channels can take longer than that on a slow machine.
    app = App(settings, telemetry=telemetry, decision_sink=sink, clock=ManualClock())
    port = await app.start()
    return Observed(app, f"127.0.0.1:{port}", spans, metrics, sink, decisions_file)


@pytest.fixture
async def memory_app(tmp_path: Path, stack: Stack) -> AsyncIterator[Observed]:
    observed = await _observed(make_settings(tmp_path, stack=stack), tmp_path)
    yield observed
    await observed.app.close()


@pytest.fixture
async def redis_app(
    tmp_path: Path, redis_server: RedisServer, stack: Stack
) -> AsyncIterator[Observed]:
    base = make_settings(tmp_path, stack=stack).model_dump(mode="json")
    settings = ServiceSettings.model_validate(
        {**base, "store": {"type": "redis", "url": redis_server.url}}
    )
    observed = await _observed(settings, tmp_path)
    yield observed
    await observed.app.close()


def _request(key: str, value: str) -> Any:
    req = rls_pb2.RateLimitRequest(domain="edge")
    req.descriptors.add().entries.add(key=key, value=value)
    return req


async def _call(address: str, req: Any) -> Any:
    async with channel(address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        return await stub.ShouldRateLimit(req, metadata=METADATA, timeout=5)


async def test_span_is_child_of_envoys_call_and_names_keys_not_values(
    memory_app: Observed,
) -> None:
    await _call(memory_app.address, _request("subject", "alice@example.com"))
    [span] = memory_app.spans.get_finished_spans()
    assert span.name == "ratelimit.ShouldRateLimit"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT
    attrs = dict(span.attributes or {})
    assert attrs["ratelimit.domain"] == "edge"
    assert tuple(attrs["ratelimit.descriptor_keys"]) == ("subject",)
    assert attrs["ratelimit.code"] == "OK"
    assert "alice@example.com" not in span.to_json()


async def test_redis_call_is_a_child_span(redis_app: Observed) -> None:
    await _call(redis_app.address, _request("subject", "bob"))
    spans = {s.name: s for s in redis_app.spans.get_finished_spans()}
    parent, store = spans["ratelimit.ShouldRateLimit"], spans["ratelimit.store.acquire"]
    assert store.parent is not None
    assert store.parent.span_id == parent.context.span_id
    assert dict(store.attributes or {})["db.system"] == "redis"


async def test_denial_line_carries_the_ids_that_join_it_to_envoy_and_the_trace(
    memory_app: Observed,
) -> None:
    responses = [await _call(memory_app.address, _request("subject", "carol")) for _ in range(21)]
    denied = responses[-1]
    assert denied.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    decision_id = dict(denied.dynamic_metadata)["decision_id"]
    memory_app.sink.flush()
    [line] = [json.loads(x) for x in memory_app.decisions_file.read_text().splitlines()]
    assert line["decision_id"] == decision_id
    assert (line["request_id"], line["trace_id"]) == ("req-77", TRACE_ID)
    assert (line["service"], line["decision"], line["reason"]) == (
        "ratelimit",
        "deny",
        "over_limit",
    )
    assert line["rule"] == "per-subject"
    assert line["descriptor"]["subject"] != "carol"  # pseudonymised
    assert "carol" not in memory_app.decisions_file.read_text()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: list(m.data.data_points)
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    }


async def test_metrics_move_with_decisions(memory_app: Observed) -> None:
    for _ in range(22):
        await _call(memory_app.address, _request("subject", "dave"))
    points = _points(memory_app.metrics)
    decisions = {(p.attributes["code"], p.attributes["reason"]): p.value
                 for p in points["ratelimit.decisions"]}  # fmt: skip
    assert decisions == {("OK", "ok"): 20, ("OVER_LIMIT", "over_limit"): 2}
    [duration] = points["ratelimit.request.duration"]
    assert duration.count == 22
    assert sum(duration.bucket_counts) == 22
    assert tuple(duration.explicit_bounds) == LATENCY_BUCKETS  # the configured ones
    # One store call per allowed request; the 2 denials came from the per-process cache
    # of buckets known to be empty, without a store call.
    [store] = points["ratelimit.store.duration"]
    assert store.count == 20
    assert tuple(store.explicit_bounds) == LATENCY_BUCKETS
    over = {p.attributes["rule"]: p.value for p in points["ratelimit.over_limit"]}
    assert over == {"per-subject": 2}
    [circuit] = points["ratelimit.circuit.closed"]
    assert circuit.value == 1
    reloads = {p.attributes["outcome"]: p.value for p in points["ratelimit.config.reloads"]}
    assert reloads == {"ok": 0, "rejected": 0}


async def _direct_call(servicer: RateLimitServicer, request: Any, context: Any) -> Any:
    """The servicer's handler called in-process, with bytes as the server hands them."""
    answer = await servicer.ShouldRateLimit(request.SerializeToString(), context)
    return rls_pb2.RateLimitResponse.FromString(answer)


class _CountingContext:
    """A ServicerContext stand-in that counts reads of the call's metadata."""

    def __init__(self) -> None:
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.reads += 1
        return METADATA

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def test_with_telemetry_off_ids_are_read_only_for_decision_lines(tmp_path: Path) -> None:
    decisions_file = tmp_path / "decisions.log"
    sink = AuditSink(str(decisions_file))
    # telemetry: off (the default); a stopped clock, so 20 calls see no refill
    app = App(make_settings(tmp_path), decision_sink=sink, clock=ManualClock())
    servicer = RateLimitServicer(app.service, app.telemetry)
    try:
        context = _CountingContext()
        for _ in range(20):
            ok = await _direct_call(servicer, _request("subject", "frank"), context)
            assert ok.overall_code == rls_pb2.RateLimitResponse.OK
            assert not ok.dynamic_metadata  # no decision id drawn for a plain OK
        assert context.reads == 0  # no trace context scanned, no span
        denied = await _direct_call(servicer, _request("subject", "frank"), context)
        assert denied.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
        assert context.reads == 1  # read once, for the decision line
        sink.flush()
        [line] = [json.loads(x) for x in decisions_file.read_text().splitlines()]
        assert (line["request_id"], line["trace_id"]) == ("req-77", TRACE_ID)
        assert line["decision_id"] == dict(denied.dynamic_metadata)["decision_id"]
    finally:
        await app.close()


@pytest.mark.redis
async def test_no_store_span_without_a_recording_parent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    spans = InMemorySpanExporter()
    telemetry = RateLimitTelemetry(
        setup_telemetry(
            "ratelimit", TelemetrySettings(), span_processors=[SimpleSpanProcessor(spans)]
        )
    )
    base = make_settings(tmp_path).model_dump(mode="json")
    settings = ServiceSettings.model_validate(
        {**base, "store": {"type": "redis", "url": redis_server.url}}
    )
    app = App(settings, telemetry=telemetry)
    try:
        await app.service.guard.probe()
        calls = [BucketCall("rl:span", BucketSpec(interval_us=1000.0, capacity=10), 1)]
        assert await app.service.guard.acquire(calls) is not None  # no current span
        assert spans.get_finished_spans() == ()
        with telemetry.tracer.start_as_current_span("parent"):
            assert await app.service.guard.acquire(calls) is not None
        assert [s.name for s in spans.get_finished_spans()] == [
            "ratelimit.store.acquire",
            "parent",
        ]
    finally:
        await app.close()


async def test_an_unsampled_parent_gets_no_span_but_the_decision_line_keeps_its_ids(
    memory_app: Observed,
) -> None:
    unsampled = (("traceparent", f"00-{TRACE_ID}-{PARENT}-00"), ("x-request-id", "req-78"))
    async with channel(memory_app.address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        for _ in range(21):
            denied = await stub.ShouldRateLimit(
                _request("subject", "dave"), metadata=unsampled, timeout=5
            )
    assert denied.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert memory_app.spans.get_finished_spans() == ()
    memory_app.sink.flush()
    [line] = [json.loads(x) for x in memory_app.decisions_file.read_text().splitlines()]
    assert (line["request_id"], line["trace_id"]) == ("req-78", TRACE_ID)
