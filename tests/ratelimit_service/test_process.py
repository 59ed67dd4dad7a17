"""The `serve` process: refuses bad config, reloads on SIGHUP and on file change (keeping
the old rules when the new ones are bad), drains and exits on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimit_service.cli import main
from sidecar_runtime.settings import Stack
from tests.ratelimit_service.service_process import (
    ServiceProcess,
    serving,
    start_service,
    write_settings,
)
from tests.support.grpc_clients import channel
from tests.support.redis_servers import RedisServer, free_port

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


def rules_named(name: str) -> str:
    return (
        "domain: edge\ndescriptors:\n  - key: remote_address\n"
        f"    rate_limit: {{name: {name}, unit: hour, requests_per_unit: 100}}\n"
    )


def replace(path: Path, text: str) -> None:
    """Swap the file atomically, as a deployment (or a ConfigMap update) would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def limit_name(service: ServiceProcess) -> str:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="192.0.2.1")
    request = rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    async with channel(service.address) as ch:
        reply = await rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request, timeout=5)
    return str(reply.statuses[0].current_limit.name)


async def until_name(service: ServiceProcess, name: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (current := await limit_name(service)) != name:
        assert time.monotonic() < deadline, f"still {current!r}, wanted {name!r}"
        await asyncio.sleep(0.05)


def test_serve_refuses_bad_rules(
    fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = fixtures / "bad" / "duplicate_descriptor.yaml"
    settings = write_settings(tmp_path / "service.yaml", bad)
    assert main(["serve", "--settings", str(settings)]) == 2
    assert f"error: {bad}: descriptors[1]: duplicate descriptor" in capsys.readouterr().err


async def test_sighup_reloads_and_bad_rules_keep_the_old(tmp_path: Path, stack: Stack) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_named("first"))
    settings = write_settings(
        tmp_path / "service.yaml", rules, server={"stack": stack}, reload={"watch": False}
    )
    with serving(settings, tmp_path / "service.log") as service:
        assert await limit_name(service) == "first"
        replace(rules, rules_named("second"))
        service.signal(signal.SIGHUP)
        await asyncio.to_thread(service.wait_for, "reloaded")
        assert await limit_name(service) == "second"
        replace(rules, "domain: edge\ndescriptors:\n  - key: x\n    rate_limit: {unit: eon}\n")
        service.signal(signal.SIGHUP)
        failed = await asyncio.to_thread(service.wait_for, "reload_failed")
        assert (failed["file"], failed["key"]) == (str(rules), "descriptors[0].rate_limit.unit")
        assert await limit_name(service) == "second"  # the old rules stay
        assert service.stop() == 0
    assert any(line.get("msg") == "shutting down" for line in service.lines())


async def test_file_change_reloads_by_itself(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules = rules_dir / "edge.yaml"
    rules.write_text(rules_named("first"))
    settings = write_settings(
        tmp_path / "service.yaml", rules_dir, reload={"watch": True, "interval_seconds": 0.1}
    )
    with serving(settings, tmp_path / "service.log") as service:
        assert await limit_name(service) == "first"
        replace(rules, rules_named("changed"))
        await until_name(service, "changed")
        (rules_dir / "other.yaml").write_text("domain: edge\n")  # a second `edge`: refused
        await asyncio.to_thread(service.wait_for, "reload_failed")
        assert await limit_name(service) == "changed"


@pytest.mark.redis
async def test_workers_share_one_port_and_one_redis(
    tmp_path: Path, redis_server: RedisServer, stack: Stack
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_named("shared"))
    port = free_port()
    settings = write_settings(
        tmp_path / "service.yaml",
        rules,
        server={"listen": f"127.0.0.1:{port}", "workers": 2, "stack": stack},
        store={"type": "redis", "url": redis_server.url, "timeouts": {"call_ms": 1000}},
        reload={"watch": False},
    )
    supervisor = start_service(["serve", "--settings", str(settings)], tmp_path / "service.log")
    try:
        supervisor.wait_for("serving", count=2)  # one line per worker
        supervisor.port = port
        names = [await limit_name(supervisor) for _ in range(20)]
        assert set(names) == {"shared"}
    finally:
        assert supervisor.stop() == 0
    pids = {line["pid"] for line in supervisor.lines() if line.get("event") == "serving"}
    assert len(pids) == 2
    assert redis_server.command_calls("evalsha") == 20  # both workers used the one Redis
