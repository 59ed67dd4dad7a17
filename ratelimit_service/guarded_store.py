"""The store behind its protections: per-call timeout, a cap on calls in flight, a circuit
breaker, and health that follows the store.

A call that cannot be made, or fails, or takes longer than the timeout, returns None: the
service then answers with its failure mode. A store with a deadline of its own
(`DeadlineStore`: the pipelined Redis client) gets the timeout passed in, so a reply that
arrived in time is used even when an overloaded event loop reads it late; other remote
stores run under `asyncio.timeout`; the in-process memory store has no timer at all.

The guard counts and logs every answer of the failure mode (rate-limited), opens the
breaker after repeated failures (gRPC health NOT_SERVING), and a probe or a successful call
closes it again (SERVING), with no restart. Never a queue: when `max_in_flight` calls are
out, the next one is answered at once.

On the `sync` stack a handler on a worker thread calls `acquire_on_thread`. A store that
a thread can call itself (`BlockingStore`: the standalone Redis store, on a connection of
the thread's own, and the memory store) is called right there, with the same timeout,
breaker and cap; a change of health is handed to the event loop, which reports the
breaker's state as it is then (so reports from several threads cannot land out of order).
Other stores (redis-py's: Sentinel, Cluster) live on the loop, and the call is handed to it
(`acquire_from_thread`) with the handler's deadline. The loop gives the store what is left
of it, so the store's own deadline, not the thread's wait, decides a timeout (and trips
the breaker); a call the loop picks up with nothing left is answered by the failure mode
without asking the store, and without counting against it (the process was late, not the
store). The thread waits half a timeout longer than the deadline, in case the loop itself
is stuck; then it answers by the failure mode too.

A partitioned store (`PartitionedStore`: Redis Cluster) gets a breaker per node
(`NodeBreakers`, each like the store's own breaker) and answers per call: a call whose
node failed, timed out or has its breaker open is None, and the service answers the
failure mode for that bucket only; the others carry their outcomes. The answer is None as
a whole only when the store as a whole failed (no slot map) or every call failed. The
store's own breaker still guards the whole (it opens when the slot map cannot be read).

Health of a partitioned store follows the breakers, not single calls, so it changes at
most once per breaker transition: SERVING while the store's breaker is closed and at
least one node's breaker is (a master reachable); "degraded" while serving with some
node's breaker not closed (logged on change; `stats.degraded` and `stats.open_nodes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ratelimit_service.circuit_breaker import CircuitBreaker, NodeBreakers
from ratelimit_service.decision_log import DecisionLog
from ratelimit_service.errors import StoreError
from ratelimit_service.instruments import NoTelemetry, StoreTelemetry
from ratelimit_service.limits.bucket import Outcome
from ratelimit_service.store import (
    Acquired,
    BlockingStore,
    BucketCall,
    BucketStore,
    DeadlineStore,
    PartitionedStore,
)
from sidecar_runtime.loops import LoopBridge, LoopUnavailableError

log = logging.getLogger(__name__)

HealthCallback = Callable[[bool], Awaitable[None]]

# How much longer than its deadline a worker thread waits for the loop's answer.
_LOOP_GRACE = 0.5  # of the call timeout


@dataclass
class GuardStats:
    store_calls: int = 0
    store_errors: int = 0
    failure_mode_answers: int = 0
    short_circuited: int = 0
    overloaded: int = 0
    late: int = 0  # calls the loop picked up after their deadline (sync stack)
    loop_stuck: int = 0  # calls a worker thread stopped waiting for (sync stack)
    health_changes: int = 0
    partial_answers: int = 0  # answers with some calls None (their node failed)
    degraded: bool = False  # serving, with some node's breaker open (partitioned store)
    open_nodes: tuple[str, ...] = ()  # the nodes whose breaker is not closed


class GuardedStore:
    def __init__(
        self,
        store: BucketStore,
        *,
        breaker: CircuitBreaker,
        decisions: DecisionLog,
        failure_mode: str,
        call_timeout_s: float,
        probe_timeout_s: float,
        max_in_flight: int,
        on_health: HealthCallback | None = None,
        telemetry: StoreTelemetry | None = None,
    ) -> None:
        self.store = store
        self._breaker = breaker
        self._decisions = decisions
        self._failure_mode = failure_mode
        self._call_timeout_s = call_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._max_in_flight = max_in_flight
        self._on_health = on_health
        self._in_flight = 0
        self._lock = threading.Lock()  # the cap and the counters, among threads
        self._reported_healthy = True  # what health was last told
        self.stats = GuardStats()
        self._telemetry: StoreTelemetry = telemetry or NoTelemetry()
        self._timed = store if isinstance(store, DeadlineStore) else None
        self._blocking = store if isinstance(store, BlockingStore) else None
        self._partitioned = store if isinstance(store, PartitionedStore) else None
        self._nodes = NodeBreakers(breaker)
        told = getattr(store, "failure_mode", failure_mode)
        if self._partitioned is not None and told != failure_mode:
            # The store counts a failed node's calls by its failure mode (commit rule).
            raise ValueError(f"store built for {told}, service runs {failure_mode}")

    @property
    def healthy(self) -> bool:
        return self._breaker.is_closed and not self._nodes.all_open()

    async def acquire(
        self, calls: Sequence[BucketCall], *, timeout_s: float | None = None
    ) -> Sequence[Outcome | None] | None:
        """The store's outcomes, or None when the failure mode must answer. `timeout_s`
        (default: the configured call timeout) bounds a remote store's answer. From a
        partitioned store, an outcome is None when its node failed (see the docstring)."""
        if not self._admit():
            return None
        started = time.perf_counter()
        timeout = self._call_timeout_s if timeout_s is None else timeout_s
        refused: list[str] = []  # nodes whose breaker kept them out (partitioned store)
        try:
            acquired = await self._call_store(calls, timeout, refused)
        except TimeoutError:
            await self._failed("timeout")
            return None
        except StoreError as exc:
            await self._failed(str(exc))
            return None
        finally:
            self._done(started)
        if self._partitioned is not None:
            return await self._per_node(acquired, refused)
        if self._breaker.record_success():
            await self._health_changed(True)
        return acquired.outcomes

    async def _per_node(
        self, acquired: Acquired, refused: list[str]
    ) -> Sequence[Outcome | None] | None:
        """A partitioned store's answer: each node's breaker told, the failed calls
        counted and logged; None when no call was answered."""
        changed = self._breaker.record_success()  # the store as a whole worked
        report = acquired.nodes
        for node in report.answered:
            changed = self._nodes.record_success(node) or changed
        for node, error in report.failed:
            self.stats.store_errors += 1
            self._answered_by_failure_mode(f"{node}: {error}")
            changed = self._nodes.record_failure(node) or changed
        for node in refused:
            self.stats.short_circuited += 1
            self._answered_by_failure_mode(f"{node}: circuit open")
        for reason in report.unsettled:
            self._answered_by_failure_mode(reason)
        if changed:
            await self._report_health()
        outcomes = acquired.outcomes
        if report.failed or refused or report.unsettled:
            if all(outcome is None for outcome in outcomes):
                return None
            self.stats.partial_answers += 1
        return outcomes

    def acquire_on_thread(
        self, calls: Sequence[BucketCall], bridge: LoopBridge
    ) -> Sequence[Outcome | None] | None:
        """`acquire` for a handler on a worker thread of the sync stack: on this thread
        when the store allows it, else through the loop (see the module's docstring)."""
        store = self._blocking
        if store is None:
            return self.acquire_from_thread(calls, bridge)
        if not self._admit():
            return None
        started = time.perf_counter()
        try:
            acquired = self._call_blocking(store, calls)
        except TimeoutError:
            self._failed_on_thread("timeout", bridge)
            return None
        except StoreError as exc:
            self._failed_on_thread(str(exc), bridge)
            return None
        finally:
            self._done(started)
        if self._breaker.record_success():
            self._report_health_on_loop(bridge)
        return acquired.outcomes

    def _admit(self) -> bool:
        """Take a slot for one store call, or count why not (the failure mode answers)."""
        with self._lock:
            overloaded = self._in_flight >= self._max_in_flight
            if overloaded:
                self.stats.overloaded += 1
            elif not self._breaker.allow():
                self.stats.short_circuited += 1
                self.stats.failure_mode_answers += 1
                return False
            else:
                self._in_flight += 1
                self.stats.store_calls += 1
                return True
        self._answered_by_failure_mode("too many store calls in flight")
        return False

    def _done(self, started: float) -> None:
        with self._lock:
            self._in_flight -= 1
        self._telemetry.record_store_call(started)

    def _call_blocking(self, store: BlockingStore, calls: Sequence[BucketCall]) -> Acquired:
        timeout = self._call_timeout_s
        # A child span only for a remote store under a recording parent, as on the loop.
        traced = self.store.remote and self._telemetry.tracing
        if not (traced and self._telemetry.span_recording()):
            return store.acquire_blocking(calls, timeout_s=timeout)
        with self._telemetry.store_span(system=self.store.name, buckets=len(calls)):
            return store.acquire_blocking(calls, timeout_s=timeout)

    def _failed_on_thread(self, error: str, bridge: LoopBridge) -> None:
        self.stats.store_errors += 1
        self._answered_by_failure_mode(error)
        if self._breaker.record_failure():
            self._report_health_on_loop(bridge)

    def _report_health_on_loop(self, bridge: LoopBridge) -> None:
        with contextlib.suppress(LoopUnavailableError):  # shutting down: health is final
            bridge.submit(self._report_health())

    async def _report_health(self) -> None:
        """Health as the breakers are now (not as they were when a thread or a call saw
        one change): SERVING or not, and degraded or not (a partitioned store)."""
        serving = self.healthy
        self._note_degraded(serving)
        if serving != self._reported_healthy:
            await self._health_changed(serving)

    def _note_degraded(self, serving: bool) -> None:
        open_nodes = self._nodes.open_nodes()
        degraded = serving and bool(open_nodes)
        self.stats.open_nodes = open_nodes
        if degraded == self.stats.degraded:
            return
        self.stats.degraded = degraded
        log.warning(
            "store degraded: some nodes unreachable" if degraded else "store no longer degraded",
            extra={
                "fields": {
                    "event": "store_degraded",
                    "degraded": degraded,
                    "open_nodes": list(open_nodes),
                    "store": self.store.name,
                }
            },
        )

    def acquire_from_thread(
        self, calls: Sequence[BucketCall], bridge: LoopBridge
    ) -> Sequence[Outcome | None] | None:
        """`acquire` for a handler on a worker thread (not the loop's): the call goes to
        the loop, and this thread waits (holding no lock) until the answer comes, at most
        the call timeout and a grace (see the module's docstring)."""
        timeout = self._call_timeout_s
        deadline = time.monotonic() + timeout
        gave_up = threading.Event()
        try:
            answer = bridge.submit(self._acquire_by(calls, deadline, gave_up))
        except LoopUnavailableError as exc:  # shutting down
            self._answered_by_failure_mode(str(exc))
            return None
        try:
            return answer.result(timeout=timeout * (1 + _LOOP_GRACE))
        except TimeoutError:
            gave_up.set()  # a call the loop picks up from now on is dropped, uncounted
            answer.cancel()
            self.stats.loop_stuck += 1
            self._answered_by_failure_mode("the event loop did not answer in time")
            return None

    async def _acquire_by(
        self, calls: Sequence[BucketCall], deadline: float, gave_up: threading.Event
    ) -> Sequence[Outcome | None] | None:
        if gave_up.is_set():  # answered (and counted) by the thread already
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            self.stats.late += 1
            self._answered_by_failure_mode("the call reached the event loop after its deadline")
            return None
        return await self.acquire(calls, timeout_s=left)

    def _call_store(
        self, calls: Sequence[BucketCall], timeout_s: float, refused: list[str]
    ) -> Coroutine[Any, Any, Acquired]:
        store = self.store
        if not store.remote:  # in-process: cannot hang, and a timer per call costs ~10 us
            return store.acquire(calls)
        call = self._bounded(calls, timeout_s, refused)
        # A child span only under a recording parent: an unsampled call costs no span.
        if self._telemetry.tracing and self._telemetry.span_recording():
            return self._traced(call, len(calls))
        return call

    def _bounded(
        self, calls: Sequence[BucketCall], timeout_s: float, refused: list[str]
    ) -> Coroutine[Any, Any, Acquired]:
        if self._partitioned is not None:
            nodes = self._nodes

            def node_allowed(node: str) -> bool:
                if nodes.allow(node):
                    return True
                refused.append(node)
                return False

            return self._partitioned.acquire_partitioned(
                calls, timeout_s=timeout_s, node_allowed=node_allowed
            )
        if self._timed is not None:
            return self._timed.acquire_within(calls, timeout_s=timeout_s)
        return self._under_timeout(calls, timeout_s)

    async def _under_timeout(self, calls: Sequence[BucketCall], timeout_s: float) -> Acquired:
        async with asyncio.timeout(timeout_s):
            return await self.store.acquire(calls)

    async def _traced(self, call: Coroutine[Any, Any, Acquired], buckets: int) -> Acquired:
        with self._telemetry.store_span(system=self.store.name, buckets=buckets):
            return await call

    async def probe(self) -> None:
        """One health probe of the store; drives the breakers and gRPC health."""
        if self._partitioned is not None:
            await self._probe_nodes(self._partitioned)
            return
        try:
            if self._timed is not None:
                # Not a timer around the coroutine: one that expires while a busy loop has
                # not yet resumed us would fail a PONG that came in time, and trip the
                # breaker (every call answered by the failure mode for open_seconds).
                await self._timed.ping_within(timeout_s=self._probe_timeout_s)
            else:
                async with asyncio.timeout(self._probe_timeout_s):
                    await self.store.ping()
        except (StoreError, TimeoutError) as exc:
            if self._breaker.trip():
                self.stats.store_errors += 1
                self._answered_by_failure_mode(f"probe: {exc or 'timeout'}")
                await self._health_changed(False)
            return
        if self._breaker.record_success():
            await self._health_changed(True)

    async def _probe_nodes(self, store: PartitionedStore) -> None:
        """Every node probed: a failing one trips its own breaker, one answering closes
        it; only a store that cannot be probed at all trips the store's breaker."""
        try:
            nodes = await store.ping_nodes(timeout_s=self._probe_timeout_s)
        except (StoreError, TimeoutError) as exc:
            if self._breaker.trip():
                self.stats.store_errors += 1
                self._answered_by_failure_mode(f"probe: {exc or 'timeout'}")
            await self._report_health()
            return
        self._breaker.record_success()
        self._nodes.retain(nodes)
        for node, error in nodes.items():
            if error is None:
                self._nodes.record_success(node)
            elif self._nodes.trip(node):
                self.stats.store_errors += 1
                self._answered_by_failure_mode(f"probe {node}: {error}")
        await self._report_health()

    async def watch(self, interval_s: float) -> None:
        """Probe forever (run as a task): health follows the store even with no traffic."""
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    def _answered_by_failure_mode(self, error: str) -> None:
        self.stats.failure_mode_answers += 1
        self._decisions.store_failure(
            store=self.store.name, error=error, failure_mode=self._failure_mode
        )

    async def _failed(self, error: str) -> None:
        self.stats.store_errors += 1
        self._answered_by_failure_mode(error)
        if self._breaker.record_failure():
            await self._health_changed(False)

    async def _health_changed(self, serving: bool) -> None:
        self._reported_healthy = serving
        self.stats.health_changes += 1
        log.warning(
            "store reachable again" if serving else "store unreachable; circuit open",
            extra={
                "fields": {"event": "store_health", "serving": serving, "store": self.store.name}
            },
        )
        if self._on_health is not None:
            await self._on_health(serving)
