"""The gRPC adapter: envoy.service.auth.v3.Authorization/Check, on either server kind.

Reads the current CompiledConfig once per call (so a reload never mixes two configs in one
decision), decides, answers, and queues one audit line. Any unexpected error denies with
503: the sidecar never fails open. Each decision gets a decision id, returned to Envoy
(header and dynamic metadata) and written in the audit line and the span, so one grep
joins Envoy's access log, the audit log and the trace.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf.message import DecodeError

from authz_service.audit_line import CheckAudit
from authz_service.compiled_config import CompiledConfig
from authz_service.config_holder import ConfigHolder
from authz_service.envoy_adapter import CheckInputs, read_check_request
from authz_service.pipeline import INTERNAL_ERROR, NEEDS, Decision
from authz_service.policy import RequestFacts
from authz_service.telemetry import AuthzTelemetry
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.ids import DecisionIds
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.server import add_bytes_method, is_aio
from sidecar_runtime.telemetry import (
    DISABLED,
    TelemetrySettings,
    TraceParent,
    call_metadata,
    parse_trace_context,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
# What a caller whose bytes are no CheckRequest is told: no parser or exception names.
UNDECODABLE_REQUEST = "the body is not a CheckRequest"
_TRACE_KEYS = ("traceparent", "tracestate")
_TRACEPARENT_ONLY = ("traceparent",)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Check on either server kind: a coroutine on grpc.aio (`check_wire`), a plain
    function on grpcio's thread-pool server (`check_wire_sync`). Both run the same
    synchronous decision; only a token whose keys are not known yet waits, for a fetch
    on the event loop (awaited, or handed over through `bridge` from a worker thread)."""

    def __init__(
        self,
        holder: ConfigHolder,
        audit: AuditSink | None,
        telemetry: AuthzTelemetry | None = None,
        *,
        bridge: LoopBridge | None = None,
    ) -> None:
        self._holder = holder
        self._audit = audit
        self._t = telemetry or AuthzTelemetry(DISABLED, TelemetrySettings())
        self._ids = DecisionIds()
        self._bridge = bridge

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> bytes:
        """The serialized CheckResponse (see `add_to_server`)."""
        call = _Call(self._holder.current, self._ids.next())
        try:
            inputs = read_check_request(request)
            call.facts = inputs.facts
            traced, carrier = self._trace_plan(call, context)
            if traced:
                with self._t.check_span(carrier) as span:
                    decision = await _decide_awaiting_keys(call.compiled, inputs)
                    call.trace_id = self._end_span(span, decision, call)
            else:
                decision = await _decide_awaiting_keys(call.compiled, inputs)
        except Exception:
            log.exception("check failed; denying")
            decision = INTERNAL_ERROR
        return self._answer(call, decision)

    def check_sync(self, request: external_auth_pb2.CheckRequest, context: Any) -> bytes:
        """`Check` on a worker thread of the threaded server: the same decision, and a
        token that needs keys waits for their fetch on the event loop (at most the
        issuer's check_wait_seconds), then is decided with the keys there are."""
        call = _Call(self._holder.current, self._ids.next())
        try:
            inputs = read_check_request(request)
            call.facts = inputs.facts
            traced, carrier = self._trace_plan(call, context)
            if traced:
                with self._t.check_span(carrier) as span:
                    decision = self._decide_waiting_for_keys(call.compiled, inputs)
                    call.trace_id = self._end_span(span, decision, call)
            else:
                decision = self._decide_waiting_for_keys(call.compiled, inputs)
        except Exception:
            log.exception("check failed; denying")
            decision = INTERNAL_ERROR
        return self._answer(call, decision)

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

    def check_wire_sync(self, body: bytes, context: Any) -> bytes:
        """`check_wire` on a worker thread of the threaded server."""
        try:
            request = external_auth_pb2.CheckRequest.FromString(body)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_REQUEST)
        return self.check_sync(request, context)

    def _decide_waiting_for_keys(self, compiled: CompiledConfig, inputs: CheckInputs) -> Decision:
        authorizer = compiled.authorizer
        facts, authorization, cookie = inputs.facts, inputs.authorization, inputs.cookie
        decided = authorizer.decide_now(facts, authorization=authorization, cookie=cookie)
        if not isinstance(decided, NEEDS):
            self._on_loop(compiled, decided)
            return decided  # the hot path: the keys were known, no hop to the loop
        if self._bridge is None:
            raise RuntimeError("no event loop to fetch keys on")
        fetch = self._bridge.submit(compiled.fetch(decided))
        # concurrent.futures.TimeoutError is TimeoutError: past the wait, the fetch goes
        # on for later Checks and this one is decided with the keys there are (a deny if
        # its kid is still unknown). Any other error denies (the caller's 503).
        with contextlib.suppress(TimeoutError):
            fetch.result(timeout=compiled.fetch_wait(decided))
        fetched = authorizer.decide_fetched(facts, authorization=authorization, cookie=cookie)
        self._on_loop(compiled, fetched)
        return fetched

    def _on_loop(self, compiled: CompiledConfig, decision: Decision) -> None:
        """An API key's use recorded on the event loop (it may start a task there); no hop
        to the loop for any other decision."""
        used = compiled.key_used(decision)
        if used is not None and self._bridge is not None:
            self._bridge.call_soon(compiled.note_use, used)

    def _trace_plan(self, call: _Call, context: Any) -> tuple[bool, Mapping[str, str] | None]:
        """Whether this Check gets a span, and its parent's carrier; the trace id of an
        untraced Check (for the audit line) goes into `call`."""
        headers = call.facts.headers if call.facts is not None else {}
        if self._t.tracing:
            carrier = _trace_carrier(context, headers)
            parent = parse_trace_context(carrier.get("traceparent"))
            # Envoy decided not to sample: the sampler would drop this span anyway.
            if parent is None or parent.sampled or not self._t.drops_unsampled:
                return True, carrier if parent else None
        else:
            parent = _request_trace(context, headers)
        call.trace_id = parent.trace_id if parent else None
        return False, None

    @staticmethod
    def _end_span(span: Any, decision: Decision, call: _Call) -> str:
        if span.is_recording() and call.facts is not None:
            span.set_attributes(span_attributes(decision, call.decision_id, call.facts.method))
        return f"{span.get_span_context().trace_id:032x}"

    def _answer(self, call: _Call, decision: Decision) -> bytes:
        """The serialized answer, with the decision recorded and audited."""
        compiled = call.compiled
        request_id = call.facts.request_id if call.facts is not None else ""
        try:
            response = compiled.responses.wire(decision, request_id, call.decision_id)
        except Exception:
            # E.g. an identity with no exact header encoding: deny, never a lossy allow.
            log.exception("answer failed; denying")
            decision = INTERNAL_ERROR
            response = compiled.responses.wire(decision, request_id, call.decision_id)
        elapsed = time.perf_counter() - call.started
        self._t.record(
            "allow" if decision.allowed else "deny",
            decision.reason,
            elapsed,
            enforced=decision.enforced,
        )
        if self._audit is not None:
            self._audit.emit(
                CheckAudit(
                    time.time(), decision, call.facts, elapsed, call.decision_id, call.trace_id
                )
            )
        return response


class _Call:
    """One Check's state from its arrival to its answer."""

    __slots__ = ("compiled", "decision_id", "facts", "started", "trace_id")

    def __init__(self, compiled: CompiledConfig, decision_id: str) -> None:
        self.started = time.perf_counter()
        # Read once per call, so a reload never mixes two configs in one decision.
        self.compiled = compiled
        self.decision_id = decision_id
        self.facts: RequestFacts | None = None
        self.trace_id: str | None = None


async def _decide_awaiting_keys(compiled: CompiledConfig, inputs: CheckInputs) -> Decision:
    return await compiled.decide(
        inputs.facts, authorization=inputs.authorization, cookie=inputs.cookie
    )


def add_to_server(servicer: AuthorizationServicer, server: Any) -> None:
    """Register Check, as a coroutine on grpc.aio and as a plain function on the
    threaded server. It parses its own request (`check_wire`) and serializes its own
    answers (`ResponseBuilder.wire`), so grpc passes bytes both ways."""
    handler = servicer.check_wire if is_aio(server) else servicer.check_wire_sync
    add_bytes_method(server, SERVICE_NAME, "Check", handler)


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
        "authz.enforced": decision.enforced,
        "authz.reason": decision.reason,
        "authz.rule": decision.rule,
        "authz.decision_id": decision_id,
        "http.request.method": method,
        "http.response.status_code": decision.status,
    }
    if principal is not None:
        attributes["authz.issuer"] = principal.issuer
    return attributes
