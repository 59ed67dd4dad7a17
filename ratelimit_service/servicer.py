"""The gRPC edge: envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, on either
server kind.

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

import contextlib
import logging
import time
from collections.abc import Generator, Mapping
from typing import Any, cast

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.message import DecodeError

from ratelimit_service.decision import Code, Decision
from ratelimit_service.decision_log import Correlation, current_call
from ratelimit_service.errors import InvalidRequestError
from ratelimit_service.limits.planner import MAX_UINT32, DescriptorRequest, Override, Request
from ratelimit_service.limits.rules import Limit
from ratelimit_service.service import RateLimitService, StoreAnswer, StoreRound
from ratelimit_service.telemetry import RateLimitTelemetry
from sidecar_runtime.correlation import DecisionContext
from sidecar_runtime.ids import DecisionIds
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.server import BytesHandler, ServiceBinding, add_bytes_method, is_aio
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
    """A plain Request from a RateLimitRequest; InvalidRequestError if it is malformed.

    Envoy's proto rules (validate.rules; grpc does not check them): every descriptor has
    at least one entry (`entries` min_items 1) and every entry a key (`key` min_len 1); a
    value may be empty. The domain and the descriptor list must not be empty, as in the
    reference service. The messages name the rule broken, never a value sent."""
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
    if not entries:
        raise InvalidRequestError("a descriptor has no entries")
    if len(entries) > MAX_ENTRIES:
        raise InvalidRequestError(f"a descriptor has more than {MAX_ENTRIES} entries")
    pairs = []
    for entry in entries:
        key, value = entry.key, entry.value
        if not key:
            raise InvalidRequestError("a descriptor entry has an empty key")
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


class RequestReader:
    """Request bytes to a plain Request, with the requests that repeat remembered.

    Envoy sends the same few descriptor sets call after call (one client address, one
    subject), and parsing them is the same work each time. A Request is immutable, and
    the key is the exact bytes, so a remembered answer is the parse's own. Bounded: at
    most `max_entries` bodies of at most `max_body_bytes` each; the oldest goes first.
    Malformed bodies are never remembered: each raises InvalidRequestError again.
    """

    def __init__(self, *, max_entries: int = 4096, max_body_bytes: int = 1024) -> None:
        self._max_entries = max_entries
        self._max_body_bytes = max_body_bytes
        self._known: dict[bytes, Request] = {}

    def __len__(self) -> int:
        return len(self._known)

    def read(self, body: bytes) -> Request:
        known = self._known
        plain = known.get(body)
        if plain is not None:
            return plain
        try:
            message = rls_pb2.RateLimitRequest.FromString(body)
        except DecodeError as exc:
            raise InvalidRequestError("the body is not a RateLimitRequest") from exc
        plain = to_request(message)
        if len(body) <= self._max_body_bytes:
            if len(known) >= self._max_entries:
                # dicts keep insertion order: the oldest (another thread of the `sync`
                # stack may have dropped it, or changed the dict, meanwhile).
                with contextlib.suppress(KeyError, RuntimeError):
                    del known[next(iter(known))]
            known[body] = plain
        return plain


def _set_current_limit(current: Any, limit: Limit) -> None:
    if limit.name:
        current.name = limit.name
    current.requests_per_unit = limit.requests_per_unit
    current.unit = ENUM_BY_UNIT[limit.unit]


def to_response(decision: Decision, domain: str, decision_id: str = "") -> Any:
    """A RateLimitResponse for a decision."""
    response = rls_pb2.RateLimitResponse(overall_code=int(decision.code))
    add_status = response.statuses.add
    for status in decision.statuses:
        out = add_status(code=int(status.code), limit_remaining=min(status.remaining, MAX_UINT32))
        limit = status.limit
        if limit is not None:
            _set_current_limit(out.current_limit, limit)
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


Answer = Generator[StoreRound, StoreAnswer, bytes]


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """ShouldRateLimit on either server kind: a coroutine on grpc.aio, a plain function
    on grpcio's thread-pool server (`should_rate_limit_sync`, which needs `bridge`). One
    answer for both (`_answer`): a generator that yields the store round trip its
    decision needs, if any, and returns the serialized response; each server kind makes
    the round trip its own way (awaited, or made from the worker thread)."""

    def __init__(
        self,
        service: RateLimitService,
        telemetry: RateLimitTelemetry | None = None,
        *,
        bridge: LoopBridge | None = None,
    ) -> None:
        self._service = service
        self._t = telemetry or RateLimitTelemetry()
        self._ids = DecisionIds()
        self._reader = RequestReader()
        self.bridge = bridge

    async def ShouldRateLimit(  # noqa: N802 - the gRPC method name
        self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        """The serialized answer to the request's bytes (see `add_to_server`): repeated
        requests skip parsing and common answers skip building a message."""
        started = time.perf_counter()
        try:
            plain = self._reader.read(body)
        except InvalidRequestError as exc:
            await context.abort(exc.grpc_status, str(exc))
        answer = self._answer(plain, context, started)
        try:
            step = next(answer)
            while True:
                step = answer.send(await self._service.guard.acquire(step.calls))
        except StopIteration as done:
            return cast(bytes, done.value)
        finally:
            answer.close()

    def should_rate_limit_sync(self, body: bytes, context: Any) -> bytes:
        """`ShouldRateLimit` on a worker thread: the decision here, and the store round
        trip through the guard from this thread (on a Redis connection of its own, or
        handed to the event loop for stores that live there)."""
        started = time.perf_counter()
        try:
            plain = self._reader.read(body)
        except InvalidRequestError as exc:
            context.abort(exc.grpc_status, str(exc))
        guard, bridge = self._service.guard, self.bridge
        if bridge is None:
            raise RuntimeError("a worker-thread handler needs the loop bridge")
        answer = self._answer(plain, context, started)
        try:
            step = next(answer)
            while True:
                step = answer.send(guard.acquire_on_thread(step.calls, bridge))
        except StopIteration as done:
            return cast(bytes, done.value)
        finally:
            answer.close()

    def _answer(self, plain: Request, context: Any, started: float) -> Answer:
        call: Correlation
        if self._t.tracing:
            carrier = _metadata(context)
            if self._t.drops_unsampled and plainly_unsampled(carrier.get("traceparent")):
                # Envoy decided not to sample: the sampler would drop this span anyway, and
                # the decision id is drawn only if a line or the response needs it.
                call = _LazyCall(self._ids, context, started, carried=carrier)
                decision = yield from self._decide(plain, call)
            else:
                decision, call = yield from self._traced(plain, carrier, started)
        else:
            # Telemetry off: no span, and the call's metadata is read (for the request and
            # trace ids) only if a decision line is written.
            call = _LazyCall(self._ids, context, started)
            decision = yield from self._decide(plain, call)
        needs_id = decision.reason != "ok" or decision.metadata
        self._t.record(decision.code.name, decision.reason, started)
        response = to_response(decision, plain.domain, call.decision_id if needs_id else "")
        wire: bytes = response.SerializeToString()
        return wire

    def _traced(
        self, plain: Request, carrier: dict[str, str], started: float
    ) -> Generator[StoreRound, StoreAnswer, tuple[Decision, Correlation]]:
        parent = parse_trace_context(carrier.get("traceparent"))
        context_in = parent_context(carrier) if parent is not None else None
        with self._t.server_span(context_in) as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            request_id = carrier.get("x-request-id", "")
            call = DecisionContext(self._ids.next(), request_id, trace_id, started)
            decision = yield from self._decide(plain, call)
            if span.is_recording():
                span.set_attributes(span_attributes(decision, plain, call.decision_id))
        return decision, call

    def _decide(
        self, plain: Request, call: Correlation
    ) -> Generator[StoreRound, StoreAnswer, Decision]:
        """The decision; the store round trip it needs, if any, is yielded (the span and
        the call's correlation stay current meanwhile, for the store's child span)."""
        token = current_call.set(call)
        try:
            step = self._service.decide_now(plain)
            if isinstance(step, Decision):
                return step
            outcomes = yield step
            return self._service.finish(step, outcomes)
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


def binding(servicer: RateLimitServicer) -> ServiceBinding:
    """The ServiceBinding that registers the servicer with the shared SidecarServer."""
    return ServiceBinding(
        name=SERVICE_NAME, register=lambda server: add_to_server(servicer, server)
    )


def add_to_server(servicer: RateLimitServicer, server: Any) -> None:
    """Register ShouldRateLimit with bytes in and out (the servicer parses, and
    remembers, requests and serializes answers itself): a coroutine on grpc.aio, a plain
    function on the threaded server."""
    if is_aio(server):
        handler: BytesHandler = servicer.ShouldRateLimit
    else:
        handler = servicer.should_rate_limit_sync
    add_bytes_method(server, SERVICE_NAME, "ShouldRateLimit", handler)
