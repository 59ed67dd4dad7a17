"""The loopback debug listener, for real: an App on both server stacks with the listener
on a free loopback port, called over HTTP (/, /rlconfig, /stats, /json), and the
settings' refusal of any other address."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimit_service.app import App, debug_listen
from ratelimit_service.debug_http import MAX_BODY_BYTES
from ratelimit_service.settings import ServiceSettings
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.settings import Stack
from tests.support.grpc_clients import channel
from tests.support.processes import free_port

pytestmark = pytest.mark.grpc

RULES = """
domain: edge
descriptors:
  - key: subject
    rate_limit: {name: per-subject, unit: second, requests_per_unit: 2}
  - key: path
    value: /api/*
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 600, burst: 50}
    descriptors:
      - key: method
        value: DELETE
        rate_limit: {unit: hour, unit_multiplier: 2, requests_per_unit: 10}
  - key: internal
    rate_limit: {unlimited: true}
"""

RULE_LINES = [
    'edge.subject: name="per-subject" unit=second requests_per_unit=2 burst=2'
    " shadow_mode=false quota_mode=false",
    'edge.path_/api/*: name="" unit=minute requests_per_unit=600 burst=50'
    " shadow_mode=true quota_mode=false",
    'edge.path_/api/*.method_DELETE: name="" unit=hour unit_multiplier=2'
    " requests_per_unit=10 burst=10 shadow_mode=false quota_mode=false",
    'edge.internal: name="" unlimited=true shadow_mode=false quota_mode=false',
]


def settings_for(tmp_path: Path, *, stack: Stack = "aio", **extra: Any) -> ServiceSettings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return ServiceSettings.model_validate(
        {
            "server": {"listen": "127.0.0.1:0", "tls": {"mode": "plaintext"}, "stack": stack},
            "rules": str(rules),
            "store": {"type": "memory"},
            "reload": {"watch": False},
            "debug": {"listen": f"127.0.0.1:{free_port()}"},
            **extra,
        }
    )


@dataclass
class Running:
    app: App
    grpc_address: str
    debug_port: int


@pytest.fixture
async def running(tmp_path: Path, stack: Stack) -> AsyncIterator[Running]:
    # A stopped clock: the per-subject bucket (2 tokens) must not refill between calls.
    app = App(settings_for(tmp_path, stack=stack), clock=ManualClock())
    port = await app.start()
    assert app.debug is not None
    try:
        yield Running(app, f"127.0.0.1:{port}", app.debug.port)
    finally:
        await app.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


async def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request from a thread: on the aio stack /json needs this loop to answer."""
    return await asyncio.to_thread(_http, port, method, path, body, headers or {})


async def post_json(port: int, request: Any) -> Reply:
    return await http_call(port, "POST", "/json", json.dumps(request).encode())


def subject(value: str, *, domain: str = "edge") -> dict[str, Any]:
    return {"domain": domain, "descriptors": [{"entries": [{"key": "subject", "value": value}]}]}


# -- GET ---------------------------------------------------------------------------------


async def test_the_root_lists_the_endpoints(running: Running) -> None:
    reply = await http_call(running.debug_port, "GET", "/")
    assert reply.status == 200
    text = reply.body.decode()
    for path in ("/rlconfig", "/stats", "/json"):
        assert path in text


async def test_rlconfig_prints_one_line_per_limit(running: Running) -> None:
    reply = await http_call(running.debug_port, "GET", "/rlconfig")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.body.decode().splitlines() == RULE_LINES


async def test_rlconfig_shows_the_global_modes(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, global_shadow_mode=True, global_quota_mode=True)
    app = App(settings, clock=ManualClock())
    await app.start()
    try:
        assert app.debug is not None
        reply = await http_call(app.debug.port, "GET", "/rlconfig")
    finally:
        await app.close()
    lines = reply.body.decode().splitlines()
    assert lines
    assert all(line.endswith("shadow_mode=true quota_mode=true") for line in lines)


async def test_stats_show_the_reference_names_after_calls(running: Running) -> None:
    for _ in range(3):
        await post_json(running.debug_port, subject("alice"))
    await post_json(running.debug_port, subject("x", domain="nope"))
    reply = await http_call(running.debug_port, "GET", "/stats")
    lines = set(reply.body.decode().splitlines())
    prefix = "ratelimit.service.rate_limit"
    assert f"{prefix}.edge.subject.total_hits: 3" in lines
    assert f"{prefix}.edge.subject.within_limit: 2" in lines
    assert f"{prefix}.edge.subject.over_limit: 1" in lines
    assert f"{prefix}.nope.domain_not_found: 1" in lines
    assert "alice" not in reply.body.decode()


# -- POST /json ----------------------------------------------------------------------------


async def test_json_answers_200_then_429_once_over_the_limit(running: Running) -> None:
    first = await post_json(running.debug_port, subject("bob"))
    assert first.status == 200
    assert first.headers["Content-Type"] == "application/json"
    answer = first.json()
    assert answer["overallCode"] == "OK"
    [status] = answer["statuses"]
    assert status["currentLimit"] == {
        "name": "per-subject",
        "requestsPerUnit": 2,
        "unit": "SECOND",
    }
    assert status["limitRemaining"] == 1
    await post_json(running.debug_port, subject("bob"))
    over = await post_json(running.debug_port, subject("bob"))
    assert over.status == 429
    assert over.json()["overallCode"] == "OVER_LIMIT"
    headers = {h["key"]: h["value"] for h in over.json()["responseHeadersToAdd"]}
    assert "retry-after" in headers


async def test_json_takes_the_same_path_as_grpc(running: Running) -> None:
    # A token taken over HTTP is missing for the gRPC call: one service, one bucket.
    await post_json(running.debug_port, subject("carol"))
    request = rls_pb2.RateLimitRequest(domain="edge")
    request.descriptors.add().entries.add(key="subject", value="carol")
    async with channel(running.grpc_address) as ch:
        answer = await rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(request, timeout=5)
    assert answer.statuses[0].limit_remaining == 0
    assert running.app.service.stats.requests == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not a JSON RateLimitRequest"),
        (b'{"domain": "edge", "nonsense": 1}', "not a JSON RateLimitRequest"),
        (b"[]", "not a JSON RateLimitRequest"),
        (b"\xff\xfe", "not a JSON RateLimitRequest"),
        (b"[" * 20_000 + b"]" * 20_000, "not a JSON RateLimitRequest"),
        (json.dumps(subject("x", domain="")).encode(), "domain must not be empty"),
        (b'{"domain": "edge"}', "descriptors must not be empty"),
    ],
)
async def test_json_answers_400_to_a_body_that_is_not_a_valid_request(
    running: Running, body: bytes, reason: str
) -> None:
    reply = await http_call(running.debug_port, "POST", "/json", body)
    assert reply.status == 400
    assert reason in reply.json()["error"]


async def test_json_refuses_a_body_over_the_cap_without_reading_it(running: Running) -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    reply = await http_call(running.debug_port, "POST", "/json", body)
    assert reply.status == 413


async def test_json_needs_a_content_length(running: Running) -> None:
    def raw_post() -> bytes:
        with socket.create_connection(("127.0.0.1", running.debug_port), timeout=10) as s:
            s.sendall(
                b"POST /json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            return s.recv(1024)

    assert b" 411 " in (await asyncio.to_thread(raw_post)).split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/json", 405, "POST"),
        ("POST", "/rlconfig", 405, "GET"),
        ("GET", "/nope", 404, None),
        ("POST", "/nope", 404, None),
    ],
)
async def test_wrong_methods_and_paths(
    running: Running, method: str, path: str, status: int, allow: str | None
) -> None:
    reply = await http_call(running.debug_port, method, path, b"{}" if method == "POST" else None)
    assert reply.status == status
    assert reply.headers.get("Allow") == allow


async def test_the_listener_closes_with_the_app(tmp_path: Path) -> None:
    app = App(settings_for(tmp_path), clock=ManualClock())
    await app.start()
    assert app.debug is not None
    port = app.debug.port
    await app.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_no_listener_without_the_setting(tmp_path: Path) -> None:
    app = App(settings_for(tmp_path, debug={"listen": None}), clock=ManualClock())
    assert app.debug is None


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:6070", "192.0.2.1:6070", "[::]:6070", "localhost:6070"]
)
def test_settings_refuse_a_listener_off_loopback(tmp_path: Path, listen: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="loopback"):
        settings_for(tmp_path, debug={"listen": listen})


@pytest.mark.parametrize("listen", ["127.0.0.1:6070", "127.0.0.2:6070", "[::1]:6070"])
def test_settings_take_a_loopback_listener(tmp_path: Path, listen: str) -> None:
    assert settings_for(tmp_path, debug={"listen": listen}).debug.listen == listen


@pytest.mark.parametrize(
    ("listen", "worker", "expected"),
    [
        ("127.0.0.1:6070", 0, "127.0.0.1:6070"),
        ("127.0.0.1:6070", 3, "127.0.0.1:6073"),
        ("[::1]:6070", 1, "[::1]:6071"),
    ],
)
def test_each_worker_listens_on_its_own_port(listen: str, worker: int, expected: str) -> None:
    assert debug_listen(listen, worker) == expected


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_loopback_listener_answers(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, debug={"listen": f"[::1]:{free_port()}"})
    app = App(settings, clock=ManualClock())
    await app.start()
    try:
        assert app.debug is not None
        port = app.debug.port

        def get_root() -> int:
            connection = http.client.HTTPConnection("::1", port, timeout=10)
            try:
                connection.request("GET", "/")
                return connection.getresponse().status
            finally:
                connection.close()

        assert await asyncio.to_thread(get_root) == 200
    finally:
        await app.close()
