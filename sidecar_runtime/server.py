"""The gRPC server both sidecars run: TLS/mTLS, grpc.health.v1, reflection, limits,
keepalive enforcement and graceful shutdown, on the stack `server.stack` names (grpc.aio
on asyncio's or uvloop's loop, or grpcio's thread-pool server: `grpc_servers`).

A sidecar hands in its services as `ServiceBinding`s; this module knows nothing of Envoy.
A binding registers handlers of the server's kind: coroutines on grpc.aio, plain
functions on the threaded server (`is_aio` tells which).

Shutdown (SIGTERM or SIGINT), in three steps, so a rolling restart costs no failed call:
1. drain: health says NOT_SERVING at once, and for good, while every call is still
   served for `drain_period_seconds`, long enough for Envoy's health checks to take the
   server out of rotation (see ServerSettings);
2. stop: open health Watch streams end, new calls are refused, and calls in flight get
   `grace_period_seconds` to finish;
3. exit 0.
A second SIGTERM/SIGINT during the drain ends the drain at once (step 2 follows, with
its grace period); during step 2 it changes nothing. SIGKILL is the way to stop at once.

Health names: "" (the server) and each service's full name say whether calls are worth
sending (readiness: a sidecar sets them from its dependencies); `liveness` says only that
the process serves, SERVING from start until the drain. With `server.health_listen` set,
a second, plaintext server answers the same health, and nothing else, for probes that
cannot speak mTLS (Kubernetes' native gRPC probe); both start and stop together here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from sidecar_runtime.grpc_servers import AioGrpc, GrpcServer, ThreadedGrpc
from sidecar_runtime.settings import ServerSettings
from sidecar_runtime.tls import server_credentials

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The health name of the process itself: no dependency (Redis, an IdP's keys) moves it,
# so a liveness probe on it never restarts a sidecar that a restart would not cure.
LIVENESS = "liveness"


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service: its full name (for health and reflection) and how to add it."""

    name: str
    register: Callable[[Any], None]  # given a grpc.aio.Server or a grpc.Server


def is_aio(server: Any) -> bool:
    """Does `server` (handed to a binding) take coroutine handlers (grpc.aio), or plain
    functions (grpcio's thread-pool server)?"""
    return isinstance(server, grpc.aio.Server)


BytesHandler = Callable[[Any, Any], Coroutine[Any, Any, bytes]] | Callable[[Any, Any], bytes]


def add_bytes_method(
    server: Any,
    service: str,
    method: str,
    handler: BytesHandler,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> None:
    """Register one unary method whose handler returns its answer already serialized
    (no response serializer: the bytes go out as they are). Without a
    `request_deserializer` the handler gets the request's bytes too. Either server kind:
    a coroutine function for grpc.aio, a plain function for the threaded server."""
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=request_deserializer
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def grpc_options(settings: ServerSettings, *, reuse_port: bool) -> list[tuple[str, Any]]:
    ka = settings.keepalive
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # grpc enables SO_REUSEPORT by default on Linux, which would let a second copy bind
        # the same port silently; only worker groups opt in.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(ka.min_ping_interval_seconds * 1000),
        ),
        ("grpc.http2.max_ping_strikes", ka.max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", 1 if ka.permit_without_calls else 0),
    ]
    if ka.max_connection_age_seconds is not None:
        options.append(("grpc.max_connection_age_ms", int(ka.max_connection_age_seconds * 1000)))
        options.append(
            ("grpc.max_connection_age_grace_ms", int(settings.grace_period_seconds * 1000))
        )
    if ka.max_connection_idle_seconds is not None:
        options.append(("grpc.max_connection_idle_ms", int(ka.max_connection_idle_seconds * 1000)))
    return options


class SidecarServer:
    """A started-once, stopped-once gRPC server with health and reflection."""

    def __init__(
        self,
        settings: ServerSettings,
        services: Sequence[ServiceBinding],
        *,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self._service_names = [s.name for s in services]
        self._grpc = _grpc_server(settings, reuse_port=reuse_port)
        for binding in services:
            binding.register(self._grpc.server)
        if settings.reflection:
            names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            self._grpc.add_reflection(names)
        self._health_grpc = _health_server(settings, self._grpc, reuse_port=reuse_port)
        self.port = 0
        self.health_port: int | None = None  # bound by `start` when health_listen is set

    def _servers(self) -> list[GrpcServer]:
        """The main server, then the health-only one if there is one."""
        return [self._grpc] if self._health_grpc is None else [self._grpc, self._health_grpc]

    async def start(self, *, serving: bool = True) -> int:
        """Bind both listeners, start both servers; returns the main one's bound port
        (useful with `listen: 127.0.0.1:0`; the health listener's is `health_port`).

        `serving=False` starts with "" and the services NOT_SERVING, for a sidecar that
        must check a dependency first (the rate limiter's Redis); `liveness` is SERVING
        either way."""
        self.port = _bind(self._grpc, self.settings.listen, server_credentials(self.settings.tls))
        if self._health_grpc is not None and self.settings.health_listen is not None:
            # Plaintext by design: the kubelet's probe has no TLS (docs/operations.md).
            self.health_port = _bind(self._health_grpc, self.settings.health_listen, None)
        for server in self._servers():
            await server.start()
        await self._grpc.set_health(LIVENESS, SERVING)
        await self.set_serving(serving)
        return self.port

    async def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Set one service's health, or (service=None) the server's and every service's."""
        status = SERVING if serving else NOT_SERVING
        names = [service] if service is not None else ["", *self._service_names]
        for name in names:
            await self._grpc.set_health(name, status)

    async def drain(
        self, seconds: float | None = None, *, interrupt: asyncio.Event | None = None
    ) -> bool:
        """Report NOT_SERVING for good, and keep serving calls for `seconds` (default: the
        settings' drain period) or until `interrupt` is set. True if it was cut short."""
        await self._grpc.enter_graceful_shutdown()
        seconds = self.settings.drain_period_seconds if seconds is None else seconds
        log.info(
            "shutting down",  # health NOT_SERVING; calls still served for drain_s
            extra={
                "fields": {
                    "event": "draining",
                    "drain_s": seconds,
                    "grace_s": self.settings.grace_period_seconds,
                }
            },
        )
        if seconds <= 0:
            return False
        try:
            await asyncio.wait_for((interrupt or asyncio.Event()).wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, end health Watch streams, refuse new calls, and let calls in
        flight finish within `grace` (default: the settings' grace period)."""
        await self._grpc.close_watches()  # the health listener's too: one servicer
        grace = self.settings.grace_period_seconds if grace is None else grace
        await asyncio.gather(*(server.stop(grace) for server in self._servers()))

    async def wait_for_termination(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers()))


def _grpc_server(settings: ServerSettings, *, reuse_port: bool) -> GrpcServer:
    options = grpc_options(settings, reuse_port=reuse_port)
    if settings.stack == "sync":
        return ThreadedGrpc(
            options, threads=settings.threads, max_concurrent_rpcs=settings.max_concurrent_rpcs
        )
    return AioGrpc(options)  # aio and uvloop: the loop is the process's (sidecar_runtime.loops)


def _health_server(
    settings: ServerSettings, main: GrpcServer, *, reuse_port: bool
) -> GrpcServer | None:
    """The health-only server of `health_listen`, on `main`'s health servicer, or None.

    It binds with SO_REUSEPORT exactly when `listen` does: with `workers: N` every worker
    binds the one health port, and each probe's connection reaches one of them (any
    worker's answer is the pod's: workers share their config and dependencies)."""
    if settings.health_listen is None:
        return None
    return main.health_only(grpc_options(settings, reuse_port=reuse_port))


def _bind(server: GrpcServer, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    port = server.add_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot bind {listen}")
    return port


async def serve_until_signalled(
    server: SidecarServer,
    *,
    on_reload: Callable[[], Coroutine[Any, Any, object]] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop (see the module's docstring); SIGHUP
    calls `on_reload`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reload_tasks: set[asyncio.Task[object]] = set()
    if on_reload is not None:
        reload_cb = on_reload

        def _hup() -> None:
            task = loop.create_task(reload_cb())
            reload_tasks.add(task)
            task.add_done_callback(reload_tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, _hup)
    try:
        await stop.wait()
        await _drain_and_stop(server, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _drain_and_stop(server: SidecarServer, signalled: asyncio.Event) -> None:
    signalled.clear()  # from here on, another signal ends the drain
    cut_short = await server.drain(interrupt=signalled)
    log.info(
        "drained: refusing new calls, finishing those in flight",
        extra={"fields": {"event": "drained", "cut_short": cut_short}},
    )
    await server.stop()
    log.info("stopped", extra={"fields": {"event": "stopped"}})
