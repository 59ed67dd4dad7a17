"""Hot-path stages timed in-process, without a profiler: where a request's microseconds go.

The profile (bench.profiling) says which functions are hot; cProfile's per-call cost
inflates them. These are the same stages called directly in a loop on the real compiled
config (the section-1 authz config; the bench rate-limit rules), one at a time, and timed
with `time.perf_counter` (best of 3 rounds of N calls): the microseconds a fix would save.
Each stage is measured on its own, so they need not add up to a request exactly (the
grpc.aio server's own per-call cost is the floor row of section 1).

Everything here reads product internals read-only; a stage whose API changed is recorded
as an error, not a failure of the bench.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import configs
from bench.context import Ctx, stage
from bench.messages import check_request, ratelimit_request
from bench.sidecars import Material

ROUNDS = 3


def _time_sync(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


async def _time_async(fn: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call."""
    best_wall = best_cpu = float("inf")
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await fn()
        best_wall = min(best_wall, (time.perf_counter() - wall) / n)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / n)
    return best_wall * 1e6, best_cpu * 1e6


class Stages:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def sync(self, label: str, fn: Callable[[], object], n: int) -> None:
        try:
            self.rows.append({"stage": label, "us": round(_time_sync(fn, n), 2)})
        except Exception as exc:
            self.rows.append({"stage": label, "error": f"{type(exc).__name__}: {exc}"})

    async def aio(self, label: str, fn: Callable[[], Awaitable[object]], n: int) -> None:
        try:
            wall, cpu = await _time_async(fn, n)
            self.rows.append({"stage": label, "us": round(wall, 2), "cpu_us": round(cpu, 2)})
        except Exception as exc:
            self.rows.append({"stage": label, "error": f"{type(exc).__name__}: {exc}"})

    def remainder(self, label: str, whole: str, parts: list[str]) -> None:
        by = {r["stage"]: r.get("us") for r in self.rows}
        if by.get(whole) is None or any(by.get(p) is None for p in parts):
            return
        rest = by[whole] - sum(by[p] for p in parts)
        self.rows.append({"stage": label, "us": round(rest, 2)})


class _Context:
    """Stands in for grpc's ServicerContext: the call's invocation metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


# Envoy's trace context on a sidecar call, as its tracer sends it: the last field says
# whether Envoy sampled the request (01) or not (00).
_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"
UNSAMPLED = _Context((("traceparent", _TRACE + "00"),))
SAMPLED = _Context((("traceparent", _TRACE + "01"),))
# (label, telemetry on?, the call's trace context): off against on, with Envoy's trace
# context on every call as its tracer sends it.
TELEMETRY_STAGES = (
    ("telemetry off, Envoy's traceparent on the call", False, UNSAMPLED),
    ("telemetry on (traces + metrics), Envoy sampled none", True, UNSAMPLED),
    ("telemetry on, Envoy sampled this call (one span each)", True, SAMPLED),
)
_TELEMETRY_SUBJECT = {
    "authz": "servicer.Check",
    "ratelimit": "servicer.ShouldRateLimit, memory store",
}


def telemetry_stage_names(kind: str) -> tuple[str, ...]:
    """The hot-path rows of TELEMETRY_STAGES for a sidecar kind (authz | ratelimit)."""
    return tuple(f"{_TELEMETRY_SUBJECT[kind]}, {label}" for label, _, _ in TELEMETRY_STAGES)


def telemetry_on(service: str) -> Any:
    """Traces and metrics as the sidecars set them up (a batch span processor, the own
    histograms), exported to memory instead of OTLP: the hot path's share of the cost."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sidecar_runtime.histograms import InMemoryReader
    from sidecar_runtime.telemetry import TelemetrySettings, setup_telemetry

    return setup_telemetry(
        service,
        TelemetrySettings(),
        span_processors=[BatchSpanProcessor(InMemorySpanExporter())],
        metric_readers=[InMemoryReader()],
    )


async def authz_stages(ctx: Ctx, material: Material, n: int) -> list[dict[str, Any]]:
    from envoy.service.auth.v3 import external_auth_pb2

    from authz_service.audit_line import CheckAudit, audit_record
    from authz_service.credentials import extract_bearer
    from authz_service.engine import EngineHolder, load_engine
    from authz_service.envoy_adapter import read_check_request
    from authz_service.policy import evaluate
    from authz_service.servicer import AuthorizationServicer
    from authz_service.telemetry import AuthzTelemetry
    from sidecar_runtime.audit import TimeFormatter
    from sidecar_runtime.clock import SystemClock
    from sidecar_runtime.ids import DecisionIds
    from sidecar_runtime.telemetry import TelemetrySettings

    s = Stages()
    cfg_dir = ctx.dir("configs", "hotpath")
    engines = {}
    for size in (10_000, 0):
        data = configs.authz_config(
            listen="127.0.0.1:1",
            jwks_file=material.jwks_file,
            audit_file=cfg_dir / "audit.jsonl",
            cache_size=size,
        )
        path = configs.write_yaml(cfg_dir / f"authz-{size}.yaml", data)
        engines[size] = await load_engine(path, clock=SystemClock())
    engine = engines[10_000]
    try:
        token = material.pools["RS256"][0]
        body = check_request(method="GET", path=f"/api/v1/users/{token.subject}", token=token.jwt)
        request = external_auth_pb2.CheckRequest.FromString(body)
        inputs = read_check_request(request)
        facts = inputs.facts
        authorizer = engine.authorizer
        decision = await authorizer.decide(
            facts, authorization=inputs.authorization, cookie=inputs.cookie
        )
        if not decision.allowed:
            raise RuntimeError(f"hot path request not allowed: {decision.reason}")
        principal = decision.principal
        match = authorizer.policy.match(facts)
        response = engine.responses.build(decision, facts.request_id, "d-1")

        s.sync(
            "CheckRequest.FromString (grpc deserializes)",
            lambda: external_auth_pb2.CheckRequest.FromString(body),
            n,
        )
        # Each call on a fresh message: reading one deletes its credential headers, so a
        # reused message would be a request without a token from the second call on.
        s.sync(
            "FromString + read_check_request",
            lambda: read_check_request(external_auth_pb2.CheckRequest.FromString(body)),
            n,
        )
        s.sync(
            "extract_bearer",
            lambda: extract_bearer(
                inputs.authorization, raw_query="", cookie_header="", cookie_names=frozenset()
            ),
            n,
        )
        s.sync("policy.match (31 routes)", lambda: authorizer.policy.match(facts), n)
        await s.aio("verifier.verify, cache hit", lambda: authorizer.verifier.verify(token.jwt), n)
        s.sync(
            "policy.evaluate (scope + CEL ownership)", lambda: evaluate(match, principal, facts), n
        )
        await s.aio(
            "authorizer.decide (all of the above)",
            lambda: authorizer.decide(
                facts, authorization=inputs.authorization, cookie=inputs.cookie
            ),
            n,
        )
        s.sync(
            "responses.build (allow)",
            lambda: engine.responses.build(decision, facts.request_id, "d-1"),
            n,
        )
        decision_id = DecisionIds().next()
        s.sync(
            "responses.wire (allow: the identity's byte template, id swapped in)",
            lambda: engine.responses.wire(decision, facts.request_id, decision_id),
            n,
        )
        s.sync("CheckResponse.SerializeToString", response.SerializeToString, n)
        s.sync(
            "audit entry (CheckAudit, per decision)",
            lambda: CheckAudit(time.time(), decision, facts, 0.001, "d-1", None),
            n,
        )
        entry = CheckAudit(time.time(), decision, facts, 0.001, "d-1", None)
        time_format = TimeFormatter()
        s.sync(
            "audit line (CheckAudit.json_line, once per batch on the loop)",
            lambda: entry.json_line(time_format),
            n,
        )
        record = audit_record(decision, facts, 0.001, "d-1", None)
        s.sync(
            "  the same line as a dict through json.dumps (for comparison)",
            lambda: json.dumps(record, separators=(",", ":"), default=str),
            n,
        )
        holder = EngineHolder(engine, clock=SystemClock())
        servicer = AuthorizationServicer(holder, None)
        fake = _Context()
        answer = await servicer.Check(external_auth_pb2.CheckRequest.FromString(body), fake)
        if external_auth_pb2.CheckResponse.FromString(answer).status.code != 0:
            raise RuntimeError("hot path request not allowed by the servicer")
        await s.aio(
            "servicer.Check, no audit (whole handler, with FromString)",
            lambda: servicer.Check(external_auth_pb2.CheckRequest.FromString(body), fake),
            n,
        )
        s.remainder(
            "  of which the servicer's own code (whole handler minus the stages above)",
            "servicer.Check, no audit (whole handler, with FromString)",
            ["FromString + read_check_request", "authorizer.decide (all of the above)"],
        )

        def check_with(telemetry: Any) -> Callable[[_Context], Awaitable[object]]:
            # servicer.Check (no audit); FromString inside, as grpc calls it
            t = None if telemetry is None else AuthzTelemetry(telemetry, TelemetrySettings())
            servicer = AuthorizationServicer(holder, None, t)
            return lambda c: servicer.Check(external_auth_pb2.CheckRequest.FromString(body), c)

        await _telemetry_stages(s, "authz", check_with, n)
        miss = engines[0].authorizer.verifier
        for alg in ("RS256", "EdDSA"):
            tok = material.pools[alg][1].jwt
            await s.aio(
                f"verifier.verify, no cache ({alg}: parse + signature + claims)",
                lambda t=tok: miss.verify(t),
                max(50, n // 10),
            )
    finally:
        for e in engines.values():
            await e.close()
    return s.rows


async def _telemetry_stages(
    s: Stages,
    kind: str,
    handler_with: Callable[[Any], Callable[[_Context], Awaitable[object]]],
    n: int,
) -> None:
    """One servicer's handler with telemetry off (`handler_with(None)`) and on, Envoy's
    traceparent on each call: the hot path's part of issue 5's telemetry cost, without
    the machine's noise."""
    telemetry = telemetry_on(kind)
    try:
        handlers = {False: handler_with(None), True: handler_with(telemetry)}
        stages = zip(telemetry_stage_names(kind), TELEMETRY_STAGES, strict=True)
        for name, (_, on, context) in stages:
            await s.aio(name, lambda h=handlers[on], c=context: h(c), n)
    finally:
        telemetry.shutdown()


async def ratelimit_stages(ctx: Ctx, n: int) -> list[dict[str, Any]]:
    from envoy.service.ratelimit.v3 import rls_pb2

    from ratelimit_service.app import build_service
    from ratelimit_service.config import load_rules
    from ratelimit_service.planner import plan
    from ratelimit_service.redis_store import RedisStore, open_redis_store
    from ratelimit_service.servicer import (
        RateLimitServicer,
        RequestReader,
        ResponseWriter,
        to_request,
        to_response,
    )
    from ratelimit_service.settings import load_settings
    from ratelimit_service.store import MemoryStore
    from ratelimit_service.telemetry import RateLimitTelemetry
    from sidecar_runtime.clock import SystemClock
    from sidecar_runtime.telemetry import TelemetrySettings

    s = Stages()
    assert ctx.redis is not None
    cfg_dir = ctx.dir("configs", "hotpath-rl")
    configs.write_yaml(cfg_dir / "rules" / "edge.yaml", configs.BENCH_RULES)
    path = configs.write_yaml(
        cfg_dir / "ratelimit.yaml",
        configs.ratelimit_settings(
            listen="127.0.0.1:1", rules_dir=cfg_dir / "rules", redis_url=ctx.redis.url
        ),
    )
    settings = load_settings(Path(path))
    rules = load_rules(settings.rules)
    clock = SystemClock()
    body = ratelimit_request([[("remote_address", "10.0.0.1")], [("subject", "u1")]])
    message = rls_pb2.RateLimitRequest.FromString(body)
    plain = to_request(message)
    memory = build_service(settings, rules, MemoryStore(clock), clock=clock)
    store = open_redis_store(settings.store)  # what the sidecar runs: the pipelined client
    redis_service = build_service(settings, rules, store, clock=clock)
    legacy = RedisStore.from_settings(settings.store)  # redis-py's generic command path
    legacy_service = build_service(settings, rules, legacy, clock=clock)
    try:
        await store.ping()
        await legacy.ping()
        decision = await memory.should_rate_limit(plain)
        response = to_response(decision, plain.domain)
        s.sync("RateLimitRequest.FromString", lambda: rls_pb2.RateLimitRequest.FromString(body), n)
        s.sync("to_request", lambda: to_request(message), n)
        domain = rules.domain(plain.domain)
        s.sync(
            "planner.plan (match 2 descriptors, build bucket keys)",
            lambda: plan(domain, plain, prefix=settings.key_prefix, hash_tags=False),
            n,
        )
        await s.aio("should_rate_limit, memory store", lambda: memory.should_rate_limit(plain), n)

        def should_with(telemetry: Any) -> Callable[[_Context], Awaitable[object]]:
            t = None if telemetry is None else RateLimitTelemetry(telemetry, TelemetrySettings())
            servicer = RateLimitServicer(memory, t)
            return lambda c: servicer.ShouldRateLimit(body, c)

        await _telemetry_stages(s, "ratelimit", should_with, n)
        await s.aio(
            "should_rate_limit, Redis (1 EVALSHA round trip; cpu_us is the sidecar's CPU)",
            lambda: redis_service.should_rate_limit(plain),
            n,
        )
        await s.aio(
            "should_rate_limit, Redis via redis-py's execute_command (for comparison)",
            lambda: legacy_service.should_rate_limit(plain),
            n,
        )
        await s.aio("store.ping (PING round trip, pipelined client)", store.ping, n)
        await s.aio("RedisStore.ping (PING round trip via redis-py)", legacy.ping, n)
        s.sync("to_response", lambda: to_response(decision, plain.domain), n)
        reader, writer = RequestReader(), ResponseWriter()
        s.sync("RequestReader.read (a body seen before: no parse)", lambda: reader.read(body), n)
        s.sync(
            "ResponseWriter.write (OK, 2 statuses, straight to bytes)",
            lambda: writer.write(decision, plain.domain),
            n,
        )
        s.sync("RateLimitResponse.SerializeToString", response.SerializeToString, n)
        try:
            import hiredis

            args = (
                "EVALSHA",
                "0" * 40,
                2,
                "rl:a",
                "rl:b",
                "take",
                2,
                1,
                1000000,
                1,
                1,
                1,
                1000000,
                1,
                1,
            )
            s.sync(
                "hiredis.pack_command (EVALSHA, 2 buckets)", lambda: hiredis.pack_command(args), n
            )
            conn = legacy._client.connection_pool.make_connection()  # type: ignore[union-attr]
            s.sync("redis-py Connection.pack_command (same)", lambda: conn.pack_command(*args), n)
        except Exception as exc:
            s.rows.append({"stage": "pack_command", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        await store.close()
        await legacy.close()
    return s.rows


def run_section(ctx: Ctx, material: Material) -> dict[str, Any]:
    n = 300 if ctx.smoke else 3000
    out: dict[str, Any] = {"calls_per_round": n, "rounds": ROUNDS}
    with stage(ctx, "hot-path stages"):
        try:
            out["authz"] = asyncio.run(authz_stages(ctx, material, n))
        except Exception as exc:
            out["authz_error"] = f"{type(exc).__name__}: {exc}"
        try:
            out["ratelimit"] = asyncio.run(ratelimit_stages(ctx, n))
        except Exception as exc:
            out["ratelimit_error"] = f"{type(exc).__name__}: {exc}"
    return out
