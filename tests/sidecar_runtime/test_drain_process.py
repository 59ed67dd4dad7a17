"""SIGTERM drains both sidecars as processes, on each server stack (aio, uvloop, sync):
health NOT_SERVING at once while calls are still served for the drain period, then new
calls refused, an open health Watch stream ended (not waited for through the grace
period), and exit code 0. A second signal cuts the drain short. Before the signal, each
answers its call, health, and grpcurl through reflection. Each also runs its plaintext
health listener (`server.health_listen`), which follows the same drain.

Drain periods here are short; every bound is generous (a slow, busy machine must pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.idp_keys import ensure_idp_keys
from sidecar_runtime.settings import Stack
from tests.authz_service.conftest import write_config
from tests.ratelimit_service.service_process import write_settings
from tests.support.grpc_clients import channel, until, watch_health
from tests.support.grpcurl import grpcurl
from tests.support.processes import free_port, running

pytestmark = [pytest.mark.grpc, pytest.mark.slow]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAIN_S = 4.0
# Long, so that a shutdown waiting out the grace period (for an open Watch stream, say)
# shows as an exit far later than the drain.
GRACE_S = 30.0
EXIT_MARGIN_S = 12.0


@dataclass
class Sidecar:
    name: str
    start: Callable[[Path, dict[str, Any]], contextlib.AbstractContextManager[Running]]
    call: Callable[[grpc.aio.Channel], Awaitable[object]]
    service: str


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def stacks(self) -> list[str]:
        """The server stacks the log says it serves on."""
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                out.append(json.loads(raw).get("stack", ""))
        return [stack for stack in out if stack]

    def events(self) -> list[str]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                out.append(json.loads(raw).get("event", ""))
        return out

    async def wait_for(self, event: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while event not in self.events():
            assert self.process.poll() is None or event in self.events(), self.log.read_text()
            assert time.monotonic() < deadline, f"no {event!r}: {self.log.read_text()}"
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def _ratelimit(tmp: Path, server: dict[str, Any]) -> Iterator[Running]:
    rules = tmp / "rules.yaml"
    rules.write_text(
        "domain: edge\ndescriptors:\n  - key: remote_address\n"
        "    rate_limit: {unit: hour, requests_per_unit: 1000}\n"
    )
    address = f"127.0.0.1:{free_port()}"
    settings = write_settings(
        tmp / "service.yaml", rules, server={"listen": address, **server}, reload={"watch": False}
    )
    log = tmp / "ratelimit.log"
    with running(["ratelimit_service", "serve", "--settings", str(settings)], log=log) as proc:
        yield Running(proc, address, log)


@contextlib.contextmanager
def _authz(tmp: Path, server: dict[str, Any]) -> Iterator[Running]:
    idp = ensure_idp_keys(tmp / "idp-keys")
    (tmp / "idp").mkdir()
    (tmp / "idp" / "jwks.json").write_text(idp.jwks_file.read_text())
    address = f"127.0.0.1:{free_port()}"
    config = write_config(tmp, server={"listen": address, **server})
    log = tmp / "authz.log"
    with running(["authz_service", "serve", "--config", str(config)], log=log) as proc:
        yield Running(proc, address, log)


async def _should_rate_limit(ch: grpc.aio.Channel) -> object:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="192.0.2.1")
    request = rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    reply = await rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request, timeout=5)
    assert reply.overall_code == rls_pb2.RateLimitResponse.OK
    return reply


async def _check(ch: grpc.aio.Channel) -> object:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host, http.id = "GET", "/api/v1/public/ping", "localhost", "d"
    reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(request, timeout=5)
    assert reply.status.code == 0  # the public route is allowed
    return reply


SIDECARS = [
    Sidecar(
        "ratelimit", _ratelimit, _should_rate_limit, "envoy.service.ratelimit.v3.RateLimitService"
    ),
    Sidecar("authz", _authz, _check, "envoy.service.auth.v3.Authorization"),
]
STACKS: tuple[Stack, ...] = ("aio", "uvloop", "sync")


async def _health(address: str, service: str = "") -> int:
    async with channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


async def _until_serving(address: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if await _health(address) == SERVING:
                return
        assert time.monotonic() < deadline, f"{address} not SERVING in {within}s"
        await asyncio.sleep(0.1)


async def _refused(sidecar: Sidecar, address: str, within: float = 10.0) -> grpc.StatusCode:
    """The code of the first refused call, calling until one is refused."""
    deadline = time.monotonic() + within
    while True:
        async with channel(address) as ch:
            try:
                await sidecar.call(ch)
            except grpc.aio.AioRpcError as refused:
                return refused.code()
        assert time.monotonic() < deadline, "calls still served after the drain"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("sidecar", SIDECARS, ids=lambda s: s.name)
async def test_sigterm_drains_then_stops_and_exits_0(
    sidecar: Sidecar, stack: Stack, tmp_path: Path
) -> None:
    health_listener = f"127.0.0.1:{free_port()}"
    server = {
        "drain_period_seconds": DRAIN_S,
        "grace_period_seconds": GRACE_S,
        "stack": stack,
        "health_listen": health_listener,
    }
    with sidecar.start(tmp_path, server) as proc:
        await _until_serving(proc.address)
        assert await _health(health_listener) == SERVING
        assert await _health(health_listener, sidecar.service) == SERVING
        assert await _health(health_listener, "liveness") == SERVING
        listed = await asyncio.to_thread(grpcurl, proc.address, "list")
        assert listed.returncode == 0, listed.stderr
        assert sidecar.service in listed.stdout.split()  # reflection
        assert stack in proc.stacks()  # the one asked for
        seen: list[int] = []
        watch = asyncio.create_task(watch_health(proc.address, seen))
        async with channel(proc.address) as before:  # a connection made before the signal
            await sidecar.call(before)
            await until(lambda: bool(seen))
            signalled = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            await proc.wait_for("draining")
            # The drain window: health says NOT_SERVING, every call is still answered.
            assert await _health(proc.address) == NOT_SERVING
            assert await _health(health_listener, "liveness") == NOT_SERVING
            await sidecar.call(before)
            async with channel(proc.address) as fresh:
                await sidecar.call(fresh)
            assert "drained" not in proc.events()
        await until(lambda: NOT_SERVING in seen)
        await proc.wait_for("drained")
        assert await _refused(sidecar, proc.address) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError):
            await _health(health_listener, "liveness")  # stopped with the main listener
        code = await asyncio.to_thread(proc.process.wait, DRAIN_S + EXIT_MARGIN_S)
        elapsed = time.monotonic() - signalled
        assert code == 0, proc.log.read_text()
        assert elapsed >= DRAIN_S * 0.9  # the drain was not skipped
        assert elapsed < DRAIN_S + EXIT_MARGIN_S < GRACE_S  # nor the grace period waited out
        assert seen[0] == SERVING
        assert seen[-1] == NOT_SERVING
        assert await asyncio.wait_for(watch, timeout=5) == grpc.StatusCode.UNAVAILABLE
    steps = [e for e in proc.events() if e in ("draining", "drained", "stopped")]
    assert steps == ["draining", "drained", "stopped"]


@pytest.mark.parametrize("stack", ["aio", "sync"])
async def test_a_second_signal_cuts_the_drain_short(tmp_path: Path, stack: Stack) -> None:
    server = {"drain_period_seconds": 120, "grace_period_seconds": GRACE_S, "stack": stack}
    with _ratelimit(tmp_path, server) as proc:
        await _until_serving(proc.address)
        proc.process.send_signal(signal.SIGTERM)
        await proc.wait_for("draining")
        assert await _health(proc.address) == NOT_SERVING
        signalled = time.monotonic()
        proc.process.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.process.wait, EXIT_MARGIN_S)
        assert code == 0, proc.log.read_text()
        assert time.monotonic() - signalled < EXIT_MARGIN_S
    drained = [json.loads(line) for line in proc.log.read_text().splitlines() if "drained" in line]
    assert drained[0]["cut_short"] is True
