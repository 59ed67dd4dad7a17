"""Spans, metrics and decision correlation with in-memory exporters and readers, on each
in-process server stack."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authz_service.compiled_config import load_compiled_config
from authz_service.config_holder import ConfigHolder
from authz_service.servicer import SERVICE_NAME, AuthorizationServicer, add_to_server
from authz_service.telemetry import AuthzTelemetry
from devstack.idp_keys import IdpKeys, mint_token
from devstack.idp_server import IdpServer
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import SystemClock
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.server import ServiceBinding, SidecarServer
from sidecar_runtime.settings import Stack
from sidecar_runtime.telemetry import TelemetrySettings, setup_telemetry
from tests.authz_service.conftest import AUDIENCE, ROUTES
from tests.authz_service.test_servicer import check_request
from tests.support.grpc_clients import channel

pytestmark = pytest.mark.grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@dataclass
class Observed:
    address: str
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    audit: AuditSink
    audit_file: Path
    issuer: str
    idp: IdpKeys


@pytest.fixture
async def observed(tmp_path: Path, idp: IdpKeys, stack: Stack) -> AsyncIterator[Observed]:
    server_idp = IdpServer(idp, port=0)  # issuer: http://127.0.0.1:<the bound port>
    issuer = server_idp.issuer
    server_idp.start()
    config = tmp_path / "authz.yaml"
    settings = {
        "server": {"listen": "127.0.0.1:0", "stack": stack},
        "issuers": [
            {
                "issuer": issuer,
                "discovery": True,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256", "EdDSA"],
                "jwks": {"unknown_kid_cooldown_seconds": 0},
            }
        ],
        "reload": {"watch": False},
    }
    config.write_text(yaml.safe_dump(settings) + ROUTES)
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = AuthzTelemetry(
        setup_telemetry(
            "authz",
            TelemetrySettings(),
            span_processors=[SimpleSpanProcessor(spans)],
            metric_readers=[metrics],
        ),
        TelemetrySettings(),
    )
    compiled = await load_compiled_config(config, clock=SystemClock(), telemetry=telemetry)
    holder = ConfigHolder(compiled, clock=SystemClock(), telemetry=telemetry)
    telemetry.attach(holder.snapshot)
    audit_file = tmp_path / "audit.log"
    audit = AuditSink(str(audit_file))
    bridge = LoopBridge(asyncio.get_running_loop())
    servicer = AuthorizationServicer(holder, audit, telemetry, bridge=bridge)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda s: add_to_server(servicer, s),
    )
    server = SidecarServer(compiled.settings.server, [binding])
    port = await server.start()
    spans.clear()  # the startup fetch is a root span of its own; tests look at requests
    yield Observed(f"127.0.0.1:{port}", spans, metrics, audit, audit_file, issuer, idp)
    await server.stop(0)
    await holder.current.close()
    audit.close()
    telemetry.telemetry.shutdown()
    server_idp.stop()


def _token(observed: Observed, **kw: Any) -> str:
    kw.setdefault("scope", "users:read")
    return mint_token(
        observed.idp, issuer=observed.issuer, audience=AUDIENCE, subject="alice", **kw
    )


async def _check(address: str, req: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    async with channel(address) as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        return await stub.Check(req, metadata=metadata, timeout=5)


async def test_check_span_is_child_of_envoys_trace_context(observed: Observed) -> None:
    token = _token(observed)
    req = check_request("/api/v1/users/alice", token=token)
    resp = await _check(observed.address, req, metadata=(("traceparent", TRACEPARENT),))
    [span] = [s for s in observed.spans.get_finished_spans() if s.name == "authz.Check"]
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_SPAN
    attrs = dict(span.attributes or {})
    assert attrs["authz.decision"] == "allow"
    assert attrs["authz.reason"] == "allowed"
    assert attrs["authz.rule"] == "get-user"
    assert attrs["authz.issuer"] == observed.issuer
    decision_id = resp.dynamic_metadata["decision_id"]
    assert attrs["authz.decision_id"] == decision_id
    observed.audit.flush()
    [line] = [json.loads(x) for x in observed.audit_file.read_text().splitlines()]
    assert (line["decision_id"], line["trace_id"]) == (decision_id, TRACE_ID)


async def test_request_traceparent_is_the_fallback_parent(observed: Observed) -> None:
    req = check_request("/api/v1/public/ping", headers={"traceparent": TRACEPARENT})
    await _check(observed.address, req)
    [span] = observed.spans.get_finished_spans()
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_SPAN


async def test_unknown_kid_fetch_is_a_child_span_of_the_check(observed: Observed) -> None:
    token = _token(observed, header={"kid": "rotated-away"})
    await _check(observed.address, check_request("/api/v1/users/alice", token=token))
    spans = {s.name: s for s in observed.spans.get_finished_spans()}
    check, fetch = spans["authz.Check"], spans["authz.jwks.fetch"]
    assert fetch.parent is not None
    assert fetch.parent.span_id == check.context.span_id
    assert dict(fetch.attributes or {})["authz.issuer"] == observed.issuer
    assert dict(check.attributes or {})["authz.reason"] == "unknown_key"


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


async def test_metrics_move_with_decisions(observed: Observed) -> None:
    token = _token(observed)
    for _ in range(3):
        await _check(observed.address, check_request("/api/v1/users/alice", token=token))
    await _check(observed.address, check_request("/api/v1/users/alice"))
    points = _points(observed.metrics)
    decisions = {(p.attributes["decision"], p.attributes["reason"]): p.value
                 for p in points["authz.decisions"]}  # fmt: skip
    assert decisions == {("allow", "allowed"): 3, ("deny", "no_credentials"): 1}
    [latency] = points["authz.check.duration"]
    assert latency.count == 4
    assert tuple(latency.explicit_bounds) == TelemetrySettings().latency_buckets
    assert sum(latency.bucket_counts) == 4
    cache = {p.attributes["result"]: p.value for p in points["authz.token_cache.lookups"]}
    assert cache == {"miss": 1, "hit": 2}
    keys = {p.attributes["issuer"]: p.value for p in points["authz.jwks.keys"]}
    assert keys == {observed.issuer: 2}
    fetches = {(p.attributes["issuer"], p.attributes["outcome"]): p.value
               for p in points["authz.jwks.fetches"]}  # fmt: skip
    assert fetches[(observed.issuer, "ok")] >= 2  # discovery document + JWKS
    reloads = {p.attributes["outcome"]: p.value for p in points["authz.config.reloads"]}
    assert reloads == {"ok": 0, "rejected": 0}


async def test_planted_token_never_reaches_spans_metrics_or_logs(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = _token(observed)
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for token in (good, tampered):
        for path in ("/api/v1/users/alice", "/api/v1/users/bob", "/nowhere"):
            await _check(observed.address, check_request(path, token=token,
                         headers={"cookie": f"session={token}"}))  # fmt: skip
    observed.audit.flush()
    spans = [s.to_json() for s in observed.spans.get_finished_spans()]
    metrics = observed.metrics.get_metrics_data()
    assert metrics is not None
    haystacks = {
        "spans": "\n".join(spans),
        "metrics": metrics.to_json(),
        "audit": observed.audit_file.read_text(),
        "logs": caplog.text,
    }
    assert spans
    for name, text in haystacks.items():
        for token in (good, tampered):
            assert token not in text, name
            assert token.split(".")[1] not in text, name  # not even the payload


async def test_an_unsampled_parent_gets_no_span_but_the_audit_keeps_its_trace_id(
    observed: Observed,
) -> None:
    token = _token(observed)
    unsampled = TRACEPARENT[:-2] + "00"
    req = check_request("/api/v1/users/alice", token=token)
    resp = await _check(observed.address, req, metadata=(("traceparent", unsampled),))
    assert resp.status.code == 0
    assert [s for s in observed.spans.get_finished_spans() if s.name == "authz.Check"] == []
    observed.audit.flush()
    [line] = [json.loads(x) for x in observed.audit_file.read_text().splitlines()]
    assert line["trace_id"] == TRACE_ID


async def test_no_trace_context_makes_a_root_span(observed: Observed) -> None:
    await _check(observed.address, check_request("/api/v1/public/ping"))
    [span] = [s for s in observed.spans.get_finished_spans() if s.name == "authz.Check"]
    assert span.parent is None
