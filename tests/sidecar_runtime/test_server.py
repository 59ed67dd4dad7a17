from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki
from sidecar_runtime.server import (
    ServiceBinding,
    SidecarServer,
    add_bytes_method,
    grpc_options,
    is_aio,
)
from sidecar_runtime.settings import ServerSettings, Stack, TlsSettings
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.grpc_clients import channel, until, watch_health
from tests.support.grpcurl import grpcurl

pytestmark = pytest.mark.grpc


def _settings(stack: Stack = "aio", pki: Pki | None = None, **kw: object) -> ServerSettings:
    tls = (
        TlsSettings()
        if pki is None
        else TlsSettings(
            mode="mtls", cert_file=pki.sidecar_cert, key_file=pki.sidecar_key, ca_file=pki.ca
        )
    )
    return ServerSettings.model_validate(
        {"listen": "127.0.0.1:0", "tls": tls, "stack": stack, **kw}
    )


async def _health(address: str, pki: Pki | None = None, *, client_cert: bool = True) -> int:
    async with channel(address, pki, client_cert=client_cert) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


@ALSO_ON_UVLOOP
async def test_plaintext_health_serving_then_not_serving(stack: Stack) -> None:
    server = SidecarServer(_settings(stack), [])
    port = await server.start()
    try:
        assert await _health(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        assert await _health(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)


async def test_mtls_requires_client_certificate(pki: Pki, stack: Stack) -> None:
    server = SidecarServer(_settings(stack, pki), [])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    try:
        assert await _health(address, pki) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _health(address, pki, client_cert=False)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError):
            await _health(address)  # plaintext against a TLS port
    finally:
        await server.stop(0)


async def test_grpcurl_lists_services_and_checks_health_over_mtls(pki: Pki, stack: Stack) -> None:
    server = SidecarServer(_settings(stack, pki), [])
    port = await server.start()
    try:
        listed = await asyncio.to_thread(grpcurl, f"127.0.0.1:{port}", "list", pki=pki)
        assert listed.returncode == 0, listed.stderr
        assert "grpc.health.v1.Health" in listed.stdout.split()
        checked = await asyncio.to_thread(
            grpcurl, f"127.0.0.1:{port}", "grpc.health.v1.Health/Check", pki=pki
        )
        assert checked.returncode == 0, checked.stderr
        assert '"SERVING"' in checked.stdout
    finally:
        await server.stop(0)


async def test_reflection_can_be_switched_off(stack: Stack) -> None:
    server = SidecarServer(_settings(stack, reflection=False), [])
    port = await server.start()
    try:
        listed = await asyncio.to_thread(grpcurl, f"127.0.0.1:{port}", "list")
        assert listed.returncode != 0
    finally:
        await server.stop(0)


async def test_second_server_on_same_port_is_refused_without_reuse_port(stack: Stack) -> None:
    first = SidecarServer(_settings(stack), [])
    port = await first.start()
    try:
        second = SidecarServer(_settings(stack, listen=f"127.0.0.1:{port}"), [])
        with pytest.raises(RuntimeError):
            await second.start()
    finally:
        await first.stop(0)


def test_grpc_options_carry_limits_and_keepalive() -> None:
    opts = dict(grpc_options(_settings(max_receive_message_bytes=65536), reuse_port=True))
    assert opts["grpc.max_receive_message_length"] == 65536
    assert opts["grpc.so_reuseport"] == 1
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000


async def test_healthcheck_cli_over_mtls_and_plaintext(pki: Pki, stack: Stack) -> None:
    from sidecar_runtime.healthcheck import check

    server = SidecarServer(_settings(stack, pki), [])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    try:
        kw = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
        assert await asyncio.to_thread(check, address, **kw) is True
        assert await asyncio.to_thread(check, address) is False  # plaintext to a TLS port
        await server.set_serving(False)
        assert await asyncio.to_thread(check, address, **kw) is False
    finally:
        await server.stop(0)


# -- drain and stop ------------------------------------------------------------------------
SLOW_SERVICE = "test.Slow"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _sleep_then_echo(body: bytes, _context: Any) -> bytes:
    """Sleeps for as many tenths of a second as the first byte says, then echoes."""
    await asyncio.sleep(body[0] / 10 if body else 0)
    return body


def _sleep_then_echo_on_a_thread(body: bytes, _context: Any) -> bytes:
    """The same, as a handler of the threaded server."""
    time.sleep(body[0] / 10 if body else 0)
    return body


def _slow_binding() -> ServiceBinding:
    def register(server: Any) -> None:
        handler = _sleep_then_echo if is_aio(server) else _sleep_then_echo_on_a_thread
        add_bytes_method(server, SLOW_SERVICE, "Echo", handler)

    return ServiceBinding(SLOW_SERVICE, register)


async def _echo(address: str, tenths: int = 0) -> bytes:
    async with channel(address) as ch:
        reply: bytes = await ch.unary_unary(f"/{SLOW_SERVICE}/Echo")(bytes([tenths]), timeout=10)
        return reply


@ALSO_ON_UVLOOP
async def test_drain_says_not_serving_and_keeps_serving_then_stop_ends_watches(
    stack: Stack,
) -> None:
    server = SidecarServer(_settings(stack, drain_period_seconds=60), [_slow_binding()])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    seen: list[int] = []
    watch = asyncio.create_task(watch_health(address, seen))
    cut = asyncio.Event()
    try:
        await until(lambda: seen == [SERVING])
        draining = asyncio.create_task(server.drain(interrupt=cut))
        await until(lambda: seen == [SERVING, NOT_SERVING])
        assert await _health(address) == NOT_SERVING
        assert await _echo(address) == b"\x00"  # new channel, new call: still served
        await server.set_serving(True)  # a dependency recovering meanwhile changes nothing
        assert await _health(address) == NOT_SERVING
        assert not draining.done()
        cut.set()  # a second signal
        assert await asyncio.wait_for(draining, timeout=5) is True
        in_flight = asyncio.create_task(_echo(address, tenths=10))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await server.stop(grace=30)  # an open Watch must not hold this for the grace period
        assert time.monotonic() - started < 10
        assert await asyncio.wait_for(in_flight, timeout=5) == b"\x0a"  # finished within grace
        assert await asyncio.wait_for(watch, timeout=5) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _echo(address)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        watch.cancel()
        await server.stop(0)


async def test_drain_runs_out_by_itself_and_zero_means_none(stack: Stack) -> None:
    server = SidecarServer(_settings(stack, drain_period_seconds=0.2), [])
    await server.start()
    try:
        assert await asyncio.wait_for(server.drain(), timeout=10) is False
        assert await server.drain(0) is False
    finally:
        await server.stop(0)


def test_drain_period_default_outlasts_envoy_s_sidecar_health_checks() -> None:
    from devstack.envoy_config import EnvoyParams, build

    clusters = build(EnvoyParams())["static_resources"]["clusters"]
    checks = [check for cluster in clusters for check in cluster.get("health_checks", [])]
    assert checks  # the sidecar clusters are health checked

    def seconds(duration: str) -> float:
        return float(duration.removesuffix("s"))

    for check in checks:
        # The worst case: NOT_SERVING starts just after a probe; the host is out after
        # `unhealthy_threshold` more probes, the last of which may take its whole timeout.
        interval = seconds(check["interval"])
        out_of_rotation = interval * check["unhealthy_threshold"] + seconds(check["timeout"])
        assert ServerSettings().drain_period_seconds > out_of_rotation


# -- the threaded server (stack: sync) ------------------------------------------------------
async def test_sync_refuses_calls_beyond_max_concurrent_rpcs_at_once() -> None:
    settings = _settings("sync", threads=1, max_concurrent_rpcs=2)
    server = SidecarServer(settings, [_slow_binding()])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    try:
        # One call on the thread, one waiting for it: the limit is reached.
        busy = [asyncio.create_task(_echo(address, tenths=40)) for _ in range(2)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _echo(address)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 2.0  # at once, not after the 4 s call ahead
        assert await asyncio.wait_for(asyncio.gather(*busy), timeout=20) == [b"\x28"] * 2
        assert await _echo(address) == b"\x00"  # room again
    finally:
        await server.stop(0)


async def test_sync_watch_and_reflection_streams_hold_no_worker_thread() -> None:
    server = SidecarServer(_settings("sync", threads=1), [_slow_binding()])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    seen: list[list[int]] = [[], [], []]
    watches = [asyncio.create_task(watch_health(address, s)) for s in seen]
    try:
        await until(lambda: all(s == [SERVING] for s in seen))
        assert await asyncio.wait_for(_echo(address), timeout=5) == b"\x00"
        # The one worker thread busy with a call, reflection still answers.
        busy = asyncio.create_task(_echo(address, tenths=30))
        await asyncio.sleep(0.3)
        listed = await asyncio.to_thread(grpcurl, address, "list")
        assert listed.returncode == 0, listed.stderr
        assert SLOW_SERVICE in listed.stdout.split()
        assert not busy.done()
        await server.set_serving(False)
        await until(lambda: all(s == [SERVING, NOT_SERVING] for s in seen))
        assert await asyncio.wait_for(busy, timeout=10) == b"\x1e"
    finally:
        await server.stop(0)
        for watch in watches:
            assert await asyncio.wait_for(watch, timeout=5) == grpc.StatusCode.UNAVAILABLE


@ALSO_ON_UVLOOP
async def test_the_uvloop_stack_is_grpc_aio_on_uvloop_s_loop(stack: Stack) -> None:
    import uvloop

    from tests.sidecar_runtime.stacks import running_stack

    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert running_stack(stack) == ("uvloop" if on_uvloop and stack == "aio" else stack)
    server = SidecarServer(_settings(stack), [_slow_binding()])
    port = await server.start()
    try:
        assert await _echo(f"127.0.0.1:{port}", tenths=1) == b"\x01"
    finally:
        await server.stop(0)
