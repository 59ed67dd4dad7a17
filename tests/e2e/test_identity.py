"""Identity and credentials through a real Envoy: what the upstream receives is exact, and
a second credential is refused whichever way Envoy hands it to ext_authz.

Identity: tokens from the stack's IdP carry claim values that broke the old encoding
(`user,admin` as one role, a scope with a space, `ålice` next to `%C3%A5lice`, quotes, CR
LF and NUL); the demo upstream echoes the headers it got, which are decoded here as
docs/identity-headers.md tells upstream authors to, and compared with the claims.

Credentials: what Envoy 1.40 hands ext_authz was measured, not assumed. Two Cookie lines
over HTTP/1.1 arrive joined with "," and HTTP/2 cookie fields joined with "; "; two
Authorization headers arrive joined with "," over both. Each reading is sent for real:
HTTP/1.1 from the stdlib client, HTTP/2 from curl (the stdlib has no HTTP/2 client).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import http_sf
import pytest

from tests.e2e.conftest import (
    Edge,
    assert_denial,
    identity_at_upstream,
    raw_identity_at_upstream,
)
from tests.support.https import Reply

pytestmark = pytest.mark.e2e

TRICKY_ROLES = [
    "admin",
    "user,admin",
    "user, admin",
    "a b",
    "ålice",
    "%C3%A5lice",
    'q"uote',
    "back\\slash",
    "semi;colon",
    "cr\r\nx-injected: 1",
    "nul\0byte",
    "",
]
TRICKY_SCOPES = ["users:read", "with space", "%25", "é", "a,b"]
SUBJECTS = ["ålice", "%C3%A5lice", "user,admin", 'say "hi"', "a;b=c\\d", "%", "😀"]


def _decoded_by_http_sf(raw: dict[str, str]) -> dict[str, object]:
    """The upstream's side, with nothing but http_sf (independent of our decoder)."""
    out: dict[str, object] = {}
    for name, field in raw.items():
        kind = "list" if name in ("x-auth-scopes", "x-auth-roles") else "item"
        parsed = http_sf.parse(field.encode("ascii"), tltype=kind)
        members = parsed if isinstance(parsed, list) else [parsed]
        values = []
        for member in members:
            assert isinstance(member, tuple)
            assert member[1] == {}  # no parameters
            values.append(str(member[0]))
        out[name] = values if kind == "list" else values[0]
    return out


# --- identity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_claim_value_reaches_the_upstream_exactly(edge: Edge, subject: str) -> None:
    token = edge.mint(
        subject,
        roles=TRICKY_ROLES,
        extra={"scp": TRICKY_SCOPES, "client_id": "cli\u00e9nt, 2"},
    )

    reply = edge.client.request("/api/v1/admin/stats", token=token)

    raw = raw_identity_at_upstream(reply)
    for value in raw.values():  # nothing raw beyond printable ASCII reached a header
        assert value.isascii()
        assert value.isprintable()
    expected = {
        "x-auth-subject": subject,
        "x-auth-issuer": edge.issuer,
        "x-auth-client-id": "cli\u00e9nt, 2",
        "x-auth-scopes": sorted(TRICKY_SCOPES),
        "x-auth-roles": sorted(TRICKY_ROLES),
    }
    assert identity_at_upstream(reply) == expected
    assert _decoded_by_http_sf(raw) == expected
    # The rate limiter keyed stage 1 on the raw subject (Envoy's access log shows it).
    if edge.own_stack:  # Envoy's access log is a file of the stack
        assert edge.access_log_entry(reply.request_id or "")["subject"] == subject


def test_values_that_used_to_collide_arrive_as_different_headers(edge: Edge) -> None:
    seen = {}
    for subject, roles in (
        ("ålice", ["admin", "user,admin"]),
        ("%C3%A5lice", ["admin", "user", "admin,"]),
        ("%c3%a5lice", ["admin", "user", ""]),
    ):
        reply = edge.client.request("/api/v1/admin/stats", token=edge.mint(subject, roles=roles))
        raw = raw_identity_at_upstream(reply)
        seen[subject] = (raw["x-auth-subject"], raw["x-auth-roles"])
        assert identity_at_upstream(reply)["x-auth-roles"] == sorted(roles)
    assert len(set(seen.values())) == 3
    assert len({subject for subject, _ in seen.values()}) == 3


# --- a second credential, as Envoy hands it over -----------------------------------------------


def _curl_h2(edge: Edge, tmp_path: Path, path: str, headers: Sequence[tuple[str, str]]) -> Reply:
    """One HTTP/2 request through curl; headers (the token too) from a file, not argv."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl (with HTTP/2) is needed for the HTTP/2 cases")
    header_file = tmp_path / "headers"
    header_file.write_text("".join(f"{name}: {value}\n" for name, value in headers))
    body = tmp_path / "body"
    port = edge.client.port
    edge.client.pace()
    done = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--http2",
            "--cacert",
            str(edge.client.ca),
            "--connect-to",  # the server name, at the listener's address
            f"{edge.client.server_name}:{port}:{edge.client.host}:{port}",
            "--header",
            f"@{header_file}",
            "--output",
            str(body),
            "--write-out",
            "%{http_version} %{http_code}",
            f"https://{edge.client.server_name}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    version, status = done.stdout.split()
    assert version == "2", done.stdout  # really HTTP/2
    return Reply(int(status), [], body.read_bytes())


def _h1(edge: Edge, path: str, headers: Sequence[tuple[str, str]]) -> Reply:
    return edge.client.request(path, headers=headers)


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_a_token_cookie_in_a_second_cookie_header_is_400(
    edge: Edge, tmp_path: Path, protocol: str
) -> None:
    alice = edge.mint("alice", scope="users:read")
    admin = edge.mint("root", scope="users:read", roles=["admin"])
    send = _h1 if protocol == "http/1.1" else lambda e, p, h: _curl_h2(e, tmp_path, p, h)
    auth = ("authorization", f"Bearer {alice}")
    before = edge.upstream_mark()

    denied = send(
        edge,
        "/api/v1/users/bob",
        [auth, ("cookie", "theme=dark"), ("cookie", f"access_token={admin}")],
    )
    assert denied.status == 400, denied.body
    assert denied.json()["error"] == "invalid_request"
    edge.assert_upstream_untouched(before)

    # Two Cookie headers without a token cookie are fine: the 400 is the token's.
    served = send(
        edge, "/api/v1/users/alice", [auth, ("cookie", "theme=dark"), ("cookie", "lang=en")]
    )
    assert served.status == 200, served.body


@pytest.mark.parametrize(
    "query",
    [
        "access%5Ftoken={t}",
        "%61ccess_token={t}",
        "ACCESS_TOKEN={t}",
        "access_token+={t}",
        "a=1;access_token={t}",
        "a=1?access_token={t}",
        "access.token={t}",
        "access_token[]={t}",
        "%2561ccess_token={t}",
    ],
)
def test_a_token_in_any_reading_of_the_query_next_to_the_header_is_400(
    edge: Edge, query: str
) -> None:
    alice = edge.mint("alice", scope="users:read")
    admin = edge.mint("root", scope="users:read", roles=["admin"])
    before = edge.upstream_mark()

    reply = edge.client.request(f"/api/v1/users/bob?{query.format(t=admin)}", token=alice)

    assert_denial(reply, 400, "invalid_request")
    edge.assert_upstream_untouched(before)


def test_a_query_that_only_mentions_the_name_is_served(edge: Edge) -> None:
    alice = edge.mint("alice", scope="users:read")
    reply = edge.client.request(
        "/api/v1/users/alice?q=access_token&next=access%5Ftoken", token=alice
    )
    assert reply.status == 200, reply.body


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
@pytest.mark.parametrize(
    "values",
    [
        ["Bearer {a}", "Bearer {b}"],  # two headers: Envoy joins them with ","
        ["Bearer {a}, Basic dXNlcjpwYXNz"],  # two schemes in one header
        ["Bearer {a} Basic dXNlcjpwYXNz"],  # ... without the comma
    ],
)
def test_two_credentials_in_authorization_are_400(
    edge: Edge, tmp_path: Path, protocol: str, values: list[str]
) -> None:
    alice = edge.mint("alice", scope="users:read")
    admin = edge.mint("root", scope="users:read", roles=["admin"])
    headers = [("authorization", v.format(a=alice, b=admin)) for v in values]
    before = edge.upstream_mark()

    if protocol == "h2":
        reply = _curl_h2(edge, tmp_path, "/api/v1/users/bob", headers)
    else:
        reply = _h1(edge, "/api/v1/users/bob", headers)

    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "invalid_request"
    edge.assert_upstream_untouched(before)


def test_a_fragment_never_reaches_ext_authz(edge: Edge) -> None:
    # Envoy 1.40 refuses a "#" in the request target itself (measured): nothing for a
    # second reading of the query to find.
    alice = edge.mint("alice", scope="users:read")
    before = edge.upstream_mark()
    reply = edge.client.request("/api/v1/users/alice?a=1#access_token=x", token=alice)
    assert reply.status == 400
    edge.assert_upstream_untouched(before)
