"""The requests the bench sends: tokens, CheckRequests shaped like Envoy's, RateLimitRequests.

A CheckRequest carries what Envoy's ext_authz filter sends with this project's config
(headers as the `headers` map, lower-case names, as Envoy sends them by default): the
pseudo-headers, a typical browser/API client's headers, Envoy's x-request-id and
x-forwarded-*, the Authorization header, the peer address and the TLS SNI.

Tokens: `mint_pool` uses the dev IdP's own minting (devstack.idp_keys.mint_token, joserfc);
`fast_eddsa_tokens` signs the same header and claims with `cryptography` directly, ~3x
faster, for the 100,000-subject memory run (the sidecar verifies every one of them).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from devstack.idp_keys import IdpKeys, mint_token

ISSUER = "https://idp.bench.local"
AUDIENCE = "api://demo"
SCOPE = "users:read orders:read"
HOST = "api.bench.local"


@dataclass(frozen=True)
class Token:
    subject: str
    alg: str
    jwt: str


def claims_for(subject: str, index: int) -> dict[str, object]:
    return {"tenant": f"tenant-{index % 50}", "plan": "pro" if index % 3 else "free"}


def mint_pool(keys: IdpKeys, alg: str, count: int, *, prefix: str, ttl: int = 3600) -> list[Token]:
    """`count` distinct valid tokens (distinct subjects) signed by the dev IdP's key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc: "EdDSA is deprecated via RFC 9864"
        return [
            Token(
                f"{prefix}{i}",
                alg,
                mint_token(
                    keys,
                    issuer=ISSUER,
                    audience=AUDIENCE,
                    subject=f"{prefix}{i}",
                    alg=alg,
                    scope=SCOPE,
                    roles=["user"],
                    ttl=ttl,
                    extra=claims_for(f"{prefix}{i}", i),
                ),
            )
            for i in range(count)
        ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fast_eddsa_tokens(
    keys: IdpKeys, count: int, *, prefix: str, ttl: int = 3600
) -> Iterator[Token]:
    """Like mint_pool(alg="EdDSA") -- same header, same claims -- signed without joserfc."""
    private = keys.ed25519.private_key
    assert isinstance(private, Ed25519PrivateKey)
    header = _b64(
        json.dumps(
            {"alg": "EdDSA", "typ": "at+jwt", "kid": keys.ed25519.thumbprint()},
            separators=(",", ":"),
        ).encode()
    )
    now = int(time.time())
    for i in range(count):
        subject = f"{prefix}{i}"
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": SCOPE,
            "roles": ["user"],
            **claims_for(subject, i),
        }
        signing_input = f"{header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = _b64(private.sign(signing_input.encode()))
        yield Token(subject, "EdDSA", f"{signing_input}.{signature}")


def check_request(
    *,
    method: str,
    path: str,
    token: str | None,
    client_ip: str = "192.0.2.10",
    request_id: str | None = None,
) -> bytes:
    """A serialized CheckRequest as Envoy's ext_authz filter would send it."""
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = client_ip
    attrs.source.address.socket_address.port_value = 54321
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 8443
    attrs.request.time.GetCurrentTime()
    attrs.tls_session.sni = HOST
    http = attrs.request.http
    http.id = "1234567890123456789"
    http.method = method
    http.path = path
    http.host = HOST
    http.scheme = "https"
    http.protocol = "HTTP/2"
    rid = request_id or str(uuid.uuid4())
    headers: list[tuple[str, str]] = [
        (":authority", HOST),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("user-agent", "bench-client/1.0 (+https://example.invalid)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-forwarded-for", client_ip),
        ("x-forwarded-proto", "https"),
        ("x-request-id", rid),
    ]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    for name, value in headers:
        http.headers[name] = value
    return bytes(request.SerializeToString())


def ratelimit_request(
    entries: Sequence[Sequence[tuple[str, str]]], *, domain: str = "edge"
) -> bytes:
    """A serialized RateLimitRequest with one descriptor per item of `entries`."""
    request = rls_pb2.RateLimitRequest(domain=domain)
    for descriptor in entries:
        d = request.descriptors.add()
        for key, value in descriptor:
            d.entries.add(key=key, value=value)
    return bytes(request.SerializeToString())
