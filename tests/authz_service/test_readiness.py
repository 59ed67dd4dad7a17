"""gRPC health follows the issuers' key sets: a real in-process server and health stub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_service.compiled_config import load_compiled_config
from authz_service.config_holder import ConfigHolder
from authz_service.readiness import ReadinessMonitor, readiness
from authz_service.servicer import SERVICE_NAME, AuthorizationServicer, add_to_server
from devstack.idp_keys import IdpKeys
from sidecar_runtime.clock import SystemClock
from sidecar_runtime.server import ServiceBinding, SidecarServer
from tests.authz_service.conftest import AUDIENCE
from tests.authz_service.tokens.conftest import LocalIdp, Reply

pytestmark = pytest.mark.grpc

WELL_KNOWN = "/.well-known/openid-configuration"

# -- the rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuers", "missing", "require_all", "serving"),
    [
        (0, 0, True, True),  # public routes only: nothing to wait for
        (0, 0, False, True),
        (2, 0, True, True),
        (2, 1, True, False),
        (2, 1, False, True),
        (2, 2, False, False),
        (1, 1, False, False),
    ],
)
def test_the_rule(issuers: int, missing: int, require_all: bool, serving: bool) -> None:
    without = {f"https://idp-{n}": "down" for n in range(missing)}
    state = readiness(issuers=issuers, without_keys=without, require_all=require_all)
    assert state.serving is serving
    assert state.without_keys == without


# -- through a real server -----------------------------------------------------------------


@pytest.fixture
def idps() -> Iterator[list[LocalIdp]]:
    servers = [LocalIdp(), LocalIdp()]
    yield servers
    for server in servers:
        server.stop()


def serve_discovery(idp: LocalIdp, keys: IdpKeys, *, issuer: str | None = None) -> None:
    idp.set(WELL_KNOWN, Reply.json({"issuer": issuer or idp.base, "jwks_uri": idp.url("/k")}))
    idp.set("/k", Reply.json(keys.public_jwks()))


def write(config_dir: Path, idps: list[LocalIdp], *, require_all: bool = True) -> Path:
    fast = {"retry_seconds": 0.1, "fetch_timeout_seconds": 1}
    issuers = [
        {
            "issuer": idp.base,
            "discovery": True,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256"],
            "jwks": fast,
        }
        for idp in idps
    ]
    config = {
        "server": {"listen": "127.0.0.1:0"},
        "issuers": issuers,
        "reload": {"watch": False},
        "health": {"require_all_issuers": require_all, "check_interval_seconds": 0.05},
        "routes": [{"name": "p", "methods": ["GET"], "path": "/p", "public": True}],
    }
    path = config_dir / "authz.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Running:
    holder: ConfigHolder
    monitor: ReadinessMonitor
    server: SidecarServer
    status: Callable[[], Any]


@pytest.fixture
async def start(config_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def _start(path: Path) -> Running:
        holder = ConfigHolder(
            await load_compiled_config(path, clock=SystemClock()), clock=SystemClock()
        )
        servicer = AuthorizationServicer(holder, None)
        binding = ServiceBinding(SERVICE_NAME, lambda s: add_to_server(servicer, s))
        server = SidecarServer(holder.current.settings.server, [binding])
        monitor = ReadinessMonitor(holder, server.set_serving)
        port = await server.start(serving=False)
        await monitor.update()
        monitor.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(service: str = "") -> str:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = await stub.Check(request, timeout=3)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        run = Running(holder, monitor, server, status)
        running.append(run)
        return run

    yield _start
    for run in running:
        await run.monitor.stop()
        await run.server.stop(0)
        await run.holder.current.close()


async def until_status(run: Running, expected: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (await run.status()) != expected:
        assert time.monotonic() < deadline, f"health never became {expected}"
        await asyncio.sleep(0.05)


def warnings_about_keys(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "authz_service.readiness" and r.levelno == logging.WARNING
    ]


async def test_not_serving_while_the_idp_is_down_at_start_then_serving(
    config_dir: Path, idps: list[LocalIdp], idp: IdpKeys, start: Any, caplog: Any
) -> None:
    down = idps[0]
    down.set(WELL_KNOWN, Reply(status=503))
    caplog.set_level(logging.INFO)
    run = await start(write(config_dir, idps[:1]))
    assert await run.status() == "NOT_SERVING"
    assert await run.status(SERVICE_NAME) == "NOT_SERVING"
    (fields,) = warnings_about_keys(caplog)
    assert fields["serving"] is False
    assert fields["issuers_without_keys"] == {down.base: "discovery answered HTTP 503"}
    serve_discovery(down, idp)  # the IdP comes up; the source retries every 0.1 s
    await until_status(run, "SERVING")
    assert await run.status(SERVICE_NAME) == "SERVING"
    assert any("every issuer has a usable key set" in r.getMessage() for r in caplog.records)


async def test_discovery_naming_another_issuer_is_not_serving_with_both_names(
    config_dir: Path, idps: list[LocalIdp], idp: IdpKeys, start: Any, caplog: Any
) -> None:
    wrong = idps[0]
    serve_discovery(wrong, idp, issuer=wrong.base + "/")
    with caplog.at_level(logging.WARNING):
        run = await start(write(config_dir, idps[:1]))
    assert await run.status() == "NOT_SERVING"
    (fields,) = warnings_about_keys(caplog)
    reason = fields["issuers_without_keys"][wrong.base]
    assert repr(wrong.base + "/") in reason
    assert repr(wrong.base) in reason


async def test_every_issuer_must_have_keys_by_default(
    config_dir: Path, idps: list[LocalIdp], idp: IdpKeys, start: Any
) -> None:
    serve_discovery(idps[0], idp)
    idps[1].set(WELL_KNOWN, Reply(status=500))
    run = await start(write(config_dir, idps))
    assert await run.status() == "NOT_SERVING"
    serve_discovery(idps[1], idp)
    await until_status(run, "SERVING")


async def test_one_issuer_with_keys_is_enough_when_not_strict(
    config_dir: Path, idps: list[LocalIdp], idp: IdpKeys, start: Any, caplog: Any
) -> None:
    serve_discovery(idps[0], idp)
    idps[1].set(WELL_KNOWN, Reply(status=500))
    with caplog.at_level(logging.WARNING):
        run = await start(write(config_dir, idps, require_all=False))
    assert await run.status() == "SERVING"
    (fields,) = warnings_about_keys(caplog)  # still said, loudly
    assert list(fields["issuers_without_keys"]) == [idps[1].base]


async def test_health_follows_a_reload(
    config_dir: Path, idps: list[LocalIdp], idp: IdpKeys, start: Any
) -> None:
    serve_discovery(idps[0], idp)
    idps[1].set(WELL_KNOWN, Reply(status=500))
    path = write(config_dir, idps[:1])
    run = await start(path)
    assert await run.status() == "SERVING"
    write(config_dir, idps)  # a second issuer, whose IdP is down
    assert await run.holder.reload()
    await until_status(run, "NOT_SERVING")
    write(config_dir, idps[:1])
    assert await run.holder.reload()
    await until_status(run, "SERVING")
