"""FetchingIntrospectionVerifier against a real node-oidc-provider on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from authz_service.introspection import IntrospectionIssuerSettings, IntrospectionRefused
from authz_service.introspection.breaker import BreakerState
from authz_service.introspection.fetching import FetchingIntrospectionVerifier
from authz_service.introspection.http_client import Endpoint, HttpIntrospectionEndpoint
from sidecar_runtime.clock import ManualClock, SystemClock
from tests.support.oidc_provider import RESOURCE, SIDECAR, Provider
from tests.support.processes import free_port


class CountingEndpoint:
    """Wraps the real endpoint and counts the HTTP calls."""

    def __init__(self, inner: Endpoint) -> None:
        self.inner = inner
        self.calls = 0

    async def introspect(self, token: str) -> bytes:
        self.calls += 1
        return await self.inner.introspect(token)


@pytest.fixture
def secret_env() -> Iterator[str]:
    os.environ["TEST_INTROSPECTION_SECRET"] = SIDECAR[1]
    yield "TEST_INTROSPECTION_SECRET"
    del os.environ["TEST_INTROSPECTION_SECRET"]


def _settings(
    endpoint: str, issuer: str, secret_env: str, **more: Any
) -> IntrospectionIssuerSettings:
    values: dict[str, Any] = {
        "issuer": issuer,
        "introspection_endpoint": endpoint,
        "client_id": SIDECAR[0],
        "client_secret_env": secret_env,
        "audiences": [RESOURCE],
        "client_id_as_subject": True,
        "max_cache_seconds": 60,
        "negative_cache_seconds": 5,
        "breaker_failures": 2,
        "breaker_open_seconds": 5,
        "timeout_seconds": 1.0,
    }
    values.update(more)
    return IntrospectionIssuerSettings.model_validate(values)


def _verifier(
    settings: IntrospectionIssuerSettings, clock: ManualClock | SystemClock
) -> tuple[FetchingIntrospectionVerifier, CountingEndpoint]:
    counting = CountingEndpoint(
        HttpIntrospectionEndpoint(
            url=settings.introspection_endpoint,
            client_id=settings.client_id,
            client_secret=settings.read_client_secret(),
            timeout_seconds=settings.timeout_seconds,
            max_bytes=settings.max_response_bytes,
        )
    )
    fetching = FetchingIntrospectionVerifier.from_settings(settings, clock=clock, endpoint=counting)
    return fetching, counting


def _against(provider: Provider, secret_env: str, clock: Any, **more: Any) -> Any:
    settings = _settings(provider.introspection_endpoint, provider.issuer, secret_env, **more)
    return _verifier(settings, clock)


async def test_an_active_token_is_a_principal(provider: Provider, secret_env: str) -> None:
    fetching, counting = _against(provider, secret_env, SystemClock())
    token, issued = provider.token(scope="orders:read orders:write")
    principal = await fetching.verify(token)
    assert principal.subject == "app"  # client credentials: the client stands for the subject
    assert principal.client_id == "app"
    assert principal.issuer == provider.issuer
    assert principal.audiences == (RESOURCE,)
    assert principal.scopes == {"orders:read", "orders:write"}
    assert principal.roles == {"reader", "auditor"}
    assert principal.expires_at == pytest.approx(
        SystemClock().now() + float(issued["expires_in"]), abs=5
    )
    await fetching.verify(token)
    assert counting.calls == 1  # the second came from the cache


async def test_a_random_token_is_inactive(provider: Provider, secret_env: str) -> None:
    fetching, _ = _against(provider, secret_env, SystemClock())
    with pytest.raises(IntrospectionRefused) as caught:
        await fetching.verify(secrets.token_urlsafe(32))
    assert (caught.value.reason, caught.value.status_hint) == ("inactive", 401)


async def test_a_revoked_token_is_inactive_once_the_cache_expires(
    provider: Provider, secret_env: str
) -> None:
    clock = ManualClock(start=SystemClock().now())
    fetching, counting = _against(provider, secret_env, clock)
    token, _ = provider.token()
    await fetching.verify(token)
    provider.revoke(token)
    clock.advance(59)
    await fetching.verify(token)  # still cached: revocation latency is max_cache_seconds
    clock.advance(1)
    with pytest.raises(IntrospectionRefused, match="inactive"):
        await fetching.verify(token)
    assert counting.calls == 2


async def test_concurrent_verifies_of_one_token_make_one_call(
    provider: Provider, secret_env: str
) -> None:
    fetching, counting = _against(provider, secret_env, SystemClock())
    token, _ = provider.token()
    principals = await asyncio.gather(*(fetching.verify(token) for _ in range(20)))
    assert {p.subject for p in principals} == {"app"}
    assert counting.calls == 1


async def test_a_wrong_audience_is_refused(provider: Provider, secret_env: str) -> None:
    fetching, _ = _against(provider, secret_env, SystemClock(), audiences=["https://other"])
    token, _ = provider.token()
    with pytest.raises(IntrospectionRefused, match="wrong_audience"):
        await fetching.verify(token)


async def test_wrong_client_credentials_are_unavailable_not_inactive(
    provider: Provider, secret_env: str
) -> None:
    os.environ[secret_env] = "not-the-secret"
    fetching, _ = _against(provider, secret_env, SystemClock())
    token, _ = provider.token()
    with pytest.raises(IntrospectionRefused) as caught:
        await fetching.verify(token)
    assert (caught.value.reason, caught.value.status_hint) == ("unavailable", 503)


async def test_a_dead_endpoint_is_unavailable_then_the_breaker_opens(secret_env: str) -> None:
    clock = ManualClock()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = _settings(f"{dead}/token/introspection", dead, secret_env)
    fetching, counting = _verifier(settings, clock)
    for n in range(2):
        with pytest.raises(IntrospectionRefused, match="unavailable"):
            await fetching.verify(f"token-{n}")
    assert fetching.breaker.state is BreakerState.OPEN
    with pytest.raises(IntrospectionRefused, match="unavailable"):
        await fetching.verify("token-3")
    assert counting.calls == 2  # the open breaker kept the third off the endpoint
    clock.advance(5)
    with pytest.raises(IntrospectionRefused, match="unavailable"):
        await fetching.verify("token-4")  # the trial call, which fails again
    assert counting.calls == 3
    assert fetching.breaker.state is BreakerState.OPEN


async def test_a_silent_endpoint_times_out(secret_env: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; returns when the client gives up and closes
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/introspect"
        settings = _settings(url, "http://127.0.0.1", secret_env, timeout_seconds=0.2)
        fetching, _ = _verifier(settings, SystemClock())
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(IntrospectionRefused, match="unavailable"):
            await fetching.verify("some-token")
        assert loop.time() - started < 1.0
    finally:
        server.close()
        await server.wait_closed()
