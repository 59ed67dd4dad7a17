"""The gRPC adapter: envoy.service.auth.v3.Authorization/Check.

Reads the current Engine once per call (so a reload never mixes two configs in one
decision), decides, answers, and queues one audit line. Any unexpected error denies with
503: the sidecar never fails open. Each decision gets a decision id, returned to Envoy
(header and dynamic metadata) and written in the audit line and the span, so one grep
joins Envoy's access log, the audit log and the trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf.message import DecodeError
from opentelemetry.trace import SpanKind

from authz_service.audit_line import CheckAudit
from authz_service.decision import INTERNAL_ERROR, Decision
from authz_service.engine import Engine, EngineHolder
from authz_service.envoy_adapter import CheckInputs, read_check_request
from authz_service.policy import RequestFacts
from authz_service.telemetry import AuthzTelemetry
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.ids import DecisionIds
from sidecar_runtime.server import add_bytes_method
from sidecar_runtime.telemetry import (
    DISABLED,
    TelemetrySettings,
    TraceParent,
    call_metadata,
    parent_context,
    parse_trace_context,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
# What a caller whose bytes are no CheckRequest is told: no parser or exception names.
UNDECODABLE_REQUEST = "the body is not a CheckRequest"
_TRACE_KEYS = ("traceparent", "tracestate")
_TRACEPARENT_ONLY = ("traceparent",)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self,
        holder: EngineHolder,
        audit: AuditSink | None,
        telemetry: AuthzTelemetry | None = None,
    ) -> None:
        self._holder = holder
        self._audit = audit
        self._t = telemetry or AuthzTelemetry(DISABLED, TelemetrySettings())
        self._ids = DecisionIds()

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> bytes:
        """The serialized CheckResponse (see `add_to_server`)."""
        started = time.perf_counter()
        engine = self._holder.current
        decision_id = self._ids.next()
        facts: RequestFacts | None = None
        trace_id: str | None = None
        try:
            inputs = read_check_request(request)
            facts = inputs.facts
            carrier: Mapping[str, str] | None = None
            if self._t.tracing:
                carrier = _trace_carrier(context, facts.headers)
                parent = parse_trace_context(carrier.get("traceparent"))
                # Envoy decided not to sample: the sampler would drop this span anyway.
                traced = parent is None or parent.sampled or not self._t.drops_unsampled
            else:
                parent = _request_trace(context, facts.headers)
                traced = False
            if traced:
                decision, trace_id = await self._traced_decide(
                    engine, inputs, carrier if parent else None, decision_id
                )
            else:
                decision = await _decide(engine, inputs)
                trace_id = parent.trace_id if parent else None
        except Exception:
            log.exception("check failed; denying")
            decision = INTERNAL_ERROR
        request_id = facts.request_id if facts is not None else ""
        try:
            response = engine.responses.wire(decision, request_id, decision_id)
        except Exception:
            # E.g. an identity with no exact header encoding: deny, never a lossy allow.
            log.exception("answer failed; denying")
            decision = INTERNAL_ERROR
            response = engine.responses.wire(decision, request_id, decision_id)
        elapsed = time.perf_counter() - started
        self._t.record("allow" if decision.allowed else "deny", decision.reason, elapsed)
        if self._audit is not None:
            self._audit.emit(
                CheckAudit(time.time(), decision, facts, elapsed, decision_id, trace_id)
            )
        return response

    async def check_wire(self, body: bytes, context: Any) -> bytes:
        """Check on the request's bytes, as grpc hands them over (see `add_to_server`).

        Bytes that are no CheckRequest are the caller's error, answered INVALID_ARGUMENT
        with a fixed message (as the rate limiter's RequestReader does): grpc's own
        deserializer would answer with the parser's exception class and text."""
        try:
            request = external_auth_pb2.CheckRequest.FromString(body)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_REQUEST)
        return await self.Check(request, context)

    async def _traced_decide(
        self,
        engine: Engine,
        inputs: CheckInputs,
        carrier: Mapping[str, str] | None,
        decision_id: str,
    ) -> tuple[Decision, str]:
        parent = parent_context(carrier) if carrier is not None else None
        with self._t.tracer.start_as_current_span(
            "authz.Check", context=parent, kind=SpanKind.SERVER
        ) as span:
            decision = await _decide(engine, inputs)
            if span.is_recording():
                span.set_attributes(span_attributes(decision, decision_id, inputs.facts.method))
            return decision, f"{span.get_span_context().trace_id:032x}"


def _decide(engine: Engine, inputs: CheckInputs) -> Coroutine[Any, Any, Decision]:
    return engine.authorizer.decide(
        inputs.facts, authorization=inputs.authorization, cookie=inputs.cookie
    )


def add_to_server(servicer: AuthorizationServicer, server: Any) -> None:
    """Register Check. It parses its own request (`check_wire`), and its answers are
    already serialized (allows come from byte templates), so they go out as they are."""
    add_bytes_method(server, SERVICE_NAME, "Check", servicer.check_wire)


def _trace_carrier(context: Any, headers: Mapping[str, str]) -> Mapping[str, str]:
    """W3C trace context: Envoy's ext_authz call (gRPC metadata) first, else the request's."""
    found = call_metadata(context, _TRACE_KEYS)
    if "traceparent" in found:
        return found
    return {k: headers[k] for k in _TRACE_KEYS if k in headers}


def _request_trace(context: Any, headers: Mapping[str, str]) -> TraceParent | None:
    """The trace for the audit line when this sidecar does not trace: the request's
    `traceparent` (one lookup), else the one on Envoy's gRPC call (the same trace)."""
    value = headers.get("traceparent")
    if value is None:
        value = call_metadata(context, _TRACEPARENT_ONLY).get("traceparent")
    return parse_trace_context(value)


def span_attributes(decision: Decision, decision_id: str, method: str) -> dict[str, Any]:
    """Span attributes: the decision and why; never a token, a subject or a path."""
    principal = decision.principal
    attributes: dict[str, Any] = {
        "authz.decision": "allow" if decision.allowed else "deny",
        "authz.reason": decision.reason,
        "authz.rule": decision.rule,
        "authz.decision_id": decision_id,
        "http.request.method": method,
        "http.response.status_code": decision.status,
    }
    if principal is not None:
        attributes["authz.issuer"] = principal.issuer
    return attributes
