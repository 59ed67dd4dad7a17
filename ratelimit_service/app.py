"""Wiring: settings -> store, service, gRPC server, health probe, rule reload, the
reference's per-descriptor stats and the debug listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ratelimit_service.circuit_breaker import CircuitBreaker
from ratelimit_service.debug_http import DebugListener, DebugSources, servicer_call
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.descriptor_stats import DescriptorStats
from ratelimit_service.empty_buckets import EmptyBucketCache
from ratelimit_service.guarded_store import GuardedStore, HealthCallback
from ratelimit_service.instruments import RateLimitSnapshot
from ratelimit_service.limits.config import load_rules
from ratelimit_service.limits.rules import RuleSet
from ratelimit_service.service import RateLimitService
from ratelimit_service.servicer import RateLimitServicer, binding
from ratelimit_service.settings import ServiceSettings, StatsSettings, StoreSettings, host_port
from ratelimit_service.store import BucketStore
from ratelimit_service.stores.memory import MemoryStore
from ratelimit_service.stores.redis_store import FailureMode, open_redis_store
from ratelimit_service.telemetry import RateLimitTelemetry
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import Clock, SystemClock
from sidecar_runtime.errors import ConfigError
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.reload import FileWatcher
from sidecar_runtime.server import SidecarServer, serve_until_signalled
from sidecar_runtime.telemetry import setup_telemetry
from sidecar_runtime.workers import worker_index

log = logging.getLogger(__name__)


def build_store(
    settings: StoreSettings,
    clock: Clock,
    *,
    failure_mode: FailureMode = "fail_open",
) -> BucketStore:
    """The configured store. `failure_mode` (the service's) is how a Redis Cluster store
    counts the calls of a failed node in its all-or-nothing rule."""
    if settings.type == "memory":
        log.warning(
            "memory store: limits are per process, not shared between replicas or workers",
            extra={"fields": {"event": "memory_store"}},
        )
        return MemoryStore(clock)
    return open_redis_store(settings, failure_mode=failure_mode)


def build_service(
    settings: ServiceSettings,
    rules: RuleSet,
    store: BucketStore,
    *,
    clock: Clock,
    on_health: HealthCallback | None = None,
    telemetry: RateLimitTelemetry | None = None,
    sink: AuditSink | None = None,
    descriptor_stats: DescriptorStats | None = None,
) -> RateLimitService:
    decisions = DecisionLog.from_env(
        lines_per_second=settings.log.max_lines_per_second,
        clock=clock,
        hash_key_env=settings.log.hash_key_env,
        sink=sink,
    )
    call_timeout = settings.store.timeouts.call_ms / 1000
    breaker = settings.circuit_breaker
    guard = GuardedStore(
        store,
        breaker=CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            failure_span_seconds=breaker.failure_span_seconds,
            open_seconds=breaker.open_seconds,
            clock=clock,
        ),
        decisions=decisions,
        failure_mode=settings.failure_mode,
        call_timeout_s=call_timeout,
        probe_timeout_s=max(0.25, call_timeout),
        max_in_flight=settings.max_in_flight,
        on_health=on_health,
        telemetry=telemetry,
    )
    cache = settings.empty_bucket_cache
    return RateLimitService(
        rules,
        guard,
        decisions=decisions,
        failure_mode=settings.failure_mode,
        key_prefix=settings.key_prefix,
        cache=EmptyBucketCache(max_entries=cache.max_entries, clock=clock)
        if cache.enabled
        else None,
        descriptor_stats=descriptor_stats,
        global_shadow_mode=settings.global_shadow_mode,
        global_quota_mode=settings.global_quota_mode,
    )


def build_descriptor_stats(settings: StatsSettings) -> DescriptorStats | None:
    """The reference's per-descriptor counters, or None when `stats.enabled` is false
    (then nothing is recorded at all)."""
    if not settings.enabled:
        return None
    return DescriptorStats(
        near_limit_ratio=settings.near_limit_ratio, max_detailed_keys=settings.max_detailed_keys
    )


def debug_listen(listen: str, worker: int) -> str:
    """Worker i of `workers: N` listens on PORT + i, as the Prometheus endpoint does, so
    each worker's rules and counters can be read."""
    host, port = host_port(listen)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + worker}"


class App:
    """One running sidecar process (or worker)."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        clock: Clock | None = None,
        store: BucketStore | None = None,
        reuse_port: bool = False,
        telemetry: RateLimitTelemetry | None = None,
        decision_sink: AuditSink | None = None,
    ) -> None:
        self.settings = settings
        clock = clock or SystemClock()
        rules = load_rules(settings.rules, merge_domains=settings.merge_domains)
        self.store = store or build_store(settings.store, clock, failure_mode=settings.failure_mode)
        self.telemetry = telemetry or RateLimitTelemetry()
        self.decision_sink = decision_sink
        self.descriptor_stats = build_descriptor_stats(settings.stats)
        self.service = build_service(
            settings,
            rules,
            self.store,
            clock=clock,
            on_health=self._health,
            telemetry=self.telemetry,
            sink=decision_sink,
            descriptor_stats=self.descriptor_stats,
        )
        stats_source = self.descriptor_stats.snapshot if self.descriptor_stats else None
        self.telemetry.attach(self.snapshot, stats_source)
        # On the sync stack, handlers on worker threads reach the store through this
        # process's event loop; `start` binds it.
        self.bridge = LoopBridge()
        servicer = RateLimitServicer(self.service, self.telemetry, bridge=self.bridge)
        self.server = SidecarServer(settings.server, [binding(servicer)], reuse_port=reuse_port)
        self.debug = self._debug_listener(servicer)
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: FileWatcher | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0

    def snapshot(self) -> RateLimitSnapshot:
        """The counters telemetry exports (the `SnapshotSource` it is attached to)."""
        guard, stats = self.service.guard, self.service.stats
        return RateLimitSnapshot(
            store_errors=guard.stats.store_errors,
            failure_mode_answers=guard.stats.failure_mode_answers,
            circuit_closed=guard.healthy,
            open_nodes=guard.stats.open_nodes,
            over_limit_by_rule=dict(stats.over_limit_by_rule),
            shadow_by_rule=dict(stats.shadow_by_rule),
            reloads_ok=self.reloads_ok,
            reloads_failed=self.reloads_failed,
            global_shadow_mode=stats.global_shadow_mode,
        )

    def _debug_listener(self, servicer: RateLimitServicer) -> DebugListener | None:
        """The loopback debug listener, if `debug.listen` is set; /json calls `servicer`
        through the entry point of this process's server stack."""
        listen = self.settings.debug.listen
        if listen is None:
            return None
        stats = self.descriptor_stats
        sources = DebugSources(
            rules=lambda: self.service.rules,
            should_rate_limit=servicer_call(
                servicer, aio=self.settings.server.stack != "sync", bridge=self.bridge
            ),
            stats=stats.snapshot if stats is not None else None,
            global_shadow_mode=self.settings.global_shadow_mode,
            global_quota_mode=self.settings.global_quota_mode,
        )
        return DebugListener(debug_listen(listen, worker_index() or 0), sources)

    async def _health(self, serving: bool) -> None:
        await self.server.set_serving(serving)

    async def start(self) -> int:
        """Bind and serve; returns the port. Health follows the store from the first probe."""
        self.bridge.bind(asyncio.get_running_loop())
        port = await self.server.start(serving=False)
        # Health says SERVING only once the store has answered (or at once for memory).
        await self.service.guard.probe()
        await self.server.set_serving(self.service.guard.healthy)
        loop = asyncio.get_running_loop()
        probe_every = self.settings.circuit_breaker.probe_interval_seconds
        self._tasks.append(loop.create_task(self.service.guard.watch(probe_every)))
        if self.settings.reload.watch:
            self._watcher = FileWatcher(
                lambda: [self.settings.rules],
                self.reload,
                interval=self.settings.reload.interval_seconds,
            )
            self._watcher.start()
        if self.debug is not None:
            self.debug.start()
        log.info(
            "serving",
            extra={
                "fields": {
                    "event": "serving",
                    "port": port,
                    "listen": self.settings.server.listen,
                    "store": self.store.name,
                    "stack": self.settings.server.stack,
                    "domains": sorted(self.service.rules.domains),
                }
            },
        )
        return port

    async def reload(self) -> None:
        """Load the rules again and swap them in whole; keep the old ones if the new are bad."""
        try:
            rules = await asyncio.to_thread(
                load_rules, self.settings.rules, merge_domains=self.settings.merge_domains
            )
        except ConfigError as exc:
            log.error(
                "rules not reloaded; keeping the previous ones",
                extra={
                    "fields": {
                        "event": "reload_failed",
                        "file": exc.file,
                        "key": exc.key,
                        "reason": exc.reason,
                    }
                },
            )
            self.reloads_failed += 1
            return
        self.service.swap_rules(rules)
        self.reloads_ok += 1
        log.info(
            "rules reloaded",
            extra={"fields": {"event": "reloaded", "domains": sorted(rules.domains)}},
        )

    async def close(self, *, stop_server: bool = True) -> None:
        """Stop everything this app started."""
        if self.debug is not None:
            # Off the loop: a /json call being served may be waiting on it.
            await asyncio.to_thread(self.debug.stop)
        if self._watcher is not None:
            await self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stop_server:
            await self.server.stop(0)
        await self.store.close()
        if self.decision_sink is not None:
            self.decision_sink.close()
        self.telemetry.telemetry.shutdown()


async def serve(settings: ServiceSettings, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP (and file changes) reload the rules."""
    telemetry = RateLimitTelemetry(
        setup_telemetry("ratelimit", settings.telemetry, worker=worker_index() or 0),
        settings.telemetry,
    )
    sink = AuditSink(settings.log.decisions_target)
    app = App(settings, reuse_port=reuse_port, telemetry=telemetry, decision_sink=sink)
    await app.start()
    try:
        await serve_until_signalled(app.server, on_reload=app.reload)
    finally:
        await app.close(stop_server=False)  # serve_until_signalled drained it
    return 0
