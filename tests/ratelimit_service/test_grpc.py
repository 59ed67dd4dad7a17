"""The real servicer in an in-process server (grpc.aio, and grpcio's thread-pool server:
the `stack` fixture), called with the xds-protos stubs, over plaintext and mTLS, and with
the real grpcurl."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.pki import Pki
from ratelimit_service.app import App
from ratelimit_service.limits.planner import DescriptorRequest, Request
from ratelimit_service.servicer import SERVICE_NAME
from ratelimit_service.settings import ServiceSettings
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.settings import Stack
from tests.ratelimit_service.request_bodies import AT_THE_CAPS, MALFORMED
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.grpc_clients import channel
from tests.support.grpcurl import grpcurl
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.grpc

RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {name: per-client-address, unit: second, requests_per_unit: 20, burst: 40}
  - key: subject
    rate_limit: {name: per-subject, unit: second, requests_per_unit: 10, burst: 20}
"""

Response = rls_pb2.RateLimitResponse


def make_settings(tmp_path: Path, pki: Pki | None = None, stack: Stack = "aio") -> ServiceSettings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    tls: dict[str, Any] = {"mode": "plaintext"}
    if pki is not None:
        tls = {
            "mode": "mtls",
            "cert_file": str(pki.sidecar_cert),
            "key_file": str(pki.sidecar_key),
            "ca_file": str(pki.ca),
        }
    return ServiceSettings.model_validate(
        {
            "server": {"listen": "127.0.0.1:0", "tls": tls, "stack": stack},
            "rules": str(rules),
            "store": {"type": "memory"},
            "reload": {"watch": False},
        }
    )


@pytest.fixture
async def plaintext_app(tmp_path: Path, stack: Stack) -> AsyncIterator[tuple[App, str]]:
    # A stopped clock: 41 calls in a row must not see a token refill (one per 50 ms) on a
    # slow machine, and reset times are exact.
    app = App(make_settings(tmp_path, stack=stack), clock=ManualClock())
    port = await app.start()
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        await app.close()


def rl_request(domain: str = "edge", hits: int = 0, **entries: str) -> Any:
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[
            ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()
        ]
    )
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=[descriptor], hits_addend=hits)


async def test_over_limit_response_over_plaintext(plaintext_app: tuple[App, str]) -> None:
    _, address = plaintext_app
    async with channel(address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        first = await stub.ShouldRateLimit(rl_request(remote_address="192.0.2.7"), timeout=5)
        assert first.overall_code == Response.OK
        (status,) = first.statuses
        assert status.current_limit.name == "per-client-address"
        assert status.current_limit.requests_per_unit == 20
        assert status.current_limit.unit == Response.RateLimit.SECOND
        assert status.limit_remaining == 39
        assert status.duration_until_reset.ToMicroseconds() == 50_000
        assert not first.response_headers_to_add
        for _ in range(39):
            await stub.ShouldRateLimit(rl_request(remote_address="192.0.2.7"), timeout=5)
        denied = await stub.ShouldRateLimit(rl_request(remote_address="192.0.2.7"), timeout=5)
    assert denied.overall_code == Response.OVER_LIMIT
    assert denied.statuses[0].code == Response.OVER_LIMIT
    assert denied.statuses[0].limit_remaining == 0
    assert {h.key: h.value for h in denied.response_headers_to_add} == {"retry-after": "1"}
    metadata = dict(denied.dynamic_metadata)
    assert len(metadata.pop("decision_id")) == 24  # joins access log, decision line, trace
    assert metadata == {"decision": "over_limit", "domain": "edge", "rule": "per-client-address"}


async def test_per_descriptor_hits_addend_zero_is_a_check(plaintext_app: tuple[App, str]) -> None:
    _, address = plaintext_app
    request = rl_request(subject="alice")
    request.descriptors[0].hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=0))
    async with channel(address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        for _ in range(3):
            checked = await stub.ShouldRateLimit(request, timeout=5)
            assert checked.statuses[0].limit_remaining == 20
        spent = await stub.ShouldRateLimit(rl_request(hits=20, subject="alice"), timeout=5)
        assert spent.overall_code == Response.OK
        assert (await stub.ShouldRateLimit(request, timeout=5)).overall_code == Response.OVER_LIMIT


async def test_malformed_requests_are_invalid_argument(plaintext_app: tuple[App, str]) -> None:
    _, address = plaintext_app
    async with channel(address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(rl_request(domain="", subject="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="edge"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(rl_request(subject="x" * 5000), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = ch.unary_unary(f"/{SERVICE_NAME}/ShouldRateLimit")
        for _ in range(2):  # bytes that are no protobuf at all, twice: never remembered
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # and the server still answers
        answer = await stub.ShouldRateLimit(rl_request(subject="after-garbage"), timeout=5)
        assert answer.overall_code == Response.OK


async def test_proto_rules_and_caps_over_grpc(plaintext_app: tuple[App, str]) -> None:
    """Envoy's validate.rules and the servicer's caps, as bytes on the wire: each malformed
    body twice (the second must not be answered from the reader's memory), then the
    bodies right at the caps, which are answered."""
    _, address = plaintext_app
    async with channel(address) as ch:
        raw = ch.unary_unary(f"/{SERVICE_NAME}/ShouldRateLimit")
        for name, body in MALFORMED.items():
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(body, timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert "alice" not in (err.value.details() or "")
        for name, body in AT_THE_CAPS.items():
            answer = Response.FromString(await raw(body, timeout=5))
            assert answer.overall_code == Response.OK, name


async def test_mtls_requires_the_client_certificate(tmp_path: Path, pki: Pki, stack: Stack) -> None:
    app = App(make_settings(tmp_path, pki, stack))
    port = await app.start()
    address = f"127.0.0.1:{port}"
    try:
        async with channel(address, pki) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            answer = await stub.ShouldRateLimit(rl_request(subject="bob"), timeout=5)
            assert answer.overall_code == Response.OK
            assert answer.statuses[0].limit_remaining == 19
        async with channel(address, pki, client_cert=False) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ShouldRateLimit(rl_request(subject="bob"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with channel(address) as ch:  # plaintext against the TLS port
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ShouldRateLimit(rl_request(subject="bob"), timeout=5)
    finally:
        await app.close()


async def test_health_reports_the_service(plaintext_app: tuple[App, str]) -> None:
    _, address = plaintext_app
    async with channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpcurl_lists_calls_and_checks_health_over_mtls(
    tmp_path: Path, pki: Pki, stack: Stack
) -> None:
    app = App(make_settings(tmp_path, pki, stack))
    port = await app.start()
    address = f"127.0.0.1:{port}"
    try:
        listed = await asyncio.to_thread(grpcurl, address, "list", pki=pki)
        assert listed.returncode == 0, listed.stderr
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(listed.stdout.split())
        body = {
            "domain": "edge",
            "hits_addend": 40,
            "descriptors": [{"entries": [{"key": "remote_address", "value": "198.51.100.1"}]}],
        }
        called = await asyncio.to_thread(
            grpcurl, address, f"{SERVICE_NAME}/ShouldRateLimit", pki=pki, data=body
        )
        assert called.returncode == 0, called.stderr
        reply = json.loads(called.stdout)
        assert reply["overall_code"] == "OK"  # grpcurl prints the proto field names
        assert reply["statuses"][0]["current_limit"]["requests_per_unit"] == 20
        again = await asyncio.to_thread(
            grpcurl, address, f"{SERVICE_NAME}/ShouldRateLimit", pki=pki, data=body
        )
        assert json.loads(again.stdout)["overall_code"] == "OVER_LIMIT"
        checked = await asyncio.to_thread(
            grpcurl, address, "grpc.health.v1.Health/Check", pki=pki, data={"service": SERVICE_NAME}
        )
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout) == {"status": "SERVING"}
    finally:
        await app.close()


async def test_health_is_not_serving_from_the_start_when_redis_is_down(
    tmp_path: Path, stack: Stack
) -> None:
    from tests.support.processes import free_port

    base = make_settings(tmp_path, stack=stack).model_dump(mode="json")
    settings = ServiceSettings.model_validate(
        {**base, "store": {"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}}
    )
    app = App(settings)
    port = await app.start()
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.close()


@pytest.mark.redis
@ALSO_ON_UVLOOP
async def test_one_evalsha_per_call_through_the_servicer(
    tmp_path: Path, redis_server: RedisServer, stack: Stack
) -> None:
    base = make_settings(tmp_path, stack=stack).model_dump(mode="json")
    settings = ServiceSettings.model_validate(
        {**base, "store": {"type": "redis", "url": redis_server.url}}
    )
    app = App(settings)
    port = await app.start()  # the health probe opens the connections and loads the script
    request = rl_request(remote_address="192.0.2.8")
    request.descriptors.add().entries.add(key="subject", value="erin")
    try:
        loads = redis_server.command_calls("script|load")
        async with channel(f"127.0.0.1:{port}") as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            for _ in range(10):
                reply = await stub.ShouldRateLimit(request, timeout=5)
                assert reply.overall_code == Response.OK
                assert [s.current_limit.name for s in reply.statuses] == [
                    "per-client-address",
                    "per-subject",
                ]
        assert redis_server.command_calls("evalsha") == 10  # both descriptors in one call
        assert redis_server.command_calls("script|load") == loads == 1
        assert redis_server.command_calls("eval") == 0
    finally:
        await app.close()


@pytest.mark.parametrize("failure_mode", ["fail_open", "fail_closed"])
async def test_a_cluster_store_is_built_for_the_service_s_failure_mode(
    tmp_path: Path, failure_mode: str
) -> None:
    """A Cluster store counts a failed master by the failure mode in its all-or-nothing
    rule, so the app must build it with the service's (nothing connects yet)."""
    base = make_settings(tmp_path).model_dump(mode="json")
    settings = ServiceSettings.model_validate(
        {
            **base,
            "failure_mode": failure_mode,
            "store": {"type": "redis", "cluster": {"addresses": ["127.0.0.1:1"]}},
        }
    )
    app = App(settings, clock=ManualClock())
    try:
        assert app.store.name == "redis-cluster"
    finally:
        await app.close(stop_server=False)


def _with(tmp_path: Path, **extra: Any) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {**make_settings(tmp_path).model_dump(mode="json"), **extra}
    )


async def _ask_subject(app: App, times: int) -> list[Any]:
    request = Request(
        "edge",
        (
            DescriptorRequest((("subject", "alice"),)),
            DescriptorRequest((("remote_address", "192.0.2.7"),)),
        ),
    )
    return [await app.service.should_rate_limit(request) for _ in range(times)]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("global_shadow_mode", "shadow_over_limit"), ("global_quota_mode", "quota_over_limit")],
)
async def test_the_settings_global_modes_reach_the_service(
    tmp_path: Path, mode: str, reason: str
) -> None:
    """The subject's burst is 20, the address's 40: the 21st call is over on the subject
    only. Either global mode answers it OK (the quota mode: the address still has room)."""
    app = App(_with(tmp_path, **{mode: True}), clock=ManualClock())
    try:
        last = (await _ask_subject(app, 21))[-1]
        assert (last.code.name, last.reason) == ("OK", reason)
    finally:
        await app.close(stop_server=False)


async def test_the_settings_merge_domains_reaches_the_loader(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(RULES)
    (rules / "b.yaml").write_text(
        "domain: edge\ndescriptors:\n  - key: tenant\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n"
    )
    app = App(_with(tmp_path, rules=str(rules), merge_domains=True), clock=ManualClock())
    try:
        edge = app.service.rules.domain("edge")
        assert edge is not None
        assert edge.match((("tenant", "t1"),)) is not None  # from b.yaml
        assert edge.match((("subject", "alice"),)) is not None  # from a.yaml
    finally:
        await app.close(stop_server=False)
