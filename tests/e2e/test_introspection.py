"""Opaque tokens through the real Envoy: the authz sidecar asks a real OpenID provider
(node-oidc-provider, tests/support/oidc_provider) to introspect them (RFC 7662), next to
the JWT issuer of the demo. Skipped, with the reason, where node or the provider's npm
packages are missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from devstack.configs import AUTHZ_DEMO
from tests.e2e.conftest import Edge, assert_denial, identity_at_upstream, running_stack
from tests.support.oidc_provider import (
    RESOURCE,
    SIDECAR,
    Provider,
    ProviderMissingError,
    running_provider,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.own_stack("starts a stack of its own beside an OpenID provider"),
]

ORDERS = "/api/v1/orders/42"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    try:
        with running_provider() as running:
            yield running
    except ProviderMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def opaque_edge(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The demo stack, its policy plus an introspection issuer and a route for it."""
    work = tmp_path_factory.mktemp("introspection")
    secret = work / "introspection-secret"
    secret.write_text(SIDECAR[1])
    config = yaml.safe_load(AUTHZ_DEMO.read_text())
    config["issuers"].append(
        {
            "type": "introspection",
            "issuer": provider.issuer,
            "introspection_endpoint": provider.introspection_endpoint,
            "client_id": SIDECAR[0],
            "client_secret_file": str(secret),
            "audiences": [RESOURCE],
            "client_id_as_subject": True,
            "timeout_seconds": 1.0,
        }
    )
    config["routes"].append(
        {
            "name": "orders",
            "methods": ["GET"],
            "path": "/api/v1/orders/{id}",
            "scopes": ["orders:read"],
        }
    )
    # The stack sets every path of the demo config (certificates, pepper) for itself.
    path = work / "authz.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_stack(work / "dev", authz_config=path) as edge:
        yield edge


def test_an_active_opaque_token_gets_in(opaque_edge: Edge, provider: Provider) -> None:
    token, _ = provider.token(scope="orders:read")
    reply = opaque_edge.client.request(ORDERS, token=token)
    identity = identity_at_upstream(reply)
    assert identity["x-auth-subject"] == "app"
    assert identity["x-auth-scopes"] == ["orders:read"]
    assert identity["x-auth-issuer"] == provider.issuer


def test_an_unknown_or_revoked_opaque_token_is_the_generic_401(
    opaque_edge: Edge, provider: Provider
) -> None:
    assert_denial(
        opaque_edge.client.request(ORDERS, token="not-a-real-token"), 401, "invalid_token"
    )
    token, _ = provider.token(scope="orders:read")
    provider.revoke(token)
    assert_denial(opaque_edge.client.request(ORDERS, token=token), 401, "invalid_token")


def test_jwts_still_go_to_the_jwt_issuer(opaque_edge: Edge) -> None:
    token = opaque_edge.mint("alice", scope="users:read")
    assert opaque_edge.client.request("/api/v1/users/alice", token=token).status == 200
    # A JWT-shaped token is never sent to the introspection endpoint, even a bad one.
    assert_denial(opaque_edge.client.request(ORDERS, token=token), 403, "insufficient_scope")
