from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki
from sidecar_runtime.server import SidecarServer, grpc_options
from sidecar_runtime.settings import ServerSettings, TlsSettings
from tests.support.grpc_clients import channel
from tests.support.grpcurl import grpcurl

pytestmark = pytest.mark.grpc


def _settings(pki: Pki | None = None, **kw: object) -> ServerSettings:
    tls = (
        TlsSettings()
        if pki is None
        else TlsSettings(
            mode="mtls", cert_file=pki.sidecar_cert, key_file=pki.sidecar_key, ca_file=pki.ca
        )
    )
    return ServerSettings.model_validate({"listen": "127.0.0.1:0", "tls": tls, **kw})


async def _health(address: str, pki: Pki | None = None, *, client_cert: bool = True) -> int:
    async with channel(address, pki, client_cert=client_cert) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


async def test_plaintext_health_serving_then_not_serving() -> None:
    server = SidecarServer(_settings(), [])
    port = await server.start()
    try:
        assert await _health(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        assert await _health(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)


async def test_mtls_requires_client_certificate(pki: Pki) -> None:
    server = SidecarServer(_settings(pki), [])
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


async def test_grpcurl_lists_services_and_checks_health_over_mtls(pki: Pki) -> None:
    server = SidecarServer(_settings(pki), [])
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


async def test_reflection_can_be_switched_off() -> None:
    server = SidecarServer(_settings(reflection=False), [])
    port = await server.start()
    try:
        listed = await asyncio.to_thread(grpcurl, f"127.0.0.1:{port}", "list")
        assert listed.returncode != 0
    finally:
        await server.stop(0)


async def test_second_server_on_same_port_is_refused_without_reuse_port() -> None:
    first = SidecarServer(_settings(), [])
    port = await first.start()
    try:
        second = SidecarServer(_settings(listen=f"127.0.0.1:{port}"), [])
        with pytest.raises(RuntimeError):
            await second.start()
    finally:
        await first.stop(0)


def test_grpc_options_carry_limits_and_keepalive() -> None:
    opts = dict(grpc_options(_settings(max_receive_message_bytes=65536), reuse_port=True))
    assert opts["grpc.max_receive_message_length"] == 65536
    assert opts["grpc.so_reuseport"] == 1
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000


async def test_healthcheck_cli_over_mtls_and_plaintext(pki: Pki) -> None:
    from sidecar_runtime.healthcheck import check

    server = SidecarServer(_settings(pki), [])
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
