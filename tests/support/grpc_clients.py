"""Channels to test servers (plaintext or mTLS with the test PKI), and waiting on them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki


def channel(address: str, pki: Pki | None = None, *, client_cert: bool = True) -> grpc.aio.Channel:
    if pki is None:
        return grpc.aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def watch_health(address: str, seen: list[int]) -> grpc.StatusCode:
    """Follow health's Watch stream until it ends; the statuses go into `seen`."""
    async with channel(address) as ch:
        call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for reply in call:
                seen.append(int(reply.status))
        except grpc.aio.AioRpcError as ended:
            return ended.code()
        return grpc.StatusCode.OK


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait (on the loop) until `predicate()` holds; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
