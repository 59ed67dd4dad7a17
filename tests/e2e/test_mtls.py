"""mTLS client identity through the real Envoy: the listener verifies the client
certificate against the dev CA, and the policy maps it to an identity (config/authz/demo.yaml,
`mtls`): the demo service's certificate gets in on the service-to-service route, a
certificate of the same CA that no identity names is refused, no certificate is a 401."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from devstack.pki import SERVICE_SPIFFE_ID, issue_certificate
from tests.e2e.conftest import Edge, assert_denial, identity_at_upstream

pytestmark = pytest.mark.e2e

INTERNAL = "/api/v1/internal/reports"


def _context_with(edge: Edge, cert: Path, key: Path):  # type: ignore[no-untyped-def]
    context = edge.client.context()
    context.load_cert_chain(str(cert), str(key))
    return context


def test_the_demo_service_s_certificate_gets_in(edge: Edge) -> None:
    pki = edge.pki
    reply = edge.client.request(
        INTERNAL, context=_context_with(edge, pki.service_cert, pki.service_key)
    )
    assert reply.status == 200, reply.body
    identity = identity_at_upstream(reply)
    assert identity["x-auth-subject"] == SERVICE_SPIFFE_ID
    assert identity["x-auth-issuer"] == "mtls"
    assert identity["x-auth-roles"] == ["service"]


def test_without_a_certificate_the_route_is_401(edge: Edge) -> None:
    assert_denial(edge.client.request(INTERNAL), 401, "unauthorized")


def test_a_token_is_not_a_credential_on_an_mtls_route(edge: Edge) -> None:
    token = edge.mint("alice", roles=["service"])
    assert_denial(edge.client.request(INTERNAL, token=token), 401, "invalid_token")


def test_a_certificate_no_identity_names_is_403(edge: Edge, tmp_path: Path) -> None:
    # Signed by the very CA the listener trusts, with a SPIFFE ID outside the demo's.
    pki = edge.pki
    ca_cert = load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((pki.root / "ca-key.pem").read_bytes(), None)
    cert_pem, key_pem = issue_certificate(
        common_name="stranger",
        ca_cert=ca_cert,
        ca_key=ca_key,  # type: ignore[arg-type]
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=(),
        uri="spiffe://edgeguard.dev/ns/other/sa/stranger",
    )
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    reply = edge.client.request(
        INTERNAL, context=_context_with(edge, tmp_path / "c.pem", tmp_path / "k.pem")
    )
    assert_denial(reply, 403, "forbidden")
    assert "stranger" not in json.dumps(reply.headers)
