"""mTLS client identity: certificates Envoy verified, mapped to principals by name."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from authz_service.mtls import MtlsSettings, PeerCertificate, principal_for, read_certificate
from authz_service.policy import RequestFacts
from devstack.pki import issue_certificate, make_ca
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError
from tests.authz_service.test_pipeline_requests import REPORTS, authorizer, decide, request


@cache
def _ca() -> Any:
    return make_ca()


def encoded_cert(*, cn: str = "client", sans: tuple[str, ...] = (), uri: str | None = None) -> str:
    """A client certificate as Envoy forwards it: URL-encoded PEM."""
    ca_cert, ca_key = _ca()
    pem, _key = issue_certificate(
        common_name=cn,
        ca_cert=ca_cert,
        ca_key=ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=sans,
        uri=uri,
    )
    return quote(pem.decode())


REPORTER = "spiffe://edgeguard.dev/ns/demo/sa/reporter"
MTLS = {
    "identities": [
        {"spiffe_id": "spiffe://edgeguard.dev/ns/demo/sa/*", "roles": ["analyst"]},
        {"dns": "*.jobs.example.com", "subject": "batch", "scopes": ["reports:read"]},
        {"subject_dn": "CN=legacy", "subject": "legacy-client"},
    ]
}


def settings(raw: dict[str, Any] = MTLS) -> MtlsSettings:
    return validate_model(MtlsSettings, raw, "authz.yaml")


def test_the_certificate_s_names_are_read() -> None:
    cert = read_certificate(encoded_cert(cn="svc", sans=("a.example.com",), uri=REPORTER))
    assert cert == PeerCertificate((REPORTER,), ("a.example.com",), "CN=svc")
    assert cert.spiffe_id == REPORTER
    assert read_certificate("") is None
    assert read_certificate(quote("-----BEGIN CERTIFICATE-----\nnot one\n")) is None


@pytest.mark.parametrize(
    ("cert", "subject"),
    [
        (PeerCertificate((REPORTER,), (), "CN=x"), REPORTER),
        (PeerCertificate((), ("nightly.jobs.example.com",), "CN=x"), "batch"),
        (PeerCertificate((), (), "CN=legacy"), "legacy-client"),
        # `*` is one path segment or one DNS label, never more.
        (PeerCertificate(("spiffe://edgeguard.dev/ns/demo/sa/a/b",), (), "CN=x"), None),
        (PeerCertificate(("spiffe://edgeguard.dev/ns/demo/sa/",), (), "CN=x"), None),
        (PeerCertificate((), ("a.b.jobs.example.com",), "CN=x"), None),
        (PeerCertificate((), ("jobs.example.com",), "CN=x"), None),
        # An SVID has one URI SAN: a second one makes it no SPIFFE ID at all.
        (PeerCertificate((REPORTER, "https://x"), (), "CN=x"), None),
        (PeerCertificate((), (), "CN=legacy,O=Other"), None),
    ],
)
def test_identities_match_by_name(cert: PeerCertificate, subject: str | None) -> None:
    principal = principal_for(cert, settings())
    assert (principal.subject if principal else None) == subject


def test_the_principal_carries_the_identity_s_scopes_and_roles() -> None:
    principal = principal_for(PeerCertificate((REPORTER,), (), "CN=x"), settings())
    assert principal is not None
    assert (principal.issuer, principal.roles, principal.algorithm) == (
        "mtls",
        frozenset({"analyst"}),
        "mtls",
    )
    assert principal.claims["cert_name"] == REPORTER


@pytest.mark.parametrize(
    "identity",
    [
        {"spiffe_id": "https://not-spiffe"},
        {"spiffe_id": REPORTER, "dns": "a.example.com"},
        {"roles": ["x"]},
        {"dns": "a.*.example.com"},
    ],
)
def test_bad_identities_are_config_errors(identity: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        settings({"identities": [identity]})


# -- through the pipeline ------------------------------------------------------------------

INTERNAL = {**REPORTS, "credentials": ["mtls"]}


def _with_cert(path: str, cert: str) -> RequestFacts:
    return replace(request(path), peer_certificate=cert)


def test_a_certificate_stands_for_its_identity_on_a_rule_that_takes_mtls() -> None:
    authz = authorizer({"mtls": MTLS, "routes": [INTERNAL]})
    decided = decide(authz, _with_cert("/reports/1", encoded_cert(uri=REPORTER)))
    assert (decided.allowed, decided.principal.subject if decided.principal else None) == (
        True,
        REPORTER,
    )
    unknown = decide(authz, _with_cert("/reports/1", encoded_cert(uri="spiffe://other/x")))
    assert (unknown.status, unknown.reason) == (403, "unknown_certificate")
    # A known identity still needs the rule's roles.
    batch = decide(authz, _with_cert("/reports/1", encoded_cert(sans=("n.jobs.example.com",))))
    assert (batch.status, batch.reason) == (403, "role_denied")
    assert decide(authz, request("/reports/1")).status == 401  # no certificate
    assert decide(authz, request("/reports/1"), "bob-analyst").reason == "credential_not_accepted"


def test_a_certificate_counts_only_on_rules_that_take_mtls() -> None:
    authz = authorizer({"mtls": MTLS, "routes": [REPORTS]})
    decided = decide(authz, _with_cert("/reports/1", encoded_cert(uri=REPORTER)))
    assert (decided.status, decided.reason) == (401, "no_credentials")
    # Where both are taken, a presented token is the identity; the certificate is not read.
    both = authorizer({"mtls": MTLS, "routes": [{**REPORTS, "credentials": ["jwt", "mtls"]}]})
    with_token = decide(both, _with_cert("/reports/1", encoded_cert(uri=REPORTER)), "alice-reader")
    assert (with_token.reason, with_token.principal.subject if with_token.principal else "") == (
        "role_denied",
        "alice",
    )
