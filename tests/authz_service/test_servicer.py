"""The real servicer in an in-process server on a free port (grpc.aio, and grpcio's
thread-pool server: the `stack` fixture), called with xds-protos stubs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from authz_service.identity_encoding import decode_item, decode_list
from authz_service.pipeline import Decision
from authz_service.principal import Principal
from authz_service.servicer import SERVICE_NAME
from devstack.idp_keys import IdpKeys
from devstack.pki import Pki
from sidecar_runtime.settings import Stack
from tests.authz_service.conftest import (
    ISSUER,
    Mint,
    RunningAuthz,
    start_authz,
    stop_authz,
    write_config,
)
from tests.authz_service.tokens.conftest import LocalIdp, Reply
from tests.sidecar_runtime.stacks import ALSO_ON_UVLOOP
from tests.support.grpc_clients import channel
from tests.support.grpcurl import grpcurl

pytestmark = pytest.mark.grpc


def check_request(
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw_headers: list[tuple[str, str]] | None = None,
    request_id: str = "req-1",
) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="4242",
        method=method,
        path=path,
        host="api.test",  # Envoy stream id, not x-request-id
    )
    all_headers = {"x-request-id": request_id, **(headers or {})}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    if raw_headers is not None:
        for key, value in [*all_headers.items(), *raw_headers]:
            http.header_map.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    else:
        http.headers.update(all_headers)
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.CopyFrom(http)
    req.attributes.source.address.socket_address.address = "192.0.2.10"
    return req


async def check(address: str, req: external_auth_pb2.CheckRequest, pki: Pki | None = None) -> Any:
    async with channel(address, pki) as ch:
        return await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)


def denied(resp: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    assert resp.WhichOneof("http_response") == "denied_response"
    d = resp.denied_response
    headers = {h.header.key: h.header.value for h in d.headers}
    return d.status.code, headers, json.loads(d.body)


def allowed(resp: Any) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    assert resp.status.code == code_pb2.OK
    ok = resp.ok_response
    headers = {h.header.key: h.header.value for h in ok.headers}
    meta = dict(resp.dynamic_metadata.items())
    return headers, list(ok.headers_to_remove), meta


@pytest.mark.parametrize("alg", ["RS256", "EdDSA", "Ed25519"])
async def test_owner_is_allowed_with_identity_headers_and_metadata(
    authz: RunningAuthz, mint: Mint, alg: str
) -> None:
    token = mint("alice", alg=alg, scope="users:read", extra={"tenant": "t1", "plan": "gold"})
    resp = await check(authz.address, check_request("/api/v1/users/alice", token=token))
    headers, removed, meta = allowed(resp)
    # RFC 9651 Strings (docs/identity-headers.md); metadata keeps the raw values.
    assert headers["x-auth-subject"] == '"alice"'
    assert headers["x-auth-issuer"] == f'"{ISSUER}"'
    assert headers["x-auth-scopes"] == '"users:read"'
    # Headers with no value are removed, so a client-sent copy cannot reach the upstream.
    assert "x-auth-roles" in removed
    assert "x-auth-client-id" in removed
    decision_id = meta.pop("decision_id")
    assert headers["x-decision-id"] == decision_id
    assert len(decision_id) == 24
    assert meta == {
        "rule": "get-user",
        "subject": "alice",
        "issuer": ISSUER,
        "tenant": "t1",
        "plan": "gold",
    }


async def test_no_token_is_401_with_plain_challenge(authz: RunningAuthz) -> None:
    resp = await check(authz.address, check_request("/api/v1/users/alice", request_id="r-42"))
    status, headers, body = denied(resp)
    assert status == 401
    assert resp.status.code == code_pb2.UNAUTHENTICATED
    assert headers["www-authenticate"] == 'Bearer realm="edgeguard"'
    assert headers["content-type"] == "application/json"
    assert body == {"error": "unauthorized", "request_id": "r-42"}


@pytest.mark.parametrize(
    "variant",
    ["expired", "wrong_audience", "wrong_issuer", "tampered", "garbage"],
)
async def test_invalid_tokens_all_get_one_generic_401(
    authz: RunningAuthz, mint: Mint, variant: str
) -> None:
    token = {
        "expired": lambda: mint(scope="users:read", ttl=-3600),
        "wrong_audience": lambda: mint(scope="users:read", audience="api://other"),
        "wrong_issuer": lambda: mint(scope="users:read", issuer="https://evil.test"),
        "tampered": lambda: _tamper(mint(scope="users:read")),
        "garbage": lambda: "not-a-jwt",
    }[variant]()
    resp = await check(authz.address, check_request("/api/v1/users/alice", token=token))
    status, headers, body = denied(resp)
    assert status == 401
    assert headers["www-authenticate"] == (
        'Bearer realm="edgeguard", error="invalid_token", '
        'error_description="The access token is invalid"'
    )
    assert body == {"error": "invalid_token", "request_id": "req-1"}


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    return f"{header}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{sig}"


async def test_missing_scope_is_403_insufficient_scope(authz: RunningAuthz, mint: Mint) -> None:
    token = mint("alice", scope="profile")
    status, headers, body = denied(
        await check(authz.address, check_request("/api/v1/users/alice", token=token))
    )
    assert status == 403
    assert headers["www-authenticate"] == (
        'Bearer realm="edgeguard", error="insufficient_scope", scope="users:read"'
    )
    assert body["error"] == "insufficient_scope"


async def test_idor_is_denied_and_admin_is_allowed(authz: RunningAuthz, mint: Mint) -> None:
    alice = mint("alice", scope="users:read")
    status, headers, _ = denied(
        await check(authz.address, check_request("/api/v1/users/bob", token=alice))
    )
    assert status == 403
    assert "www-authenticate" not in headers
    admin = mint("root", scope="users:read", roles=["admin"])
    headers, _, _ = allowed(
        await check(authz.address, check_request("/api/v1/users/bob", token=admin))
    )
    assert headers["x-auth-roles"] == '"admin"'


TRICKY_ROLES = ["admin", "user,admin", "a b", "ålice", "%C3%A5lice", 'q"uo\\te', "cr\r\nlf", ""]
TRICKY_SCOPES = ["users:read", "with space", "semi;colon", "%25", "\u00e9"]


@pytest.mark.parametrize("subject", ["ålice", "%C3%A5lice", "a,b", 'x"y', "a;b=c", "tab\tin"])
async def test_identity_headers_round_trip_every_claim_value_exactly(
    authz: RunningAuthz, mint: Mint, subject: str
) -> None:
    token = mint(
        subject,
        roles=TRICKY_ROLES,
        extra={"scp": TRICKY_SCOPES, "client_id": "cli\u00e9nt,1"},
    )
    resp = await check(authz.address, check_request("/api/v1/admin/stats", token=token))
    headers, removed, meta = allowed(resp)
    assert decode_item(headers["x-auth-subject"]) == subject
    assert decode_item(headers["x-auth-issuer"]) == ISSUER
    assert decode_item(headers["x-auth-client-id"]) == "cli\u00e9nt,1"
    # Sets, sent sorted: "" is a role of its own, "user,admin" one role, not two.
    assert decode_list(headers["x-auth-roles"]) == sorted(TRICKY_ROLES)
    assert decode_list(headers["x-auth-scopes"]) == sorted(TRICKY_SCOPES)
    assert removed == []
    for value in headers.values():
        assert value.isascii()
        assert value.isprintable()
    # The rate limiter's metadata keeps the exact raw values.
    assert (meta["subject"], meta["issuer"]) == (subject, ISSUER)


async def test_no_roles_and_no_client_id_remove_those_headers(
    authz: RunningAuthz, mint: Mint
) -> None:
    token = mint("alice", scope="users:read")
    resp = await check(authz.address, check_request("/api/v1/users/alice", token=token))
    headers, removed, _ = allowed(resp)
    # An absent List is the empty list (RFC 9651 section 3.1); a client's copy is removed.
    assert decode_list(headers.get("x-auth-roles")) == []
    assert {"x-auth-roles", "x-auth-client-id"} <= set(removed)


async def test_unmatched_route_is_403_even_without_token(authz: RunningAuthz) -> None:
    status, _, body = denied(await check(authz.address, check_request("/internal/debug")))
    assert (status, body["error"]) == (403, "forbidden")


async def test_public_route_needs_no_token_and_strips_identity_headers(
    authz: RunningAuthz,
) -> None:
    resp = await check(
        authz.address,
        check_request("/api/v1/public/ping", headers={"x-auth-subject": "spoofed"}),
    )
    headers, removed, meta = allowed(resp)
    assert set(headers) == {"x-decision-id"}
    assert {"x-auth-subject", "x-auth-roles", "x-auth-scopes", "x-auth-issuer"} <= set(removed)
    assert meta == {"rule": "ping", "decision_id": headers["x-decision-id"]}


async def test_two_authorization_headers_are_400(authz: RunningAuthz, mint: Mint) -> None:
    token = mint(scope="users:read")
    req = check_request(
        "/api/v1/users/alice", token=token, raw_headers=[("authorization", f"Bearer {token}")]
    )
    status, _, body = denied(await check(authz.address, req))
    assert (status, body["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/users/alice", {"cookie": "theme=dark,access_token=x"}),  # HTTP/1.1 join
        ("/api/v1/users/alice", {"cookie": "theme=dark; access_token=x"}),  # HTTP/2 join
        ("/api/v1/users/alice?access%5Ftoken=x", {}),
        ("/api/v1/users/alice?a=1;%61ccess_token=x", {}),
        ("/api/v1/users/alice", {"authorization": "Bearer a.b.c Basic dXNlcjpwYXNz"}),
    ],
)
async def test_a_second_credential_in_any_reading_is_400(
    authz: RunningAuthz, mint: Mint, path: str, headers: dict[str, str]
) -> None:
    token = None if "authorization" in headers else mint("alice", scope="users:read")
    req = check_request(path, token=token, headers=headers)
    status, headers_out, body = denied(await check(authz.address, req))
    assert (status, body["error"]) == (400, "invalid_request")
    assert headers_out["www-authenticate"] == 'Bearer realm="edgeguard", error="invalid_request"'


async def test_undecodable_path_is_400(authz: RunningAuthz, mint: Mint) -> None:
    token = mint(scope="users:read")
    req = check_request("/api/v1/users/%2e%2e%2fadmin", token=token)
    status, _, _ = denied(await check(authz.address, req))
    assert status == 400


async def test_unexpected_error_denies_with_503(
    authz: RunningAuthz, mint: Mint, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(authz.holder.current.authorizer, "decide_now", boom)
    status, _, body = denied(await check(authz.address, check_request("/api/v1/public/ping")))
    assert (status, body["error"]) == (503, "temporarily_unavailable")


async def test_an_identity_with_no_exact_encoding_denies_with_503(
    authz: RunningAuthz, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token parser refuses lone surrogates; should one get through, no lossy header.
    lone = Principal("\ud800", ISSUER, (), frozenset(), frozenset(), {}, 2e9)

    def allow(*_a: Any, **_k: Any) -> Decision:
        return Decision(True, 200, "allowed", rule="get-user", principal=lone)

    monkeypatch.setattr(authz.holder.current.authorizer, "decide_now", allow)
    resp = await check(authz.address, check_request("/api/v1/users/alice"))
    status, _, body = denied(resp)
    assert (status, body["error"]) == (503, "temporarily_unavailable")


async def test_audit_lines_carry_the_decision_and_never_the_token(
    authz: RunningAuthz, mint: Mint
) -> None:
    token = mint("alice", scope="users:read")
    await check(authz.address, check_request("/api/v1/users/alice?x=1", token=token))
    await check(authz.address, check_request("/api/v1/users/bob", token=token, request_id="r-2"))
    assert authz.audit is not None
    authz.audit.flush()
    text = authz.config.with_name("audit.log").read_text()
    assert token not in text
    assert token.split(".")[2] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["decision"], x["status"], x["rule"]) for x in lines] == [
        ("allow", 200, "get-user"),
        ("deny", 403, "get-user"),
    ]
    first = lines[0]
    assert first["path"] == "/api/v1/users/alice"  # no query string
    assert first["subject"] == "alice"
    assert first["client_address"] == "192.0.2.10"
    assert {"ts", "request_id", "reason", "issuer", "method", "latency_ms", "v"} <= set(first)


async def test_mtls_client_without_certificate_is_refused(
    authz_mtls: RunningAuthz, pki: Pki, mint: Mint
) -> None:
    token = mint("alice", scope="users:read")
    resp = await check(authz_mtls.address, check_request("/api/v1/users/alice", token=token), pki)
    allowed(resp)
    async with channel(authz_mtls.address, pki, client_cert=False) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                check_request("/api/v1/users/alice", token=token), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_grpcurl_lists_and_calls_check_and_health(authz_mtls: RunningAuthz, pki: Pki) -> None:
    address = authz_mtls.address
    listed = await asyncio.to_thread(grpcurl, address, "list", pki=pki)
    assert listed.returncode == 0, listed.stderr
    assert "envoy.service.auth.v3.Authorization" in listed.stdout.split()
    data = {
        "attributes": {
            "request": {"http": {"method": "GET", "path": "/api/v1/users/alice", "id": "g-1"}}
        }
    }
    called = await asyncio.to_thread(
        grpcurl, address, "envoy.service.auth.v3.Authorization/Check", pki=pki, data=data
    )
    assert called.returncode == 0, called.stderr
    out = json.loads(called.stdout)
    # grpcurl 1.8.6 prints the original proto field names.
    assert out["denied_response"]["status"]["code"] == "Unauthorized"
    health = await asyncio.to_thread(
        grpcurl,
        address,
        "grpc.health.v1.Health/Check",
        pki=pki,
        data={"service": "envoy.service.auth.v3.Authorization"},
    )
    assert health.returncode == 0, health.stderr
    assert '"SERVING"' in health.stdout


async def test_reload_swaps_policy_and_keeps_old_on_bad_config(
    authz: RunningAuthz, mint: Mint
) -> None:
    token = mint("alice", scope="users:read")
    stats = check_request("/api/v1/admin/stats", token=token)
    assert denied(await check(authz.address, stats))[0] == 403
    original = authz.config.read_text()
    opened = original.replace("    roles: [admin]\n", "    scopes: [users:read]\n")
    authz.config.write_text(opened)
    assert await authz.holder.reload() is True
    allowed(await check(authz.address, stats))
    authz.config.write_text(original + "      - name: broken\n        path: /x/{\n")
    assert await authz.holder.reload() is False
    assert authz.holder.reload_failures == 1
    allowed(await check(authz.address, stats))  # still the last good policy


async def test_config_path_is_recorded(authz: RunningAuthz) -> None:
    assert authz.holder.current.source == Path(authz.config)


async def test_repeat_allows_reuse_the_identity_but_never_a_decision_id(
    authz: RunningAuthz, mint: Mint
) -> None:
    token = mint("alice", scope="users:read")
    first = await check(authz.address, check_request("/api/v1/users/alice", token=token))
    second = await check(authz.address, check_request("/api/v1/users/alice", token=token))
    ids = []
    for resp in (first, second):
        keys = [h.header.key for h in resp.ok_response.headers]
        assert keys.count("x-decision-id") == 1
        headers, _, meta = allowed(resp)
        assert headers["x-decision-id"] == meta["decision_id"]
        ids.append(meta["decision_id"])
    assert ids[0] != ids[1]
    first_headers, _, _ = allowed(first)
    second_headers, _, _ = allowed(second)
    first_headers.pop("x-decision-id")
    second_headers.pop("x-decision-id")
    assert first_headers == second_headers


async def test_undecodable_bytes_are_invalid_argument_and_the_server_still_answers(
    authz: RunningAuthz,
) -> None:
    async with channel(authz.address) as ch:
        raw = ch.unary_unary(f"/{SERVICE_NAME}/Check")
        for body in (b"\xff\xff\xff", b"\x0a\x05\x0a"):  # not protobuf; a truncated field
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(body, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # A fixed message: no parser, no exception class (grpc's default said DecodeError).
            assert err.value.details() == "the body is not a CheckRequest"
        answer = external_auth_pb2.CheckResponse.FromString(
            await raw(check_request("/api/v1/public/ping").SerializeToString(), timeout=5)
        )
    assert answer.status.code == code_pb2.OK


# -- a token whose keys are not known yet -------------------------------------------------
# The Check's decision is synchronous; only then does it wait for a fetch (on the loop; on
# the sync stack from a worker thread through the bridge), at most check_wait_seconds.
CHECK_WAIT_S = 0.3


@pytest.fixture
def jwks_server() -> Iterator[LocalIdp]:
    server = LocalIdp()
    yield server
    server.stop()


def _published(idp: IdpKeys, *algs: str) -> dict[str, Any]:
    """The dev IdP's JWKS with only the keys of `algs` (RS256 and/or EdDSA)."""
    keys = idp.public_jwks()["keys"]
    return {"keys": [key for key in keys if key["alg"] in algs]}


@pytest.fixture
async def authz_remote(
    config_dir: Path, idp: IdpKeys, jwks_server: LocalIdp, stack: Stack
) -> AsyncIterator[RunningAuthz]:
    """authz whose issuer's keys come from `jwks_server`, which publishes the RS256 key."""
    jwks_server.set("/jwks", Reply.json(_published(idp, "RS256")))
    keys = {
        "jwks_url": jwks_server.url("/jwks"),
        "jwks": {
            "check_wait_seconds": CHECK_WAIT_S,
            "unknown_kid_cooldown_seconds": 0,
            "fetch_timeout_seconds": 6,  # longer than the slow IdP below: the fetch completes
        },
    }
    server = {"listen": "127.0.0.1:0", "stack": stack}
    running = await start_authz(write_config(config_dir, server=server, keys=keys))
    yield running
    await stop_authz(running)


@ALSO_ON_UVLOOP
async def test_a_rotated_in_key_is_fetched_and_the_check_allowed(
    authz_remote: RunningAuthz, jwks_server: LocalIdp, idp: IdpKeys, mint: Mint
) -> None:
    rs256 = mint("alice", scope="users:read")
    allowed(await check(authz_remote.address, check_request("/api/v1/users/alice", token=rs256)))
    assert jwks_server.hits["/jwks"] == 1
    jwks_server.set("/jwks", Reply.json(_published(idp, "RS256", "EdDSA")))  # rotation
    eddsa = mint("alice", alg="EdDSA", scope="users:read")
    resp = await check(authz_remote.address, check_request("/api/v1/users/alice", token=eddsa))
    headers, _, _ = allowed(resp)
    assert headers["x-auth-subject"] == '"alice"'
    assert jwks_server.hits["/jwks"] == 2  # one refetch for the unknown kid
    # Known now: no further fetch.
    allowed(await check(authz_remote.address, check_request("/api/v1/users/alice", token=eddsa)))
    assert jwks_server.hits["/jwks"] == 2


async def test_an_unknown_kid_waits_at_most_check_wait_then_is_refused(
    authz_remote: RunningAuthz, jwks_server: LocalIdp, idp: IdpKeys, mint: Mint
) -> None:
    # The IdP answers the refetch, with the new key, only after 3 s.
    jwks_server.set("/jwks", Reply.json(_published(idp, "RS256", "EdDSA"), delay=3.0))
    eddsa = mint("alice", alg="EdDSA", scope="users:read")
    started = time.monotonic()
    status, _, body = denied(
        await check(authz_remote.address, check_request("/api/v1/users/alice", token=eddsa))
    )
    waited = time.monotonic() - started
    assert (status, body["error"]) == (401, "invalid_token")  # fail closed: unknown key
    assert CHECK_WAIT_S * 0.8 < waited < CHECK_WAIT_S + 1.5  # not the 3 s fetch
    # The fetch went on after the Check stopped waiting; later Checks use its keys.
    deadline = time.monotonic() + 10
    while True:
        resp = await check(authz_remote.address, check_request("/api/v1/users/alice", token=eddsa))
        if resp.WhichOneof("http_response") == "ok_response":
            break
        assert time.monotonic() < deadline, "the rotated-in key never arrived"
        await asyncio.sleep(0.1)


async def test_an_issuer_without_keys_is_503_after_check_wait(
    config_dir: Path, jwks_server: LocalIdp, stack: Stack, mint: Mint
) -> None:
    jwks_server.set("/jwks", Reply(status=503))  # the IdP is down at start
    keys = {"jwks_url": jwks_server.url("/jwks"), "jwks": {"check_wait_seconds": CHECK_WAIT_S}}
    server = {"listen": "127.0.0.1:0", "stack": stack}
    running = await start_authz(write_config(config_dir, server=server, keys=keys))
    try:
        jwks_server.set("/jwks", Reply(status=503, delay=4.0))  # and slow to say so
        token = mint("alice", scope="users:read")
        started = time.monotonic()
        resp = await check(running.address, check_request("/api/v1/users/alice", token=token))
        status, _, body = denied(resp)
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        assert time.monotonic() - started < CHECK_WAIT_S + 1.5  # not the 4 s IdP
    finally:
        await stop_authz(running)
