"""Spans, metrics and decision lines of the rate-limit sidecar, with in-memory exporters."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from ratelimit_service.app import App
from ratelimit_service.descriptor_stats import DescriptorStats
from ratelimit_service.limits.bucket import BucketSpec
from ratelimit_service.servicer import RateLimitServicer
from ratelimit_service.settings import ServiceSettings
from ratelimit_service.store import BucketCall
from ratelimit_service.telemetry import RateLimitTelemetry, ReferenceSeries, reference_labels
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.settings import Stack
from sidecar_runtime.telemetry import TelemetrySettings, setup_telemetry
from tests.ratelimit_service.test_grpc import make_settings
from tests.support.grpc_clients import channel
from tests.support.processes import free_port
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
    assert attrs["ratelimit.descriptor_keys"] == ("subject",)  # the SDK keeps tuples
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


async def test_a_degraded_cluster_names_its_open_masters(memory_app: Observed) -> None:
    assert "ratelimit.store.node_open" not in _points(memory_app.metrics)  # none open
    # What the guard's per-node breakers report for a Redis Cluster with one master down.
    memory_app.app.service.guard.stats.open_nodes = ("10.0.0.2:7000",)
    [node] = _points(memory_app.metrics)["ratelimit.store.node_open"]
    assert (node.attributes["node"], node.value) == ("10.0.0.2:7000", 1)


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


# -- the reference's names, scraped from a real Prometheus endpoint ----------------------

EXPORT_RULES = """
domain: edge
descriptors:
  - key: subject
    rate_limit: {name: per-subject, unit: second, requests_per_unit: 10}
  - key: remote_address
    detailed_metric: true
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: path
    descriptors:
      - key: method
        rate_limit: {unit: second, requests_per_unit: 100}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _exporting_settings(tmp_path: Path, **extra: Any) -> ServiceSettings:
    rules = tmp_path / "export-rules.yaml"
    rules.write_text(EXPORT_RULES)
    base = make_settings(tmp_path).model_dump(mode="json")
    return ServiceSettings.model_validate({**base, "rules": str(rules), **extra})


@asynccontextmanager
async def _prometheus_app(settings: ServiceSettings) -> AsyncIterator[tuple[App, int, int]]:
    """An App whose metrics are served on a real Prometheus endpoint (prometheus_client's
    server, as `telemetry.prometheus_listen` starts it) on a free loopback port; yields
    the app, its gRPC port and the endpoint's port."""
    port = free_port()
    telemetry = RateLimitTelemetry(
        setup_telemetry("ratelimit", TelemetrySettings(prometheus_listen=f"127.0.0.1:{port}"))
    )
    app = App(settings, telemetry=telemetry, clock=ManualClock())
    grpc_port = await app.start()
    try:
        yield app, grpc_port, port
    finally:
        await app.close()  # shuts the endpoint down and unregisters the reader


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")
            )
            samples[(sample.name, labels)] = sample.value
    return text, samples


def _series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def _entries(*pairs: tuple[str, str], domain: str = "edge") -> Any:
    request = rls_pb2.RateLimitRequest(domain=domain)
    entries = request.descriptors.add().entries
    for key, value in pairs:
        entries.add(key=key, value=value)
    return request


async def test_the_reference_counters_are_scraped_under_its_prometheus_names(
    tmp_path: Path,
) -> None:
    settings = _exporting_settings(tmp_path, stats={"max_detailed_keys": 1})
    async with _prometheus_app(settings) as (_app, grpc_port, metrics_port):
        address = f"127.0.0.1:{grpc_port}"
        for _ in range(12):  # capacity 10, near from 8: 2 near, 2 over (the local cache)
            await _call(address, _request("subject", "alice"))
        await _call(address, _request("remote_address", "192.0.2.1"))  # a detailed key
        await _call(address, _request("remote_address", "192.0.2.2"))  # folded: bound 1
        await _call(address, _entries(("path", "/x"), ("method", "GET")))
        await _call(address, _entries(("subject", "x"), domain="nope"))
        text, samples = await asyncio.to_thread(_scrape, metrics_port)
    prefix = "ratelimit_service_rate_limit"
    subject = {"domain": "edge", "key1": "subject", "key2": ""}
    assert samples[_series(f"{prefix}_total_hits_total", **subject)] == 12
    assert samples[_series(f"{prefix}_within_limit_total", **subject)] == 10
    assert samples[_series(f"{prefix}_near_limit_total", **subject)] == 2
    assert samples[_series(f"{prefix}_over_limit_total", **subject)] == 2
    assert samples[_series(f"{prefix}_over_limit_with_local_cache_total", **subject)] == 2
    assert samples[_series(f"{prefix}_shadow_mode_total", **subject)] == 0
    detailed = {"domain": "edge", "key1": "remote_address_192_0_2_1", "key2": ""}
    assert samples[_series(f"{prefix}_total_hits_total", **detailed)] == 1
    base = {"domain": "edge", "key1": "remote_address", "key2": ""}
    assert samples[_series(f"{prefix}_total_hits_total", **base)] == 1
    assert samples[_series(f"{prefix}_detailed_keys_folded_total")] == 1
    nested = {"domain": "edge", "key1": "path", "key2": "method"}
    assert samples[_series(f"{prefix}_total_hits_total", **nested)] == 1
    assert samples[_series(f"{prefix}_domain_not_found_total", domain="nope")] == 1
    assert samples[_series("ratelimit_service_config_load_success_total")] == 1
    assert samples[_series("ratelimit_service_config_load_error_total")] == 0
    redis_error = _series("ratelimit_service_should_rate_limit_error_total", err_type="redis_error")
    assert samples[redis_error] == 0
    assert samples[_series("ratelimit_service_global_shadow_mode_total")] == 0
    assert f"# TYPE {prefix}_total_hits_total counter" in text
    assert "alice" not in text  # a value only shows in a detailed_metric key


async def test_with_stats_off_nothing_is_recorded_or_exported(tmp_path: Path) -> None:
    settings = _exporting_settings(tmp_path, stats={"enabled": False})
    async with _prometheus_app(settings) as (app, grpc_port, metrics_port):
        assert app.descriptor_stats is None
        await _call(f"127.0.0.1:{grpc_port}", _request("subject", "alice"))
        _, samples = await asyncio.to_thread(_scrape, metrics_port)
    names = {name for name, _ in samples}
    assert not any(name.startswith("ratelimit_service_rate_limit_") for name in names)
    assert "ratelimit_service_config_load_success_total" in names


@pytest.mark.parametrize(
    ("stat_key", "labels"),
    [
        ("edge.remote_address", {"domain": "edge", "key1": "remote_address"}),
        ("d.k1_v1.k2", {"domain": "d", "key1": "k1_v1", "key2": "k2"}),
        ("d.a.b.c.e", {"domain": "d", "key1": "a", "key2": "b"}),  # the mapper drops c.e
        ("edge.remote_address_192.0.2.1", {"domain": "edge", "key1": "remote_address_192_0_2_1"}),
        ("edge.path_a:b|c", {"domain": "edge", "key1": "path_a_b_c"}),
    ],
)
def test_stat_keys_get_the_labels_of_the_reference_mapper(
    stat_key: str, labels: dict[str, str]
) -> None:
    assert dict(reference_labels(stat_key)) == labels


def test_series_that_share_labels_are_summed_from_one_snapshot() -> None:
    stats = DescriptorStats()
    for key in ("d.a.b.c", "d.a.b.e", "d.a"):
        stats.record(
            key, key, hits=2, capacity=10, remaining=5, allowed=True, shadow=False, local=False
        )
    now = [0.0]
    series = ReferenceSeries(stats.snapshot, clock=lambda: now[0])
    current = series.current()
    assert {labels: counts[0] for labels, (_, counts) in current.items()} == {
        (("domain", "d"), ("key1", "a"), ("key2", "b")): 4,
        (("domain", "d"), ("key1", "a")): 2,
    }
    stats.record(
        "d.a", "d.a", hits=1, capacity=10, remaining=4, allowed=True, shadow=False, local=False
    )
    assert series.current() is current  # the same export: the same snapshot
    now[0] = 5.0
    assert series.current()[(("domain", "d"), ("key1", "a"))][1][0] == 3
