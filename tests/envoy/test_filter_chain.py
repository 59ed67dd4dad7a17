"""The rendered config in a real Envoy, between fake sidecars and an echo upstream.

The fakes (tests/envoy/fakes.py) speak the real protocols over mTLS and record what Envoy
sent, so these tests pin down the config itself: filter order, what each sidecar sees,
header sanitising, local replies, TLS, /healthz. The real sidecars are the e2e suite's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from devstack.envoy_config import SECURITY_HEADERS
from devstack.pki import Pki, ensure_pki
from tests.envoy.envoy_process import (
    RunningEnvoy,
    free_port_params,
    healthy_envoy,
    running_envoy,
)
from tests.envoy.fakes import EchoUpstream, FakeAuthz, FakeRateLimit
from tests.support.https import Reply
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    envoy: RunningEnvoy
    authz: FakeAuthz
    ratelimit: FakeRateLimit
    upstream: EchoUpstream

    def reset(self) -> None:
        self.authz.checks.clear()
        self.ratelimit.calls.clear()
        self.ratelimit.over_limit_values.clear()
        self.upstream.requests.clear()


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    params = free_port_params(pki)
    authz = FakeAuthz(pki, params.authz_port)
    ratelimit = FakeRateLimit(pki, params.ratelimit_port)
    upstream = EchoUpstream(params.upstream_port)
    for server in (authz, ratelimit, upstream):
        server.start()
    try:
        with healthy_envoy(params, pki, tmp_path_factory.mktemp("envoy")) as envoy:
            yield Stack(envoy, authz, ratelimit, upstream)
    finally:
        for server in (authz, ratelimit, upstream):
            server.stop()


@pytest.fixture
def edge(stack: Stack) -> Stack:
    stack.reset()
    return stack


# A local stage 0 that a few sequential requests drain, however slow the machine.
TIGHT_BURST = 5


@contextlib.contextmanager
def _beside(stack: Stack, workdir: Path, **changes: object) -> Iterator[Stack]:
    """A second Envoy with `changes` to the first's params, in front of the same fakes."""
    params = dataclasses.replace(
        stack.envoy.params,
        listener_port=free_port(),
        admin_port=free_port(),
        **changes,  # type: ignore[arg-type]
    )
    with healthy_envoy(params, stack.envoy.pki, workdir) as envoy:
        yield Stack(envoy, stack.authz, stack.ratelimit, stack.upstream)


@pytest.fixture(scope="module")
def tight_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second Envoy, with a local stage 0 of 1/s, burst 5, in front of the same fakes."""
    workdir = tmp_path_factory.mktemp("envoy-tight")
    with _beside(stack, workdir, stage0_requests_per_second=1, stage0_burst=TIGHT_BURST) as tight:
        yield tight


@pytest.fixture
def tight_edge(tight_stack: Stack) -> Stack:
    tight_stack.reset()
    return tight_stack


@pytest.fixture(scope="module")
def global_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second Envoy, with `stage0: global`, in front of the same fakes."""
    with _beside(stack, tmp_path_factory.mktemp("envoy-global"), stage0="global") as other:
        yield other


@pytest.fixture
def global_edge(global_stack: Stack) -> Stack:
    global_stack.reset()
    return global_stack


def _assert_hardened(resp: Reply) -> None:
    for name, value in SECURITY_HEADERS:
        assert resp.all(name) == [value], name
    assert resp.header("server") is None
    assert resp.header("x-powered-by") is None
    assert not [k for k, _ in resp.headers if k.lower().startswith("x-envoy-")]


def _upstream_headers(edge: Stack) -> dict[str, list[str]]:
    [seen] = edge.upstream.requests
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


def _check_headers(edge: Stack) -> dict[str, str]:
    [check] = edge.authz.checks
    return dict(check.attributes.request.http.headers)


# --- the filter chain -------------------------------------------------------------------------


def test_allowed_request_reaches_upstream_with_only_authz_identity(edge: Stack) -> None:
    resp = edge.envoy.request(
        "/api/v1/users/alice?x=1",
        headers=[
            ("x-test-subject", "alice"),
            ("x-auth-subject", "mallory"),
            ("x-auth-roles", "admin"),
            ("x-auth-scopes", "users:write"),
            ("x-auth-issuer", "https://evil.example"),
            ("x-auth-client-id", "evil"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-original-path", "/admin"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "client-chosen"),
        ],
    )
    assert resp.status == 200
    _assert_hardened(resp)
    assert resp.header("cache-control") == "no-store"  # upstream said public, max-age=600
    headers = _upstream_headers(edge)
    assert headers["x-auth-subject"] == ["alice"]
    for name in ("x-auth-roles", "x-auth-scopes", "x-auth-issuer", "x-auth-client-id"):
        assert name not in headers, name
    assert not [name for name in headers if name.startswith("x-envoy-")]
    assert "forwarded" not in headers
    assert "x-real-ip" not in headers
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-request-id"] != ["client-chosen"]
    assert resp.header("x-request-id") == headers["x-request-id"][0]


def test_ext_authz_never_sees_client_identity_headers(edge: Stack) -> None:
    edge.envoy.request(
        "/api/v1/users/alice",
        headers=[("x-test-subject", "alice"), ("x-auth-subject", "mallory")],
    )
    names = list(_check_headers(edge))
    assert "x-auth-subject" not in names
    assert "x-test-subject" in names


def test_ext_authz_gets_every_authorization_value_joined(edge: Stack) -> None:
    edge.envoy.request(
        "/api/v1/users/alice",
        headers=[
            ("x-test-subject", "alice"),
            ("authorization", "Bearer first"),
            ("authorization", "Bearer second"),
        ],
    )
    [check] = edge.authz.checks
    http = check.attributes.request.http
    assert http.path == "/api/v1/users/alice"
    assert not http.header_map.headers  # no encode_raw_headers: the `headers` map
    # Envoy joins a repeated Authorization header with ',' (the sidecar reads that as two).
    assert _check_headers(edge)["authorization"] == "Bearer first,Bearer second"


def test_ext_authz_gets_the_client_certificate_when_one_is_presented(edge: Stack, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", edge.envoy.params.listener_port, context=context, timeout=10
    )
    try:
        conn.request("GET", "/api/v1/users/alice", headers={"x-test-subject": "alice"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    [check] = edge.authz.checks
    source = check.attributes.source
    # Envoy URL-encodes the PEM (AttributeContext.Peer.certificate).
    assert unquote(source.certificate).startswith("-----BEGIN CERTIFICATE-----\n")
    assert source.principal == "spiffe://edgeguard.dev/envoy"


# --- rate limits: the default profile (stage 0 in Envoy, one call after ext_authz) ----------


def test_one_call_after_authz_with_subject_authenticated_address_and_route(edge: Stack) -> None:
    edge.envoy.request(
        "/api/v1/users/alice",
        headers=[("x-test-subject", "alice"), ("x-forwarded-for", "6.6.6.6")],
    )
    calls = [(c.domain, c.descriptors) for c in edge.ratelimit.calls]
    assert calls == [
        (
            "edge",
            [
                [("subject", "alice")],
                # The spoofed address is not the key.
                [("authenticated", "true"), ("remote_address", "127.0.0.1")],
                [("rule", "test")],
            ],
        )
    ]


def test_public_request_carries_only_its_route(edge: Stack) -> None:
    resp = edge.envoy.request("/api/v1/public/ping", headers=[("x-test-public", "1")])
    assert resp.status == 200
    assert [c.descriptors for c in edge.ratelimit.calls] == [[[("rule", "public")]]]


def test_a_client_sent_subject_header_does_not_make_a_request_authenticated(edge: Stack) -> None:
    resp = edge.envoy.request(
        "/api/v1/public/ping", headers=[("x-test-public", "1"), ("x-auth-subject", "mallory")]
    )
    assert resp.status == 200
    assert [c.descriptors for c in edge.ratelimit.calls] == [[[("rule", "public")]]]


def test_client_over_the_local_limit_is_429_in_envoy_before_any_sidecar_call(
    tight_edge: Stack,
) -> None:
    edge = tight_edge
    replies = [
        edge.envoy.request("/api/v1/users/alice", headers=[("x-test-subject", "alice")])
        for _ in range(TIGHT_BURST + 5)
    ]
    statuses = [r.status for r in replies]
    admitted = statuses.count(200)
    assert statuses[:TIGHT_BURST] == [200] * TIGHT_BURST
    assert 429 in statuses, statuses
    # Only admitted requests reached the sidecars: a 429 cost neither of them a call.
    assert len(edge.authz.checks) == admitted
    assert len(edge.ratelimit.calls) == admitted
    assert len(edge.upstream.requests) == admitted
    for resp in replies:
        if resp.status == 429:
            _assert_rate_limited(resp)
            assert resp.all("x-ratelimit-limit") == [str(TIGHT_BURST)]  # the bucket's size
            assert resp.all("x-ratelimit-reset") == ["1"]
    # Per address: another client is served at once.
    other = edge.envoy.request(
        "/api/v1/users/alice", headers=[("x-test-subject", "alice")], source="127.0.0.3"
    )
    assert other.status == 200


def test_subject_over_limit_is_429_after_authz(edge: Stack) -> None:
    edge.ratelimit.over_limit_values.add("bob")
    resp = edge.envoy.request("/api/v1/users/bob", headers=[("x-test-subject", "bob")])
    assert resp.status == 429
    assert len(edge.authz.checks) == 1
    assert len(edge.ratelimit.calls) == 1
    assert edge.upstream.requests == []
    _assert_rate_limited(resp)


def test_route_over_limit_is_429_after_authz(edge: Stack) -> None:
    edge.ratelimit.over_limit_values.add("public")
    resp = edge.envoy.request("/api/v1/public/ping", headers=[("x-test-public", "1")])
    assert resp.status == 429
    assert len(edge.authz.checks) == 1
    assert edge.upstream.requests == []
    _assert_rate_limited(resp)


def test_authenticated_address_limit_spares_public_requests(edge: Stack) -> None:
    edge.ratelimit.over_limit_values.add("127.0.0.1")
    resp = edge.envoy.request("/api/v1/users/alice", headers=[("x-test-subject", "alice")])
    assert resp.status == 429
    _assert_rate_limited(resp)
    assert edge.envoy.request("/api/v1/public/ping", headers=[("x-test-public", "1")]).status == 200


# --- rate limits: the profile stage0 global (three calls) ---------------------------------------


def test_global_stage0_calls_before_authz_then_once_after(global_edge: Stack) -> None:
    global_edge.envoy.request(
        "/api/v1/users/alice",
        headers=[("x-test-subject", "alice"), ("x-forwarded-for", "6.6.6.6")],
    )
    calls = [(c.domain, c.descriptors) for c in global_edge.ratelimit.calls]
    assert calls == [
        ("edge", [[("remote_address", "127.0.0.1")]]),
        ("edge", [[("subject", "alice")], [("rule", "test")]]),
    ]


def test_global_stage0_over_limit_is_429_before_any_authz_work(global_edge: Stack) -> None:
    global_edge.ratelimit.over_limit_values.add("127.0.0.1")
    resp = global_edge.envoy.request("/api/v1/users/alice", headers=[("x-test-subject", "alice")])
    assert resp.status == 429
    assert global_edge.authz.checks == []
    assert global_edge.upstream.requests == []
    _assert_rate_limited(resp)


def test_global_public_request_makes_both_calls(global_edge: Stack) -> None:
    resp = global_edge.envoy.request("/api/v1/public/ping", headers=[("x-test-public", "1")])
    assert resp.status == 200
    assert [c.descriptors for c in global_edge.ratelimit.calls] == [
        [[("remote_address", "127.0.0.1")]],
        [[("rule", "public")]],
    ]


def _assert_rate_limited(resp: Reply) -> None:
    _assert_hardened(resp)
    assert resp.header("retry-after") == "1"
    assert resp.header("x-ratelimit-limit") is not None
    assert "0" in resp.all("x-ratelimit-remaining")
    assert resp.header("content-type") == "application/json"
    assert json.loads(resp.body) == {
        "error": "rate_limited",
        "request_id": resp.header("x-request-id"),
    }


def test_authz_denial_keeps_the_sidecars_answer_and_gains_security_headers(
    edge: Stack,
) -> None:
    resp = edge.envoy.request("/api/v1/users/alice")
    assert resp.status == 401
    _assert_hardened(resp)
    assert resp.header("www-authenticate") == 'Bearer realm="test"'
    assert json.loads(resp.body)["error"] == "unauthorized"
    assert edge.upstream.requests == []


def test_healthz_is_answered_by_envoy_without_rate_limit_or_authz(edge: Stack) -> None:
    resp = edge.envoy.request("/healthz")
    assert resp.status == 200
    _assert_hardened(resp)
    assert edge.ratelimit.calls == []
    assert edge.authz.checks == []
    assert edge.upstream.requests == []


def test_healthz_follows_the_rate_limiter_health(edge: Stack) -> None:
    edge.ratelimit.set_serving(False)
    try:
        assert wait_until(lambda: edge.envoy.request("/healthz").status == 503, timeout=10)
    finally:
        edge.ratelimit.set_serving(True)
    assert wait_until(lambda: edge.envoy.request("/healthz").status == 200, timeout=10)


# --- the connection manager -------------------------------------------------------------------


def test_paths_are_normalised_before_anyone_sees_them(edge: Stack) -> None:
    resp = edge.envoy.request(
        "/api/v1/./users//alice/../alice", headers=[("x-test-subject", "alice")]
    )
    assert resp.status == 200
    [check] = edge.authz.checks
    assert check.attributes.request.http.path == "/api/v1/users/alice"
    assert edge.upstream.requests[0]["path"] == "/api/v1/users/alice"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/users/alice%2F..%2Fadmin", [("x-test-subject", "alice")]),
        ("/api/v1/users/alice", [("x-test-subject", "alice"), ("x_auth_subject", "mallory")]),
    ],
    ids=["escaped-slash", "underscore-header"],
)
def test_ambiguous_requests_are_rejected_by_envoy(
    edge: Stack, path: str, headers: list[tuple[str, str]]
) -> None:
    resp = edge.envoy.request(path, headers=headers)
    assert resp.status == 400
    _assert_hardened(resp)
    assert edge.authz.checks == []
    assert edge.upstream.requests == []


def test_too_many_headers_are_refused(edge: Stack) -> None:
    count = edge.envoy.params.max_headers_count
    resp = edge.envoy.request("/", headers=[(f"x-h{i}", "v") for i in range(count + 1)])
    assert resp.status == 431
    assert edge.upstream.requests == []


def test_access_log_is_json_with_subject_and_no_credentials(edge: Stack) -> None:
    resp = edge.envoy.request(
        "/api/v1/users/alice?access_token=query-secret",
        headers=[("x-test-subject", "alice"), ("authorization", "Bearer secret-token-value")],
    )
    request_id = resp.header("x-request-id")

    def logged() -> dict[str, Any] | None:
        for line in edge.envoy.log_text().splitlines():
            if line.startswith("{") and f'"request_id":"{request_id}"' in line:
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    assert wait_until(lambda: logged() is not None, timeout=5)
    entry = logged()
    assert entry is not None
    assert entry["subject"] == "alice"
    assert entry["path"] == "/api/v1/users/alice"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["client_address"] == "127.0.0.1"
    assert entry["upstream_host"] == f"127.0.0.1:{edge.envoy.params.upstream_port}"
    text = edge.envoy.log_text()
    assert "secret-token-value" not in text
    assert "query-secret" not in text


# --- TLS --------------------------------------------------------------------------------------


def _handshake(edge: Stack, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    address = ("127.0.0.1", edge.envoy.params.listener_port)
    with (
        socket.create_connection(address, timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.selected_alpn_protocol()


def _client(pki: Pki, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _ssl_errors(edge: Stack) -> int:
    port = edge.envoy.params.listener_port
    return edge.envoy.stat(f"listener.127.0.0.1_{port}.ssl.connection_error")


def test_tls13_preferred_with_h2(edge: Stack, pki: Pki) -> None:
    context = _client(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    assert _handshake(edge, context) == ("TLSv1.3", "h2")


def test_tls12_only_with_aead_ciphers(edge: Stack, pki: Pki) -> None:
    assert _handshake(edge, _client(pki, maximum=ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
    cbc = _client(pki, maximum=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA")
    before = _ssl_errors(edge)
    with pytest.raises(ssl.SSLError):
        _handshake(edge, cbc)
    assert _ssl_errors(edge) == before + 1  # refused by Envoy, not by the client


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_refused(edge: Stack, pki: Pki) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(pki.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    before = _ssl_errors(edge)
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
        _handshake(edge, old)
    assert _ssl_errors(edge) == before + 1


# --- mTLS to the sidecars ---------------------------------------------------------------------


def test_sidecars_with_a_certificate_from_another_ca_are_never_healthy(
    pki: Pki, tmp_path: Path
) -> None:
    stranger = ensure_pki(tmp_path / "other-pki")
    params = free_port_params(pki)
    authz = FakeAuthz(stranger, params.authz_port)
    ratelimit = FakeRateLimit(pki, params.ratelimit_port)
    for server in (authz, ratelimit):
        server.start()
    try:
        with running_envoy(params, pki, tmp_path) as envoy:
            # The genuine rate limiter turns healthy; the impostor never does.
            assert wait_until(lambda: _cluster_healthy(envoy, "ratelimit"), timeout=10)
            assert wait_until(lambda: envoy.stat("cluster.authz.ssl.fail_verify_error") > 0)
            assert not _cluster_healthy(envoy, "authz")
            assert envoy.request("/healthz").status == 503
            assert envoy.request("/", headers=[("x-test-subject", "alice")]).status == 503
            assert authz.checks == []
    finally:
        for server in (authz, ratelimit):
            server.stop()


def _cluster_healthy(envoy: RunningEnvoy, name: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.params.admin_port, timeout=5)
    try:
        conn.request("GET", "/clusters?format=json")
        clusters = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    for cluster in clusters["cluster_statuses"]:
        if cluster["name"] == name:
            hosts = [h["health_status"] for h in cluster.get("host_statuses", [])]
            return bool(hosts) and all(_host_healthy(h) for h in hosts)
    return False


def _host_healthy(status: dict[str, Any]) -> bool:
    # Admin /clusters lists the host's health flags (failed_active_health_check, ...) only
    # when set; a healthy host has nothing but its EDS status.
    flags = {key: value for key, value in status.items() if key != "eds_health_status"}
    return status.get("eds_health_status") == "HEALTHY" and not any(flags.values())
