"""The gRPC edge: envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit.

The only module that touches Envoy's generated types (xds-protos): it turns the request
into plain values, lets the service decide, and turns the decision into the response.

Response contract (ARCHITECTURE.md 5b): `overall_code`; one status per request descriptor
with `current_limit`, `limit_remaining` and `duration_until_reset` (the time until the
bucket is full again) so Envoy can emit `x-ratelimit-*` headers; `retry-after` (seconds
until the request could pass) in `response_headers_to_add` on OVER_LIMIT; and in
`dynamic_metadata` (Envoy puts it under `envoy.filters.http.ratelimit`) the denying rule:
`{"decision": "over_limit", "rule": "...", "domain": "..."}`; shadow-mode would-be
denials and failure-mode answers are flagged the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from opentelemetry.trace import SpanKind

from ratelimit_service.decision_log import Correlation, current_call
from ratelimit_service.errors import InvalidRequestError
from ratelimit_service.planner import MAX_UINT32, DescriptorRequest, Override, Request
from ratelimit_service.service import Code, Decision, RateLimitService
from ratelimit_service.telemetry import RateLimitTelemetry
from sidecar_runtime.correlation import DecisionContext
from sidecar_runtime.ids import DecisionIds
from sidecar_runtime.server import ServiceBinding
from sidecar_runtime.telemetry import (
    call_metadata,
    parent_context,
    parse_trace_context,
    plainly_unsampled,
)

log = logging.getLogger(__name__)

SERVICE_NAME: str = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name

# Bounds on what one request may carry (Envoy sends a handful of small descriptors).
MAX_DESCRIPTORS = 64
MAX_ENTRIES = 32
MAX_TEXT_CHARS = 4096

_Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
UNIT_BY_ENUM: Mapping[int, str] = {
    number: name.lower() for name, number in _Unit.items() if name != "UNKNOWN"
}
ENUM_BY_UNIT: Mapping[str, int] = {name: value for value, name in UNIT_BY_ENUM.items()}


def to_request(message: Any) -> Request:
    """A plain Request from a RateLimitRequest; InvalidRequestError if it is malformed."""
    domain = message.domain
    if not domain:
        raise InvalidRequestError("domain must not be empty")
    descriptors = message.descriptors
    if not descriptors:
        raise InvalidRequestError("descriptors must not be empty")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise InvalidRequestError(f"more than {MAX_DESCRIPTORS} descriptors")
    return Request(domain, tuple([_descriptor(d) for d in descriptors]), message.hits_addend)


def _descriptor(message: Any) -> DescriptorRequest:
    entries = message.entries
    if len(entries) > MAX_ENTRIES:
        raise InvalidRequestError(f"a descriptor has more than {MAX_ENTRIES} entries")
    pairs = []
    for entry in entries:
        key, value = entry.key, entry.value
        if len(key) > MAX_TEXT_CHARS or len(value) > MAX_TEXT_CHARS:
            raise InvalidRequestError(
                f"descriptor keys and values are limited to {MAX_TEXT_CHARS} characters"
            )
        pairs.append((key, value))
    hits = message.hits_addend.value if message.HasField("hits_addend") else None
    override = None
    if message.HasField("limit"):
        limit = message.limit
        override = Override(limit.requests_per_unit, UNIT_BY_ENUM.get(limit.unit, ""))
    return DescriptorRequest(tuple(pairs), hits, override)


def to_response(decision: Decision, domain: str, decision_id: str = "") -> Any:
    """A RateLimitResponse for a decision."""
    response = rls_pb2.RateLimitResponse(overall_code=int(decision.code))
    add_status = response.statuses.add
    for status in decision.statuses:
        out = add_status(code=int(status.code), limit_remaining=min(status.remaining, MAX_UINT32))
        limit = status.limit
        if limit is not None:
            current = out.current_limit
            if limit.name:
                current.name = limit.name
            current.requests_per_unit = limit.requests_per_unit
            current.unit = ENUM_BY_UNIT[limit.unit]
        if status.reset_us > 0:
            seconds, micros = divmod(status.reset_us, 1_000_000)
            reset = out.duration_until_reset
            if seconds:
                reset.seconds = seconds
            reset.nanos = micros * 1000
    if decision.code is Code.OVER_LIMIT:
        response.response_headers_to_add.add(key="retry-after", value=str(decision.retry_after_s))
    if decision.reason != "ok" or decision.metadata:
        fields: dict[str, Any] = {"decision": decision.reason, "domain": domain}
        if decision_id:
            fields["decision_id"] = decision_id
        if decision.rule:
            fields["rule"] = decision.rule
        if decision.metadata:
            fields["metadata"] = dict(decision.metadata)
        response.dynamic_metadata.update(fields)
    return response


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(
        self, service: RateLimitService, telemetry: RateLimitTelemetry | None = None
    ) -> None:
        self._service = service
        self._t = telemetry or RateLimitTelemetry()
        self._ids = DecisionIds()

    async def ShouldRateLimit(  # noqa: N802 - the gRPC method name
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        started = time.perf_counter()
        try:
            plain = to_request(request)
        except InvalidRequestError as exc:
            await context.abort(exc.grpc_status, str(exc))
        call: Correlation
        if self._t.tracing:
            carrier = _metadata(context)
            if self._t.drops_unsampled and plainly_unsampled(carrier.get("traceparent")):
                # Envoy decided not to sample: the sampler would drop this span anyway, and
                # the decision id is drawn only if a line or the response needs it.
                call = _LazyCall(self._ids, context, started, carried=carrier)
                decision = await self._decide(plain, call)
            else:
                decision, call = await self._traced(plain, carrier, started)
        else:
            # Telemetry off: no span, and the call's metadata is read (for the request and
            # trace ids) only if a decision line is written.
            call = _LazyCall(self._ids, context, started)
            decision = await self._decide(plain, call)
        needs_id = decision.reason != "ok" or decision.metadata
        response = to_response(decision, plain.domain, call.decision_id if needs_id else "")
        self._t.record(decision.code.name, decision.reason, started)
        return response

    async def _traced(
        self, plain: Request, carrier: dict[str, str], started: float
    ) -> tuple[Decision, Correlation]:
        parent = parse_trace_context(carrier.get("traceparent"))
        context_in = parent_context(carrier) if parent is not None else None
        with self._t.tracer.start_as_current_span(
            "ratelimit.ShouldRateLimit", context=context_in, kind=SpanKind.SERVER
        ) as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            request_id = carrier.get("x-request-id", "")
            call = DecisionContext(self._ids.next(), request_id, trace_id, started)
            decision = await self._decide(plain, call)
            if span.is_recording():
                span.set_attributes(span_attributes(decision, plain, call.decision_id))
        return decision, call

    async def _decide(self, plain: Request, call: Correlation) -> Decision:
        token = current_call.set(call)
        try:
            return await self._service.should_rate_limit(plain)
        finally:
            current_call.reset(token)


_CARRIED = ("traceparent", "tracestate", "x-request-id")


def _metadata(context: Any) -> dict[str, str]:
    """Trace context (and a request id, if Envoy sent one) from the call's metadata."""
    return call_metadata(context, _CARRIED)


class _LazyCall:
    """One call's ids, for decision lines: the decision id is drawn and the metadata read
    only when asked for (most calls write no line and return no decision id)."""

    __slots__ = ("_carried", "_context", "_decision_id", "_ids", "started")

    def __init__(
        self,
        ids: DecisionIds,
        context: Any,
        started: float,
        *,
        carried: dict[str, str] | None = None,
    ) -> None:
        self._ids = ids
        self._context = context
        self.started = started
        self._decision_id = ""
        self._carried = carried

    @property
    def decision_id(self) -> str:
        if not self._decision_id:
            self._decision_id = self._ids.next()
        return self._decision_id

    @property
    def request_id(self) -> str:
        return self._metadata().get("x-request-id", "")

    @property
    def trace_id(self) -> str | None:
        parsed = parse_trace_context(self._metadata().get("traceparent"))
        return parsed.trace_id if parsed else None

    def _metadata(self) -> dict[str, str]:
        if self._carried is None:
            self._carried = _metadata(self._context)
        return self._carried


def span_attributes(decision: Decision, request: Request, decision_id: str) -> dict[str, Any]:
    """The decision and the descriptor *keys*; values may be personal data, so never them."""
    keys = sorted({key for d in request.descriptors for key, _ in d.entries})
    return {
        "ratelimit.code": decision.code.name,
        "ratelimit.reason": decision.reason,
        "ratelimit.rule": decision.rule,
        "ratelimit.domain": request.domain,
        "ratelimit.descriptor_keys": keys,
        "ratelimit.decision_id": decision_id,
    }


def binding(
    service: RateLimitService, telemetry: RateLimitTelemetry | None = None
) -> ServiceBinding:
    """The ServiceBinding that registers the servicer with the shared SidecarServer."""
    servicer = RateLimitServicer(service, telemetry)
    return ServiceBinding(
        name=SERVICE_NAME,
        register=lambda server: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
            servicer, server
        ),
    )
