"""The plaintext health listener (`server.health_listen`): grpc.health.v1 and nothing else,
with the main server's statuses and drain, and `liveness`, on every stack (each test on
aio and sync; the ALSO_ON_UVLOOP ones on uvloop's loop too, which is the uvloop stack).

The main server here requires mTLS, as the sidecars' does in Kubernetes; the health
listener is asked in plaintext, as the kubelet asks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki
from sidecar_runtime.server import LIVENESS, ServiceBinding, SidecarServer, add_bytes_method, is_aio
from sidecar_runtime.settings import ServerSettings, Stack, TlsSettings
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.grpc_clients import channel, until, watch_health
from tests.support.processes import free_port

pytestmark = pytest.mark.grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "test.Echo"
# What the sidecars serve on their main listener: never on the health listener.
OTHER_METHODS = [
    f"/{SERVICE}/Echo",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/envoy.service.auth.v3.Authorization/Check",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
]


async def _echo(body: bytes, _context: Any) -> bytes:
    return body


def _echo_on_a_thread(body: bytes, _context: Any) -> bytes:
    return body


def _echo_binding() -> ServiceBinding:
    def register(server: Any) -> None:
        add_bytes_method(server, SERVICE, "Echo", _echo if is_aio(server) else _echo_on_a_thread)

    return ServiceBinding(SERVICE, register)


def _settings(stack: Stack, pki: Pki, **kw: object) -> ServerSettings:
    tls = TlsSettings(
        mode="mtls", cert_file=pki.sidecar_cert, key_file=pki.sidecar_key, ca_file=pki.ca
    )
    data = {
        "listen": "127.0.0.1:0",
        "health_listen": f"127.0.0.1:{free_port()}",
        "tls": tls,
        "stack": stack,
        "drain_period_seconds": 60,
        **kw,
    }
    return ServerSettings.model_validate(data)


@contextlib.asynccontextmanager
async def _running(
    settings: ServerSettings, *, serving: bool = True, reuse_port: bool = False
) -> AsyncIterator[SidecarServer]:
    server = SidecarServer(settings, [_echo_binding()], reuse_port=reuse_port)
    await server.start(serving=serving)
    try:
        yield server
    finally:
        await server.stop(0)


def _health_address(server: SidecarServer) -> str:
    assert server.health_port is not None
    return f"127.0.0.1:{server.health_port}"


async def _check(address: str, service: str = "", pki: Pki | None = None) -> int:
    async with channel(address, pki) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


async def _statuses(address: str) -> dict[str, int]:
    return {name: await _check(address, name) for name in ("", SERVICE, LIVENESS)}


@ALSO_ON_UVLOOP
async def test_answers_every_health_name_in_plaintext(stack: Stack, pki: Pki) -> None:
    async with _running(_settings(stack, pki)) as server:
        address = _health_address(server)
        assert await _statuses(address) == {"": SERVING, SERVICE: SERVING, LIVENESS: SERVING}
        # The main listener still requires a client certificate, and says the same.
        main = f"127.0.0.1:{server.port}"
        assert await _check(main, LIVENESS, pki) == SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(main)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _check(address, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@ALSO_ON_UVLOOP
async def test_every_other_method_is_unimplemented(stack: Stack, pki: Pki) -> None:
    async with _running(_settings(stack, pki)) as server:
        address = _health_address(server)
        async with channel(address) as ch:
            for method in OTHER_METHODS:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ch.unary_unary(method)(b"", timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
        async with channel(f"127.0.0.1:{server.port}", pki) as ch:
            assert await ch.unary_unary(f"/{SERVICE}/Echo")(b"hi", timeout=5) == b"hi"


@ALSO_ON_UVLOOP
async def test_statuses_follow_the_main_server(stack: Stack, pki: Pki) -> None:
    async with _running(_settings(stack, pki), serving=False) as server:
        address = _health_address(server)
        # Not ready yet (a dependency unchecked), but alive.
        assert await _statuses(address) == {
            "": NOT_SERVING,
            SERVICE: NOT_SERVING,
            LIVENESS: SERVING,
        }
        seen: list[int] = []
        watch = asyncio.create_task(watch_health(address, seen))
        await until(lambda: seen == [NOT_SERVING])
        await server.set_serving(True)
        await until(lambda: seen == [NOT_SERVING, SERVING])
        assert await _statuses(address) == {"": SERVING, SERVICE: SERVING, LIVENESS: SERVING}
        await server.set_serving(False)  # a dependency lost (Redis, an issuer's keys)
        await until(lambda: seen == [NOT_SERVING, SERVING, NOT_SERVING])
        assert await _statuses(address) == {
            "": NOT_SERVING,
            SERVICE: NOT_SERVING,
            LIVENESS: SERVING,
        }
        await server.set_serving(True)
        await server.set_serving(False, SERVICE)
        assert await _statuses(address) == {"": SERVING, SERVICE: NOT_SERVING, LIVENESS: SERVING}
    assert await asyncio.wait_for(watch, timeout=5) == grpc.StatusCode.UNAVAILABLE


@ALSO_ON_UVLOOP
async def test_drain_ends_liveness_and_stop_closes_the_listener(stack: Stack, pki: Pki) -> None:
    seen: list[int] = []
    async with _running(_settings(stack, pki)) as server:
        address = _health_address(server)
        watch = asyncio.create_task(watch_health(address, seen))
        await until(lambda: seen == [SERVING])
        second_signal = asyncio.Event()
        draining = asyncio.create_task(server.drain(interrupt=second_signal))
        await until(lambda: seen == [SERVING, NOT_SERVING])
        every_name_down = {"": NOT_SERVING, SERVICE: NOT_SERVING, LIVENESS: NOT_SERVING}
        assert await _statuses(address) == every_name_down
        await server.set_serving(True)  # a dependency recovering during the drain
        assert await _statuses(address) == every_name_down
        second_signal.set()
        assert await asyncio.wait_for(draining, timeout=5) is True
        started = time.monotonic()
        await server.stop(grace=30)  # the health listener's open Watch must not hold it
        assert time.monotonic() - started < 10
        assert await asyncio.wait_for(watch, timeout=5) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await _check(address, LIVENESS)
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_workers_share_the_health_port_with_reuse_port(stack: Stack, pki: Pki) -> None:
    settings = _settings(stack, pki)
    async with (
        _running(settings, reuse_port=True) as first,
        _running(settings, reuse_port=True) as second,
    ):
        assert first.health_port == second.health_port
        assert await _check(_health_address(first), LIVENESS) == SERVING
    # Without workers, a second copy is refused the health port as it is the main one.
    async with _running(settings) as alone:
        with pytest.raises(RuntimeError):
            await SidecarServer(settings, []).start()
        assert await _check(_health_address(alone), LIVENESS) == SERVING


async def test_off_by_default_and_liveness_on_the_main_listener(stack: Stack, pki: Pki) -> None:
    async with _running(_settings(stack, pki, health_listen=None), serving=False) as server:
        assert server.health_port is None
        main = f"127.0.0.1:{server.port}"
        assert await _check(main, LIVENESS, pki) == SERVING
        assert await _check(main, "", pki) == NOT_SERVING
