"""Requests through the whole stack: tokens, policy, request hygiene, TLS, mTLS health, logs.

Real HTTPS to Envoy's listener, the real sidecars behind it (ARCHITECTURE.md sections 4
and 5). Nothing here exhausts a rate-limit bucket (see conftest's docstring); the flood
tests are in test_rate_limits.py and the fault tests in test_faults.py, each with a stack
of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import (
    Edge,
    assert_denial,
    assert_hardened,
    assert_no_tokens_logged,
    identity_at_upstream,
)
from tests.e2e.raw_clients import h1_exchange
from tests.support.grpcurl import grpcurl
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

REALM = 'Bearer realm="edgeguard"'
INVALID_TOKEN = f'{REALM}, error="invalid_token", error_description="The access token is invalid"'
FORGED_IDENTITY = [
    ("x-auth-subject", "mallory"),
    ("X-Auth-Issuer", "https://evil.example"),
    ("x-auth-scopes", "users:read users:write"),
    ("X-AUTH-ROLES", "admin"),
    ("x-auth-client-id", "evil-client"),
]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segment(token: str, index: int) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(_unb64(token.split(".")[index]))
    return parsed


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- allowed: RS256 and Ed25519 ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "EdDSA", "Ed25519"])
def test_valid_token_is_allowed_with_identity_at_the_upstream(edge: Edge, alg: str) -> None:
    subject = _unique("alice")
    token = edge.mint(subject, scope="users:read profile", roles=["support", "auditor"], alg=alg)
    assert _segment(token, 0)["alg"] == alg

    reply = edge.client.request(f"/api/v1/users/{subject}", token=token)

    identity = identity_at_upstream(reply)
    assert reply.json()["user_id"] == subject
    assert identity == {
        "x-auth-subject": subject,
        "x-auth-issuer": edge.issuer,
        "x-auth-scopes": ["profile", "users:read"],
        "x-auth-roles": ["auditor", "support"],
    }
    assert_hardened(reply)
    if edge.own_stack:  # Envoy's access log is a file of the stack
        entry = edge.access_log_entry(reply.request_id or "")
        assert (entry["status"], entry["subject"]) == (200, subject)
        assert entry["authz_rule"] == "get-user"


def test_public_route_needs_no_token_and_carries_no_identity(edge: Edge) -> None:
    reply = edge.client.request("/api/v1/public/ping")
    assert identity_at_upstream(reply) == {}
    assert reply.json()["pong"] is True
    assert_hardened(reply)


# --- 401 ---------------------------------------------------------------------------------------


def test_no_token_is_401_with_the_bearer_challenge(edge: Edge) -> None:
    before = edge.upstream_mark()
    reply = edge.client.request("/api/v1/users/alice")
    assert_denial(reply, 401, "unauthorized")
    assert reply.header("www-authenticate") == REALM
    edge.assert_upstream_untouched(before)


def test_token_only_in_the_query_string_counts_as_no_credentials(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    reply = edge.client.request(f"/api/v1/users/alice?access_token={token}")
    assert_denial(reply, 401, "unauthorized")
    assert reply.header("www-authenticate") == REALM


def _tampered_payload(edge: Edge) -> str:
    header, payload, signature = edge.mint("alice", scope="users:read").split(".")
    claims = json.loads(_unb64(payload))
    claims.update(sub="bob", roles=["admin"])
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


def _tampered_signature(edge: Edge) -> str:
    header, payload, signature = edge.mint("alice", scope="users:read").split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return ".".join([header, payload, signature[:middle] + flipped + signature[middle + 1 :]])


def _claims(edge: Edge) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": edge.issuer,
        "sub": "alice",
        "aud": "api://demo",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "scope": "users:read",
        "roles": ["admin"],
    }


def _alg_none(edge: Edge) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(_claims(edge)).encode())}."


def _hs256_with_the_rsa_public_key(edge: Edge) -> str:
    # The classic algorithm confusion: HMAC keyed with the issuer's public key.
    rsa = edge.idp_keys.rs256
    secret = rsa.as_pem(private=False)
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa.thumbprint()}
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(edge)).encode())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


INVALID_TOKENS: dict[str, Callable[[Edge], str]] = {
    "expired": lambda e: e.mint("alice", scope="users:read", now=time.time() - 3600, ttl=300),
    "not-yet-valid": lambda e: e.mint("alice", scope="users:read", now=time.time() + 3600),
    "wrong-audience": lambda e: e.mint("alice", scope="users:read", audience="api://other"),
    "wrong-issuer": lambda e: e.mint("alice", scope="users:read", issuer="http://127.0.0.1:9"),
    "issuer-trailing-slash": lambda e: e.mint("alice", scope="users:read", issuer=e.issuer + "/"),
    "unknown-kid": lambda e: e.mint("alice", scope="users:read", header={"kid": "no-such-key"}),
    "tampered-payload": _tampered_payload,
    "tampered-signature": _tampered_signature,
    "alg-none": _alg_none,
    "hs256-with-rsa-public-key": _hs256_with_the_rsa_public_key,
    "garbage": lambda e: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(INVALID_TOKENS))
def test_invalid_token_is_401_invalid_token_with_one_generic_answer(edge: Edge, case: str) -> None:
    token = INVALID_TOKENS[case](edge)
    edge.tokens.append(token)
    before = edge.upstream_mark()

    reply = edge.client.request("/api/v1/users/alice", token=token)

    assert_denial(reply, 401, "invalid_token")
    assert reply.header("www-authenticate") == INVALID_TOKEN  # the same text for every reason
    edge.assert_upstream_untouched(before)


# --- 403: scopes, ownership (IDOR), roles, the allow-list -------------------------------------


def test_missing_scope_is_403_insufficient_scope_naming_the_scope(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    before = edge.upstream_mark()

    reply = edge.client.request("/api/v1/users/alice", method="PUT", token=token)

    assert_denial(reply, 403, "insufficient_scope")
    assert reply.header("www-authenticate") == (
        f'{REALM}, error="insufficient_scope", scope="users:write"'
    )
    edge.assert_upstream_untouched(before)


def test_token_without_any_scope_is_403_insufficient_scope(edge: Edge) -> None:
    reply = edge.client.request("/api/v1/users/alice", token=edge.mint("alice"))
    assert_denial(reply, 403, "insufficient_scope")
    assert reply.header("www-authenticate") == (
        f'{REALM}, error="insufficient_scope", scope="users:read"'
    )


def test_idor_user_cannot_read_or_write_another_users_resource(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read users:write")
    before = edge.upstream_mark()

    read = edge.client.request("/api/v1/users/bob", token=token)
    # A valid body, so the ownership condition decides (the schema is checked before it).
    profile = {"display_name": "Mallory", "email": "m@example.com"}
    write = edge.client.request("/api/v1/users/bob", method="PUT", token=token, json_body=profile)
    # A client-sent role is no role: the forged header is stripped before ext_authz.
    forged = edge.client.request("/api/v1/users/bob", token=token, headers=FORGED_IDENTITY)

    for reply in (read, write, forged):
        assert_denial(reply, 403, "forbidden")
        assert reply.header("www-authenticate") is None
    edge.assert_upstream_untouched(before)
    # ...while the owner is served.
    assert identity_at_upstream(edge.client.request("/api/v1/users/alice", token=token))


def test_admin_may_act_on_any_user(edge: Edge) -> None:
    admin = edge.mint("root", scope="users:read users:write", roles=["admin"])

    profile = {"display_name": "Bob", "email": "bob@example.com"}  # PUT's body schema
    for method, action in (("GET", "read"), ("PUT", "updated"), ("DELETE", "deleted")):
        body = profile if method == "PUT" else None
        reply = edge.client.request("/api/v1/users/bob", method=method, token=admin, json_body=body)
        identity = identity_at_upstream(reply)
        assert reply.json()["action"] == action
        assert (identity["x-auth-subject"], identity["x-auth-roles"]) == ("root", ["admin"])


def test_admin_only_routes_are_403_for_other_users(edge: Edge) -> None:
    user = edge.mint("alice", scope="users:read users:write")
    admin = edge.mint("root", roles=["admin"])
    before = edge.upstream_mark()

    assert_denial(edge.client.request("/api/v1/admin/stats", token=user), 403, "forbidden")
    assert_denial(
        edge.client.request("/api/v1/users/alice", method="DELETE", token=user), 403, "forbidden"
    )
    edge.assert_upstream_untouched(before)
    assert identity_at_upstream(edge.client.request("/api/v1/admin/stats", token=admin))


@pytest.mark.parametrize(
    ("method", "path", "with_token"),
    [
        ("GET", "/api/v1/nope", True),
        ("GET", "/api/v2/users/alice", True),
        ("GET", "/", True),
        ("POST", "/api/v1/users/alice", True),
        ("POST", "/api/v1/public/ping", False),
        ("GET", "/api/v1/nope", False),  # the allow-list answers before authentication
    ],
)
def test_unmatched_route_is_403(edge: Edge, method: str, path: str, with_token: bool) -> None:
    token = edge.mint("alice", scope="users:read users:write", roles=["admin"])
    before = edge.upstream_mark()

    reply = edge.client.request(path, method=method, token=token if with_token else None)

    assert_denial(reply, 403, "forbidden")
    edge.assert_upstream_untouched(before)


# --- 400: ambiguous requests -------------------------------------------------------------------


def test_two_authorization_headers_are_400(edge: Edge) -> None:
    alice = edge.mint("alice", scope="users:read")
    admin = edge.mint("root", scope="users:read", roles=["admin"])
    before = edge.upstream_mark()

    for headers in (
        [("authorization", f"Bearer {alice}"), ("authorization", f"Bearer {admin}")],
        [("authorization", f"Bearer {alice}"), ("Authorization", f"Bearer {alice}")],
    ):
        reply = edge.client.request("/api/v1/users/bob", headers=headers)
        assert_denial(reply, 400, "invalid_request")
        assert reply.header("www-authenticate") == f'{REALM}, error="invalid_request"'
    edge.assert_upstream_untouched(before)


@pytest.mark.parametrize("where", ["query", "cookie"])
def test_header_token_plus_a_second_token_elsewhere_is_400(edge: Edge, where: str) -> None:
    alice = edge.mint("alice", scope="users:read")
    admin = edge.mint("root", scope="users:read", roles=["admin"])
    path, headers = "/api/v1/users/bob", [("authorization", f"Bearer {alice}")]
    if where == "query":
        path += f"?access_token={admin}"
    else:
        headers.append(("cookie", f"access_token={admin}"))
    before = edge.upstream_mark()

    assert_denial(edge.client.request(path, headers=headers), 400, "invalid_request")
    edge.assert_upstream_untouched(before)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/users/alice%2F..%2Fbob",
        "/api/v1/users/alice%2fbob",
        "/api/v1/users/alice%5C..%5Cbob",
        "/api/v1/users/ali%00ce",
    ],
)
def test_escaped_slashes_and_nul_in_the_path_are_400(edge: Edge, path: str) -> None:
    token = edge.mint("alice", scope="users:read")
    before = edge.upstream_mark()

    reply = edge.client.request(path, token=token)

    # Envoy's own reply, refused before a request id is given out: the JSON denial body
    # of every other denial, with a null id.
    assert reply.status == 400, reply.body
    assert reply.header("content-type") == "application/json"
    assert reply.json() == {"error": "invalid_request", "request_id": None}
    assert_hardened(reply)
    edge.assert_upstream_untouched(before)


def test_ambiguous_framing_is_a_json_400_from_envoy(edge: Edge) -> None:
    before = edge.upstream_mark()
    head = (
        b"POST /api/v1/public/ping HTTP/1.1\r\nhost: localhost\r\n"
        b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    reply = h1_exchange(edge.client, head, b"0\r\n\r\n")

    assert reply.status == 400
    assert reply.header("content-type") == "application/json"
    assert reply.json()["error"] == "invalid_request"
    assert b"chunked" not in reply.body.lower()  # nothing of Envoy's codec text
    assert_hardened(reply)
    edge.assert_upstream_untouched(before)


@pytest.mark.parametrize("path", ["/api/v1/users/alice;role=admin", "/api/v1/users/alice%zz"])
def test_undecodable_or_parameterised_path_is_400(edge: Edge, path: str) -> None:
    token = edge.mint("alice", scope="users:read")
    before = edge.upstream_mark()
    assert_denial(edge.client.request(path, token=token), 400, "invalid_request")
    edge.assert_upstream_untouched(before)


def test_dot_segments_are_resolved_before_the_policy_sees_the_path(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    # /api/v1/users/alice/../bob is bob's resource: still the ownership check, still 403.
    assert_denial(edge.client.request("/api/v1/users/alice/../bob", token=token), 403, "forbidden")
    reply = edge.client.request("/api/v1/users/bob/../alice", token=token)
    assert identity_at_upstream(reply)["x-auth-subject"] == "alice"
    assert reply.json()["user_id"] == "alice"


# --- identity headers from the client --------------------------------------------------------


def test_client_sent_identity_headers_never_reach_the_upstream(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")

    reply = edge.client.request("/api/v1/users/alice", token=token, headers=FORGED_IDENTITY)

    # Exactly what authz derived from the token: forged values neither overwrite nor add.
    assert identity_at_upstream(reply) == {
        "x-auth-subject": "alice",
        "x-auth-issuer": edge.issuer,
        "x-auth-scopes": ["users:read"],
    }


def test_client_sent_identity_headers_are_stripped_on_public_routes(edge: Edge) -> None:
    reply = edge.client.request("/api/v1/public/ping", headers=FORGED_IDENTITY)
    assert identity_at_upstream(reply) == {}


def test_identity_header_spelled_with_underscores_is_400(edge: Edge) -> None:
    # Some upstream frameworks read x_auth_subject as x-auth-subject; Envoy refuses it.
    before = edge.upstream_mark()
    reply = edge.client.request("/api/v1/public/ping", headers=[("x_auth_subject", "mallory")])
    assert reply.status == 400
    assert_hardened(reply)
    edge.assert_upstream_untouched(before)


# --- security response headers ----------------------------------------------------------------


def test_security_headers_on_200_400_401_403_and_no_server_header(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    replies = {
        200: edge.client.request("/api/v1/users/alice", token=token),
        400: edge.client.request("/api/v1/users/a%2Fb", token=token),  # Envoy's own reply
        401: edge.client.request("/api/v1/users/alice"),
        403: edge.client.request("/api/v1/users/bob", token=token),
    }
    for status, reply in replies.items():
        assert reply.status == status
        assert_hardened(reply)
    # The demo upstream does send `Server: demo-upstream ...`: removed at the edge.
    assert replies[200].header("server") is None


def test_healthz_is_answered_by_envoy_with_security_headers(edge: Edge) -> None:
    before = edge.upstream_mark()
    reply = edge.client.request("/healthz")
    assert reply.status == 200
    assert_hardened(reply)
    edge.assert_upstream_untouched(before)


# --- request ids ---------------------------------------------------------------------------


def _audit_lines(edge: Edge) -> list[dict[str, Any]]:
    lines = []
    for line in (edge.stack.log_dir / "authz.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


@pytest.mark.own_stack("reads Envoy's access log and the authz audit log")
def test_request_id_in_denial_body_header_access_log_and_audit_agree(edge: Edge) -> None:
    token = edge.mint("alice", scope="users:read")
    reply = edge.client.request("/api/v1/users/bob", token=token)

    assert_denial(reply, 403, "forbidden")  # body request_id == x-request-id header
    request_id = reply.request_id
    assert request_id
    assert reply.json()["request_id"] == request_id
    entry = edge.access_log_entry(request_id)
    assert (entry["status"], entry["method"], entry["path"]) == (403, "GET", "/api/v1/users/bob")
    assert entry["client_address"] == edge.client.source
    assert entry["authz_rule"] == "get-user"
    [audit] = [line for line in _audit_lines(edge) if line.get("request_id") == request_id]
    assert (audit["decision"], audit["status"], audit["subject"]) == ("deny", 403, "alice")


def test_request_id_of_an_allowed_request_reaches_the_upstream(edge: Edge) -> None:
    reply = edge.client.request("/api/v1/public/ping")
    assert reply.status == 200
    assert reply.request_id
    assert reply.json()["request_id"] == reply.request_id
    if edge.own_stack:  # Envoy's access log is a file of the stack
        assert edge.access_log_entry(reply.request_id)["status"] == 200


# A client's x-request-id never survives: Envoy's early header mutation drops it and no
# client address is internal, so the id in logs and denial bodies is always Envoy's own.
@pytest.mark.parametrize("path", ["/api/v1/public/ping", "/api/v1/users/bob"])
def test_client_chosen_request_id_is_replaced_by_envoys_own(edge: Edge, path: str) -> None:
    chosen = _unique("client-chosen-id")
    reply = edge.client.request(path, headers=[("x-request-id", chosen)])
    assert reply.status in (200, 401)
    assert reply.request_id
    assert reply.request_id != chosen
    assert reply.json()["request_id"] == reply.request_id


# --- TLS ---------------------------------------------------------------------------------------


def _ssl_connection_errors(edge: Edge) -> int | None:
    """Envoy's count of failed handshakes (None without its admin API)."""
    if not edge.own_stack:
        return None
    return edge.counter(f"listener.127.0.0.1_{edge.ports.envoy}.ssl.connection_error")


def test_tls13_is_preferred_and_h2_offered(edge: Edge) -> None:
    context = edge.client.context(alpn=["h2", "http/1.1"])
    assert edge.client.handshake(context) == ("TLSv1.3", "h2")


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["TLSv1.2", "TLSv1.3"],
)
def test_tls12_and_tls13_are_accepted(edge: Edge, version: ssl.TLSVersion, name: str) -> None:
    context = edge.client.context(minimum=version, maximum=version)
    assert edge.client.handshake(context)[0] == name
    reply = edge.client.request("/api/v1/public/ping", context=context)
    assert reply.status == 200
    if edge.own_stack:  # Envoy's access log is a file of the stack
        assert edge.access_log_entry(reply.request_id or "")["tls_version"] == name


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1], ids=["TLSv1.1", "TLSv1.0"]
)
def test_tls11_and_older_are_refused_by_envoy(edge: Edge, version: ssl.TLSVersion) -> None:
    # This machine's OpenSSL 3 offers TLS 1.1/1.0 only at security level 0; with that, the
    # client really sends such a ClientHello and Envoy must answer protocol_version (and
    # count a connection error: refused by Envoy, not by the client).
    if not (ssl.HAS_TLSv1_1 if version is ssl.TLSVersion.TLSv1_1 else ssl.HAS_TLSv1):
        pytest.skip(f"the local OpenSSL cannot offer {version.name} at all")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(edge.client.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = version
    old.maximum_version = version
    before = _ssl_connection_errors(edge)

    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
        edge.client.handshake(old)

    # Refused by Envoy, not by the client. (Without the admin API, the protocol_version
    # alert matched above, which is the server's answer, is the evidence.)
    if before is not None:
        assert _ssl_connection_errors(edge) == before + 1


# --- the sidecars' health over mTLS -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sidecar", "service"),
    [
        ("authz", ""),
        ("authz", "envoy.service.auth.v3.Authorization"),
        ("ratelimit", ""),
        ("ratelimit", "envoy.service.ratelimit.v3.RateLimitService"),
    ],
)
def test_grpcurl_health_through_mtls_is_serving(edge: Edge, sidecar: str, service: str) -> None:
    out = grpcurl(
        edge.sidecar(sidecar),
        "grpc.health.v1.Health/Check",
        pki=edge.pki,
        data={"service": service},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def _health_check(edge: Edge, address: str, *, client_cert: bool) -> str:
    """grpc.health.v1 Check over TLS with the stack's CA, with or without Envoy's client
    certificate; the status name, or the gRPC error code's name."""
    pki = edge.pki
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(address, creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.mark.parametrize("sidecar", ["authz", "ratelimit"])
def test_sidecars_refuse_a_client_without_a_certificate(edge: Edge, sidecar: str) -> None:
    address = edge.sidecar(sidecar)
    assert _health_check(edge, address, client_cert=True) == "SERVING"
    assert _health_check(edge, address, client_cert=False) == "UNAVAILABLE"


# --- logs (keep last: it scans what the module's requests left behind) -------------------------


@pytest.mark.own_stack("scans the log files of every process of the stack")
def test_tokens_never_appear_in_any_log(edge: Edge) -> None:
    planted = edge.mint(_unique("planted"), scope="users:read")
    subject = _segment(planted, 1)["sub"]
    sent: list[Reply] = [
        edge.client.request(f"/api/v1/users/{subject}", token=planted),  # allowed
        edge.client.request(f"/api/v1/users/{subject}?access_token={planted}"),  # 401
        edge.client.request(f"/api/v1/users/{subject}", headers=[("cookie", f"t={planted}")]),
        edge.client.request("/api/v1/users/someone-else", token=planted),  # 403
        edge.client.request(f"/api/v1/users/{subject}", token=planted + "x"),  # 401 invalid
    ]
    assert [r.status for r in sent] == [200, 401, 401, 403, 401]
    assert_no_tokens_logged(edge)
