"""HttpFetcher against real loopback servers: deadlines, caps, redirects, TLS, proxies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_service.jwks import FetchError, HttpFetcher, ProxyConfig
from authz_service.jwks.fetch import Streams, open_tcp
from authz_service.tokens.settings import tls_context
from tests.authz_service.jwks.network import LocalProxy, PrivateCa
from tests.authz_service.tokens.conftest import LocalIdp, Reply

IDP_NAME = "idp.example.test"  # never resolved: proxies and connectors map it to loopback


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCa:
    return PrivateCa(tmp_path / "ca")


@pytest.fixture
def tls_idp(ca: PrivateCa) -> Iterator[LocalIdp]:
    server = LocalIdp(tls=ca.server_context("localhost", "127.0.0.1", IDP_NAME), host="localhost")
    server.set("/jwks", Reply(body=b'{"keys": []}'))
    yield server
    server.stop()


class LoopbackConnector:
    """A Connector that sends every name to 127.0.0.1 and counts direct connections."""

    def __init__(self) -> None:
        self.connections: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Streams:
        self.connections.append((host, port))
        return await open_tcp("127.0.0.1", port)


async def get(fetcher: HttpFetcher, url: str, *, cap: int = 1000) -> bytes:
    result = await fetcher.fetch(url, timeout_seconds=2, max_bytes=cap)
    assert result.status == 200
    return result.body


# -- one deadline for the whole fetch -------------------------------------------------------


async def test_a_trickling_body_is_cut_off_at_the_deadline(idp: LocalIdp) -> None:
    # 1 byte every 50 ms: each read is quick, so only a total deadline can stop it.
    idp.set("/slow", Reply(body=b"x" * 200, trickle=0.05))
    began = time.monotonic()
    with pytest.raises(FetchError, match=r"within 0\.3s"):
        await HttpFetcher().fetch(idp.url("/slow"), timeout_seconds=0.3, max_bytes=1000)
    assert 0.25 < time.monotonic() - began < 3.0  # the deadline, not the ~10 s body


async def test_a_slow_server_does_not_hold_up_another_fetch(idp: LocalIdp) -> None:
    # Many more trickling fetches than the old thread pool had threads (min(32, cpus + 4)).
    idp.set("/slow", Reply(body=b"x" * 200, trickle=0.05))
    idp.set("/fast", Reply(body=b'{"keys": []}'))
    fetcher = HttpFetcher()
    slow = [
        asyncio.create_task(fetcher.fetch(idp.url("/slow"), timeout_seconds=3, max_bytes=1000))
        for _ in range(40)
    ]
    await asyncio.sleep(0.1)  # every slow fetch is connected and trickling
    assert await get(fetcher, idp.url("/fast")) == b'{"keys": []}'
    assert not any(task.done() for task in slow)  # answered while every slow one waits
    results = await asyncio.gather(*slow, return_exceptions=True)
    assert all(isinstance(r, FetchError) for r in results)


async def test_a_server_that_never_answers_is_cut_off(idp: LocalIdp) -> None:
    idp.set("/hang", Reply(body=b"{}", delay=3.0))
    began = time.monotonic()
    with pytest.raises(FetchError, match="within"):
        await HttpFetcher().fetch(idp.url("/hang"), timeout_seconds=0.2, max_bytes=100)
    assert time.monotonic() - began < 1.5  # the 0.2 s timeout, not the 3 s server


# -- caps, statuses and redirects -----------------------------------------------------------


async def test_size_cap_with_and_without_content_length(idp: LocalIdp) -> None:
    fetcher = HttpFetcher()
    idp.set("/big", Reply(body=b"x" * 101))
    with pytest.raises(FetchError, match="over 100 bytes"):
        await fetcher.fetch(idp.url("/big"), timeout_seconds=1, max_bytes=100)
    assert await get(fetcher, idp.url("/big"), cap=101) == b"x" * 101
    # No Content-Length (the body ends when the connection closes): counted as it arrives.
    idp.set("/stream", Reply(body=b"y" * 150, content_length=False))
    with pytest.raises(FetchError, match="over 100 bytes"):
        await fetcher.fetch(idp.url("/stream"), timeout_seconds=2, max_bytes=100)
    idp.set("/stream", Reply(body=b"y" * 100, content_length=False))
    assert await get(fetcher, idp.url("/stream"), cap=100) == b"y" * 100


async def test_error_statuses_are_answers_without_a_body(idp: LocalIdp) -> None:
    idp.set("/err", Reply(status=500, body=b"stack trace", headers={"Cache-Control": "no-store"}))
    result = await HttpFetcher().fetch(idp.url("/err"), timeout_seconds=1, max_bytes=100)
    assert (result.status, result.body, result.headers["cache-control"]) == (500, b"", "no-store")


async def test_follows_a_few_http_redirects_only(idp: LocalIdp) -> None:
    fetcher = HttpFetcher()
    idp.set("/moved", Reply(status=302, headers={"Location": "/jwks"}))
    idp.set("/jwks", Reply(body=b"{}"))
    assert await get(fetcher, idp.url("/moved")) == b"{}"
    for target in ("file:///etc/passwd", "ftp://127.0.0.1/jwks", "gopher://x/"):
        idp.set("/evil", Reply(status=302, headers={"Location": target}))
        with pytest.raises(FetchError, match="refused redirect"):
            await fetcher.fetch(idp.url("/evil"), timeout_seconds=1, max_bytes=100)
    # Off loopback over plain http: refused before any connection is made.
    idp.set("/off", Reply(status=307, headers={"Location": "http://192.0.2.1/jwks"}))
    with pytest.raises(FetchError, match="plain http"):
        await fetcher.fetch(idp.url("/off"), timeout_seconds=1, max_bytes=100)
    for n in range(5):
        idp.set(f"/loop{n}", Reply(status=301, headers={"Location": f"/loop{n + 1}"}))
    with pytest.raises(FetchError, match="more than 3 redirects"):
        await fetcher.fetch(idp.url("/loop0"), timeout_seconds=1, max_bytes=100)


async def test_refuses_other_schemes_and_insecure_http() -> None:
    with pytest.raises(FetchError, match="only http and https"):
        await HttpFetcher().fetch("file:///etc/passwd", timeout_seconds=1, max_bytes=100)
    with pytest.raises(FetchError, match="plain http"):
        await HttpFetcher().fetch("http://192.0.2.1/jwks", timeout_seconds=1, max_bytes=100)


# -- TLS with a private CA ------------------------------------------------------------------


async def test_private_ca_is_trusted_when_configured(tls_idp: LocalIdp, ca: PrivateCa) -> None:
    fetcher = HttpFetcher(tls=tls_context(ca.ca_file))
    assert await get(fetcher, tls_idp.url("/jwks")) == b'{"keys": []}'


async def test_wrong_ca_or_system_store_refuses_the_idp(tls_idp: LocalIdp, tmp_path: Path) -> None:
    other = PrivateCa(tmp_path / "other")
    for fetcher in (HttpFetcher(tls=tls_context(other.ca_file)), HttpFetcher()):
        with pytest.raises(FetchError, match="certificate"):
            await fetcher.fetch(tls_idp.url("/jwks"), timeout_seconds=2, max_bytes=100)
    assert tls_idp.hits["/jwks"] == 0


async def test_host_name_must_match_the_certificate(ca: PrivateCa) -> None:
    server = LocalIdp(tls=ca.server_context("only-this-name.test"), host="localhost")
    server.set("/jwks", Reply(body=b"{}"))
    try:
        with pytest.raises(FetchError, match="certificate"):
            await HttpFetcher(tls=tls_context(ca.ca_file)).fetch(
                server.url("/jwks"), timeout_seconds=2, max_bytes=100
            )
    finally:
        server.stop()


async def test_https_redirect_to_http_is_refused(tls_idp: LocalIdp, ca: PrivateCa) -> None:
    tls_idp.set("/down", Reply(status=302, headers={"Location": "http://127.0.0.1:1/jwks"}))
    with pytest.raises(FetchError, match="from https to http"):
        await HttpFetcher(tls=tls_context(ca.ca_file)).fetch(
            tls_idp.url("/down"), timeout_seconds=1, max_bytes=100
        )


# -- proxies from the environment -----------------------------------------------------------


@pytest.fixture
def proxy(tls_idp: LocalIdp) -> Iterator[LocalProxy]:
    server = LocalProxy({IDP_NAME: "127.0.0.1", "localhost": "127.0.0.1"})
    yield server
    server.stop()


def named_url(idp: LocalIdp, path: str, scheme: str = "https") -> str:
    return f"{scheme}://{IDP_NAME}:{idp.port}{path}"


async def test_https_goes_through_the_proxy_with_connect(
    tls_idp: LocalIdp, ca: PrivateCa, proxy: LocalProxy
) -> None:
    connector = LoopbackConnector()
    proxies = ProxyConfig.from_env({"HTTPS_PROXY": proxy.url})
    fetcher = HttpFetcher(tls=tls_context(ca.ca_file), proxies=proxies, connect=connector)
    assert await get(fetcher, named_url(tls_idp, "/jwks")) == b'{"keys": []}'
    assert proxy.log.requests == {("CONNECT", f"{IDP_NAME}:{tls_idp.port}"): 1}
    assert connector.connections == [("127.0.0.1", proxy.port)]  # only ever to the proxy
    assert tls_idp.hits["/jwks"] == 1  # and TLS to the IdP ran through the tunnel


@pytest.mark.parametrize(
    "no_proxy", [IDP_NAME, ".example.test", "example.test", "*", "a, idp.example.test:443"]
)
async def test_no_proxy_bypasses_the_proxy(
    tls_idp: LocalIdp, ca: PrivateCa, proxy: LocalProxy, no_proxy: str
) -> None:
    connector = LoopbackConnector()
    proxies = ProxyConfig.from_env({"HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy})
    fetcher = HttpFetcher(tls=tls_context(ca.ca_file), proxies=proxies, connect=connector)
    assert await get(fetcher, named_url(tls_idp, "/jwks")) == b'{"keys": []}'
    assert proxy.used == 0
    assert connector.connections == [(IDP_NAME, tls_idp.port)]


async def test_lowercase_variables_win(tls_idp: LocalIdp, ca: PrivateCa, proxy: LocalProxy) -> None:
    env = {"https_proxy": proxy.url, "HTTPS_PROXY": "http://127.0.0.1:1", "no_proxy": "other"}
    fetcher = HttpFetcher(
        tls=tls_context(ca.ca_file),
        proxies=ProxyConfig.from_env({**env, "NO_PROXY": IDP_NAME}),
        connect=LoopbackConnector(),
    )
    assert await get(fetcher, named_url(tls_idp, "/jwks")) == b'{"keys": []}'
    assert proxy.used == 1  # https_proxy, and no_proxy (not NO_PROXY) was read


async def test_plain_http_through_a_forward_proxy_with_credentials(proxy: LocalProxy) -> None:
    plain = LocalIdp()
    plain.set("/jwks", Reply(body=b"{}"))
    try:
        env = {"http_proxy": f"http://svc%40corp:s3cret@127.0.0.1:{proxy.port}"}
        fetcher = HttpFetcher(
            proxies=ProxyConfig.from_env(env), allow_insecure_http=True, connect=LoopbackConnector()
        )
        assert await get(fetcher, f"http://{IDP_NAME}:{plain.port}/jwks") == b"{}"
        assert proxy.log.requests == {("GET", f"http://{IDP_NAME}:{plain.port}/jwks"): 1}
        assert proxy.log.authorizations == ["Basic c3ZjQGNvcnA6czNjcmV0"]  # svc@corp:s3cret
    finally:
        plain.stop()


async def test_loopback_targets_never_use_the_proxy(idp: LocalIdp, proxy: LocalProxy) -> None:
    idp.set("/jwks", Reply(body=b"{}"))
    env = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url}
    fetcher = HttpFetcher(proxies=ProxyConfig.from_env(env))
    assert await get(fetcher, idp.url("/jwks")) == b"{}"
    assert proxy.used == 0


async def test_a_proxy_that_refuses_connect_fails_the_fetch(
    tls_idp: LocalIdp, ca: PrivateCa
) -> None:
    refusing = LocalProxy({}, refuse_connect=True)
    try:
        fetcher = HttpFetcher(
            tls=tls_context(ca.ca_file),
            proxies=ProxyConfig.from_env({"HTTPS_PROXY": refusing.url}),
            connect=LoopbackConnector(),
        )
        with pytest.raises(FetchError, match="refused CONNECT with HTTP 403"):
            await fetcher.fetch(named_url(tls_idp, "/jwks"), timeout_seconds=2, max_bytes=100)
        assert tls_idp.hits["/jwks"] == 0
    finally:
        refusing.stop()
