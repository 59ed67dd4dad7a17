"""JWKS lifecycle against a real HTTP server on 127.0.0.1 (see conftest.LocalIdp)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from authz_service.jwks import FetchError, HttpFetcher, ProxyConfig, RemoteKeySource
from authz_service.jwks.remote import ttl_from_headers
from authz_service.jwks.verification import FetchingVerifier
from authz_service.tokens import InvalidToken, JwksSettings
from sidecar_runtime.clock import ManualClock
from tests.authz_service.jwks.network import LocalProxy, PrivateCa
from tests.authz_service.tokens.conftest import Keys, LocalIdp, Reply, issuer
from tests.authz_service.tokens.factory import ISSUER, SigningKey, claims, jwks, mint

# Background refreshes far away unless a test asks otherwise; a real but short fetch timeout.
QUIET = JwksSettings(
    ttl_seconds=300,
    min_ttl_seconds=0.05,
    retry_seconds=300,
    unknown_kid_cooldown_seconds=30,
    fetch_timeout_seconds=0.2,
)


async def reason_of(v: FetchingVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as err:
        await v.verify(token)
    return err.value.reason


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Wait for background work on the real server (bounded; polls every 20 ms)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def started(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> AsyncIterator[Callable[..., Any]]:
    """Start a verifier on idp /jwks (serving rsa-1 unless the test set something else)."""
    verifiers: list[FetchingVerifier] = []

    async def start(jwks_settings: JwksSettings = QUIET, **kw: Any) -> FetchingVerifier:
        if "/jwks" not in idp.replies:
            idp.set("/jwks", Reply.json(jwks(keys.rsa)))
        settings = issuer(jwks_url=idp.url("/jwks"), jwks=jwks_settings, **kw)
        v = FetchingVerifier([settings], clock=clock)
        await v.start()
        verifiers.append(v)
        return v

    yield start
    for v in verifiers:
        await v.close()


def random_kid_token(key: SigningKey) -> str:
    return mint(key, claims(), header={"kid": secrets.token_hex(8)})


# -- rotation and unknown kids -------------------------------------------------------------


async def test_rotation_picks_up_new_keys_and_drops_removed_ones(
    started: Any, idp: LocalIdp, keys: Keys, clock: ManualClock
) -> None:
    v = await started()
    old_token = mint(keys.rsa, claims())
    assert (await v.verify(old_token)).key_id == "rsa-1"
    assert idp.hits["/jwks"] == 1

    idp.set("/jwks", Reply.json(jwks(keys.rsa_b)))  # the IdP rotated: rsa-1 out, rsa-2 in
    assert (await v.verify(mint(keys.rsa_b, claims()))).key_id == "rsa-2"
    assert idp.hits["/jwks"] == 2  # one refetch for the unknown kid

    # rsa-1 is gone: its cached token is no longer accepted, nor a fresh one.
    assert await reason_of(v, old_token) == "unknown_key"
    assert await reason_of(v, mint(keys.rsa, claims(jti="new"))) == "unknown_key"
    assert idp.hits["/jwks"] == 2  # and the cooldown held
    clock.advance(30)


async def test_unknown_kid_refetches_at_most_once_per_cooldown(
    started: Any, idp: LocalIdp, keys: Keys, clock: ManualClock
) -> None:
    v = await started()
    assert await reason_of(v, random_kid_token(keys.ed)) == "unknown_key"
    assert idp.hits["/jwks"] == 2
    assert await reason_of(v, random_kid_token(keys.ed)) == "unknown_key"
    clock.advance(29.9)
    assert await reason_of(v, random_kid_token(keys.ed)) == "unknown_key"
    assert idp.hits["/jwks"] == 2
    clock.advance(0.1)
    assert await reason_of(v, random_kid_token(keys.ed)) == "unknown_key"
    assert idp.hits["/jwks"] == 3


async def test_flood_of_random_kids_costs_one_fetch_per_cooldown(
    started: Any, idp: LocalIdp, keys: Keys, clock: ManualClock
) -> None:
    v = await started()
    idp.set("/jwks", Reply.json(jwks(keys.rsa), delay=0.05))  # slow enough to overlap
    for round_number in range(1, 4):
        flood = [random_kid_token(keys.ed) for _ in range(200)]
        results = await asyncio.gather(*(v.verify(t) for t in flood), return_exceptions=True)
        assert all(isinstance(r, InvalidToken) and r.reason == "unknown_key" for r in results)
        assert idp.hits["/jwks"] == 1 + round_number  # the initial load + one per cooldown
        clock.advance(30)
    # Genuine tokens were never disturbed.
    assert (await v.verify(mint(keys.rsa, claims()))).subject == "user-123"


async def test_concurrent_waiters_share_one_fetch_in_flight(
    started: Any, idp: LocalIdp, keys: Keys
) -> None:
    # With no cooldown at all, only merging keeps 50 simultaneous misses to one request.
    no_cooldown = QUIET.model_copy(update={"unknown_kid_cooldown_seconds": 0})
    v = await started(no_cooldown)
    idp.set("/jwks", Reply.json(jwks(keys.rsa, keys.rsa_b), delay=0.1))
    tokens = [mint(keys.rsa_b, claims(jti=str(i))) for i in range(50)]
    principals = await asyncio.gather(*(v.verify(t) for t in tokens))
    assert {p.key_id for p in principals} == {"rsa-2"}
    assert idp.hits["/jwks"] == 2


# -- the IdP misbehaves: the last good key set is served -------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=500, body=b"oops"),
        Reply(status=404),
        Reply(body=b"<html>not json</html>"),
        Reply(body=b'{"keys": [1, 2'),  # truncated
        Reply.json({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),  # no usable key
        Reply.json({"keys": []}),
        Reply.json(["not", "a", "jwks"]),
        Reply(body=b'{"keys": [], "keys": []}'),  # duplicate member
        Reply.json(jwks(), delay=3.0),  # far slower than the 0.2 s fetch timeout
        Reply(body=b"x" * 300_000),  # over max_bytes
    ],
    ids=["500", "404", "html", "truncated", "no-usable", "empty", "array", "dup", "slow", "huge"],
)
async def test_idp_failure_keeps_the_last_good_key_set(
    started: Any, idp: LocalIdp, keys: Keys, clock: ManualClock, reply: Reply
) -> None:
    v = await started()
    source = v.key_sources()[ISSUER]
    assert isinstance(source, RemoteKeySource)
    good = source.current()
    idp.set("/jwks", reply)

    began = time.monotonic()
    assert await source.refresh() is False
    assert time.monotonic() - began < 1.5  # the timeout, not the server (3 s), decided
    assert source.current() is good
    assert (await v.verify(mint(keys.rsa, claims(jti="fresh")))).key_id == "rsa-1"
    # The unknown-kid path hits the same broken IdP and still keeps the good set.
    clock.advance(30)
    assert await reason_of(v, mint(keys.rsa_b, claims())) == "unknown_key"
    assert (await v.verify(mint(keys.rsa, claims(jti="again")))).key_id == "rsa-1"


async def test_failed_initial_fetch_does_not_raise_and_recovers(
    started: Any, idp: LocalIdp, keys: Keys, clock: ManualClock
) -> None:
    idp.set("/jwks", Reply(status=503))
    v = await started()  # logs, does not raise
    token = mint(keys.rsa, claims())
    assert await reason_of(v, token) == "keys_unavailable"
    idp.set("/jwks", Reply.json(jwks(keys.rsa)))
    assert await reason_of(v, token) == "keys_unavailable"  # inside the cooldown: no refetch
    clock.advance(30)
    assert (await v.verify(token)).key_id == "rsa-1"


async def test_background_retry_after_a_failed_start(
    started: Any, idp: LocalIdp, keys: Keys
) -> None:
    idp.set("/jwks", Reply(status=500))
    v = await started(QUIET.model_copy(update={"retry_seconds": 0.05}))
    source = v.key_sources()[ISSUER]
    idp.set("/jwks", Reply.json(jwks(keys.rsa)))
    await eventually(lambda: source.current() is not None)


async def test_background_refresh_follows_cache_control(
    started: Any, idp: LocalIdp, keys: Keys
) -> None:
    # max-age=0 is clamped up to min_ttl (0.1 s), so the task refreshes about every 90 ms.
    fast = JwksSettings(ttl_seconds=300, min_ttl_seconds=0.1, retry_seconds=300)
    idp.set("/jwks", Reply.json(jwks(keys.rsa), headers={"Cache-Control": "max-age=0"}))
    v = await started(fast)
    source = v.key_sources()[ISSUER]
    idp.set("/jwks", Reply.json(jwks(keys.rsa_b), headers={"Cache-Control": "max-age=0"}))

    def rotated() -> bool:
        ring = source.current()
        return ring is not None and ring.has_kid("rsa-2") and not ring.has_kid("rsa-1")

    await eventually(rotated)
    assert idp.hits["/jwks"] >= 2


async def test_close_stops_the_background_task_only_for_the_last_user(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> None:
    idp.set("/jwks", Reply.json(jwks(keys.rsa)))
    settings = JwksSettings(ttl_seconds=0.1, min_ttl_seconds=0.05, retry_seconds=0.05)
    source = RemoteKeySource(
        issuer=ISSUER,
        settings=settings,
        fetcher=HttpFetcher(),
        clock=clock,
        jwks_url=idp.url("/jwks"),
    )
    await source.start()
    await source.start()  # a second verifier shares it (config reload)
    await source.close()
    hits = idp.hits["/jwks"]
    await eventually(lambda: idp.hits["/jwks"] > hits)  # still refreshing
    await source.close()
    await asyncio.sleep(0.1)  # let any request already on the wire land
    stopped_at = idp.hits["/jwks"]
    await asyncio.sleep(0.3)  # three refresh periods: nothing more may arrive
    assert idp.hits["/jwks"] == stopped_at
    assert source.current() is not None  # the last keys stay readable


async def test_concurrent_starts_share_the_first_fetch(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> None:
    idp.set("/jwks", Reply.json(jwks(keys.rsa), delay=0.1))
    source = RemoteKeySource(
        issuer=ISSUER,
        settings=QUIET,
        fetcher=HttpFetcher(),
        clock=clock,
        jwks_url=idp.url("/jwks"),
    )
    await asyncio.gather(source.start(), source.start())
    assert source.current() is not None
    assert idp.hits["/jwks"] == 1
    await source.close()
    await source.close()


# -- OIDC discovery --------------------------------------------------------------------------


def discovery_doc(idp: LocalIdp, **overrides: Any) -> dict[str, Any]:
    return {"issuer": idp.base, "jwks_uri": idp.url("/keys"), **overrides}


async def discovery_verifier(idp: LocalIdp, clock: ManualClock) -> FetchingVerifier:
    settings = issuer(issuer=idp.base, discovery=True, jwks=QUIET)
    v = FetchingVerifier([settings], clock=clock)
    await v.start()
    return v


async def test_discovery_finds_the_jwks(idp: LocalIdp, clock: ManualClock, keys: Keys) -> None:
    idp.set("/.well-known/openid-configuration", Reply.json(discovery_doc(idp)))
    idp.set("/keys", Reply.json(jwks(keys.ed)))
    v = await discovery_verifier(idp, clock)
    principal = await v.verify(mint(keys.ed, claims(iss=idp.base)))
    assert principal.issuer == idp.base
    assert idp.hits["/.well-known/openid-configuration"] == 1
    assert idp.hits["/keys"] == 1
    await v.close()


@pytest.mark.parametrize(
    "doc_overrides",
    [
        {"issuer": "http://evil.example"},
        {"issuer": None},
        {"jwks_uri": None},
        {"jwks_uri": "file:///etc/passwd"},
        {"jwks_uri": 5},
    ],
)
async def test_discovery_document_must_match_the_issuer(
    idp: LocalIdp, clock: ManualClock, keys: Keys, doc_overrides: dict[str, Any]
) -> None:
    doc = {k: v for k, v in discovery_doc(idp, **doc_overrides).items() if v is not None}
    idp.set("/.well-known/openid-configuration", Reply.json(doc))
    idp.set("/keys", Reply.json(jwks(keys.ed)))
    v = await discovery_verifier(idp, clock)
    assert await reason_of(v, mint(keys.ed, claims(iss=idp.base))) == "keys_unavailable"
    assert idp.hits["/keys"] == 0  # the keys of a mismatched document are never fetched
    await v.close()


async def test_discovery_with_a_trailing_slash_issuer(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> None:
    iss = idp.base + "/"
    idp.set("/.well-known/openid-configuration", Reply.json(discovery_doc(idp, issuer=iss)))
    idp.set("/keys", Reply.json(jwks(keys.ed)))
    v = FetchingVerifier([issuer(issuer=iss, discovery=True, jwks=QUIET)], clock=clock)
    await v.start()
    assert (await v.verify(mint(keys.ed, claims(iss=iss)))).issuer == iss
    await v.close()


# -- the HTTP adapter ------------------------------------------------------------------------


async def test_fetcher_follows_http_redirects_only(idp: LocalIdp) -> None:
    fetcher = HttpFetcher()
    idp.set("/moved", Reply(status=302, headers={"Location": "/jwks"}))
    idp.set("/jwks", Reply(body=b"{}"))
    result = await fetcher.fetch(idp.url("/moved"), timeout_seconds=1, max_bytes=100)
    assert (result.status, result.body) == (200, b"{}")
    for target in ("file:///etc/passwd", "ftp://127.0.0.1/jwks", "gopher://x/"):
        idp.set("/evil", Reply(status=302, headers={"Location": target}))
        with pytest.raises(FetchError, match="refused redirect"):
            await fetcher.fetch(idp.url("/evil"), timeout_seconds=1, max_bytes=100)


async def test_fetcher_limits(idp: LocalIdp) -> None:
    fetcher = HttpFetcher()
    idp.set("/big", Reply(body=b"x" * 101))
    with pytest.raises(FetchError, match="over 100 bytes"):
        await fetcher.fetch(idp.url("/big"), timeout_seconds=1, max_bytes=100)
    idp.set("/slow", Reply(body=b"{}", delay=3.0))
    began = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out|within"):
        await fetcher.fetch(idp.url("/slow"), timeout_seconds=0.2, max_bytes=100)
    assert time.monotonic() - began < 1.5  # the 0.2 s timeout, not the 3 s server
    with pytest.raises(FetchError, match="only http"):
        await fetcher.fetch("file:///etc/passwd", timeout_seconds=1, max_bytes=100)
    idp.set("/err", Reply(status=500, headers={"Cache-Control": "no-store"}))
    result = await fetcher.fetch(idp.url("/err"), timeout_seconds=1, max_bytes=100)
    assert (result.status, result.headers["cache-control"]) == (500, "no-store")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 300),
        ("max-age=600", 600),
        ("public, max-age=120, must-revalidate", 120),
        ('max-age="90"', 90),
        ("max-age=1", 60),  # clamped to min_ttl
        ("max-age=999999999", 86400),  # clamped to max_ttl
        ("no-store", 60),
        ("no-cache, max-age=600", 60),
        ("max-age=abc", 300),
        ("MAX-AGE=200", 200),
    ],
)
def test_ttl_from_cache_control(header: str | None, expected: float) -> None:
    headers = {} if header is None else {"cache-control": header}
    assert ttl_from_headers(headers, JwksSettings()) == expected


# -- one slow issuer cannot starve the others ------------------------------------------------


async def test_a_trickling_issuer_does_not_hold_up_another_issuers_refresh(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> None:
    # More trickling issuers than the old fetcher's shared thread pool had threads.
    idp.set("/slow", Reply.json(jwks(keys.rsa)))
    idp.set("/fast", Reply.json(jwks(keys.rsa)))
    deadline = QUIET.model_copy(update={"fetch_timeout_seconds": 3.0})
    slow = [
        issuer(issuer=f"https://slow-{n}.example", jwks_url=idp.url("/slow"), jwks=deadline)
        for n in range(8)
    ]
    fast = issuer(issuer="https://fast.example", jwks_url=idp.url("/fast"), jwks=deadline)
    v = FetchingVerifier([*slow, fast], clock=clock)
    await v.start()  # every issuer has keys
    sources = v.key_sources()
    idp.set("/slow", Reply(body=b'{"keys": []}' + b" " * 200, trickle=0.05))  # ~10 s a body
    began = time.monotonic()
    trickling = [asyncio.create_task(sources[s.issuer].refresh()) for s in slow]
    await asyncio.sleep(0.1)
    idp.set("/fast", Reply.json(jwks(keys.rsa_b)))
    assert await sources[fast.issuer].refresh() is True  # not queued behind the slow ones
    ring = sources[fast.issuer].current()
    assert ring is not None
    assert ring.has_kid("rsa-2")
    assert not any(task.done() for task in trickling)
    assert await asyncio.gather(*trickling) == [False] * len(slow)  # each cut at its deadline
    assert time.monotonic() - began < 8.0  # cut at the 3 s deadline, not the ~10 s body
    assert all(sources[s.issuer].current() is not None for s in slow)  # last good set kept
    await v.close()


# -- one deadline for a Check's wait for keys ------------------------------------------------


async def test_a_check_waits_at_most_check_wait_for_discovery_plus_jwks(
    idp: LocalIdp, clock: ManualClock, keys: Keys
) -> None:
    settings = QUIET.model_copy(update={"fetch_timeout_seconds": 2.0, "check_wait_seconds": 0.2})
    idp.set("/.well-known/openid-configuration", Reply(status=503))
    v = FetchingVerifier([issuer(issuer=idp.base, discovery=True, jwks=settings)], clock=clock)
    await v.start()  # the IdP is down: no keys, no raise
    # Now it is up but slow: 1 s for discovery, then 1 s for the JWKS.
    idp.set("/.well-known/openid-configuration", Reply.json(discovery_doc(idp), delay=1.0))
    idp.set("/keys", Reply.json(jwks(keys.ed), delay=1.0))
    token = mint(keys.ed, claims(iss=idp.base))
    began = time.monotonic()
    assert await reason_of(v, token) == "keys_unavailable"
    waited = time.monotonic() - began
    assert 0.15 < waited < 0.9  # the Check's deadline, not discovery + JWKS (2 s)
    source = v.key_sources()[idp.base]
    await eventually(lambda: source.current() is not None)  # the fetch went on meanwhile
    assert (await v.verify(token)).issuer == idp.base
    assert idp.hits["/keys"] == 1
    await v.close()


async def test_an_unknown_kid_waits_at_most_check_wait(
    started: Any, idp: LocalIdp, keys: Keys
) -> None:
    v = await started(
        QUIET.model_copy(update={"check_wait_seconds": 0.1, "fetch_timeout_seconds": 3.0})
    )
    idp.set("/jwks", Reply.json(jwks(keys.rsa, keys.rsa_b), delay=1.0))
    began = time.monotonic()
    assert await reason_of(v, mint(keys.rsa_b, claims())) == "unknown_key"
    assert time.monotonic() - began < 0.7  # the 0.1 s wait, not the 1 s fetch
    source = v.key_sources()[ISSUER]

    def rotated() -> bool:
        ring = source.current()
        return ring is not None and ring.has_kid("rsa-2")

    await eventually(rotated)  # the refetch finished after the Check stopped waiting
    assert (await v.verify(mint(keys.rsa_b, claims(jti="2")))).key_id == "rsa-2"


# -- what the log says -----------------------------------------------------------------------


def _fields(caplog: pytest.LogCaptureFixture, message_part: str) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if message_part in r.getMessage()]


async def test_discovery_issuer_mismatch_logs_both_values(
    idp: LocalIdp, clock: ManualClock, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    doc = discovery_doc(idp, issuer=idp.base + "/")  # the classic trailing-slash mismatch
    idp.set("/.well-known/openid-configuration", Reply.json(doc))
    with caplog.at_level("WARNING"):
        v = await discovery_verifier(idp, clock)
    (fields,) = _fields(caplog, "JWKS fetch failed")
    assert repr(idp.base + "/") in fields["error"]
    assert repr(idp.base) in fields["error"]
    source = v.key_sources()[idp.base]
    assert source.last_error() == fields["error"]
    await v.close()


async def test_no_keeping_the_last_good_set_when_there_is_none(
    started: Any, idp: LocalIdp, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    idp.set("/jwks", Reply(status=503))
    with caplog.at_level("WARNING"):
        v = await started()
    assert not _fields(caplog, "keeping the last good key set")
    (fields,) = _fields(caplog, "no key set was ever loaded")
    assert fields["error"] == "JWKS answered HTTP 503"
    assert "keys" not in fields
    source = v.key_sources()[ISSUER]
    idp.set("/jwks", Reply.json(jwks(keys.rsa)))
    assert await source.refresh() is True
    assert source.last_error() is None
    idp.set("/jwks", Reply(status=500))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert await source.refresh() is False
    (fields,) = _fields(caplog, "keeping the last good key set")
    assert fields["keys"] == 1


async def test_discovered_plain_http_jwks_uri_off_loopback_is_refused(
    idp: LocalIdp, clock: ManualClock
) -> None:
    doc = discovery_doc(idp, jwks_uri="http://192.0.2.10/keys")
    idp.set("/.well-known/openid-configuration", Reply.json(doc))
    v = await discovery_verifier(idp, clock)
    error = v.key_sources()[idp.base].last_error()
    assert error is not None
    assert "allow_insecure_http" in error
    await v.close()


# -- ca_file and proxies reach each issuer's fetcher ------------------------------------------


async def test_issuer_ca_file_and_proxies_are_used_for_its_fetches(
    tmp_path: Path, clock: ManualClock, keys: Keys
) -> None:
    ca = PrivateCa(tmp_path / "ca")
    other = PrivateCa(tmp_path / "other")
    name = "idp.example.test"  # reached only through the proxy, which maps it to loopback
    tls_idp = LocalIdp(tls=ca.server_context("localhost", name), host="localhost")
    tls_idp.set("/jwks", Reply.json(jwks(keys.rsa)))
    proxy = LocalProxy({name: "127.0.0.1"})
    try:
        good = issuer(jwks_url=tls_idp.url("/jwks"), ca_file=ca.ca_file, jwks=QUIET)
        v = FetchingVerifier([good], clock=clock)
        await v.start()
        assert (await v.verify(mint(keys.rsa, claims()))).key_id == "rsa-1"
        await v.close()

        wrong = issuer(jwks_url=tls_idp.url("/jwks"), ca_file=other.ca_file, jwks=QUIET)
        v = FetchingVerifier([wrong], clock=clock)
        await v.start()
        error = v.key_sources()[ISSUER].last_error()
        assert error is not None
        assert "certificate" in error
        assert await reason_of(v, mint(keys.rsa, claims())) == "keys_unavailable"
        await v.close()
        assert tls_idp.hits["/jwks"] == 1  # the wrong CA never got as far as a request

        proxied = issuer(
            jwks_url=f"https://{name}:{tls_idp.port}/jwks", ca_file=ca.ca_file, jwks=QUIET
        )
        proxies = ProxyConfig.from_env({"HTTPS_PROXY": proxy.url})
        v = FetchingVerifier([proxied], clock=clock, proxies=proxies)
        await v.start()
        assert (await v.verify(mint(keys.rsa, claims()))).key_id == "rsa-1"
        assert proxy.log.requests == {("CONNECT", f"{name}:{tls_idp.port}"): 1}
        await v.close()
    finally:
        proxy.stop()
        tls_idp.stop()
