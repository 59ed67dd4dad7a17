"""mTLS client identity: the certificate Envoy verified, mapped to a Principal.

Envoy's listener asks clients for a certificate and verifies it against its client CA
bundle (docs/edge.md); with `include_peer_certificate` it hands ext_authz the verified
leaf as URL-encoded PEM. A certificate says who the client is only through a configured
identity: its SPIFFE ID, a URI SAN, a DNS SAN or its subject, exact or by pattern, each
with the subject, scopes and roles the Principal gets. A verified certificate that no
identity names is refused (403, `unknown_certificate`): being signed by the CA is not
enough, since the same CA may sign servers and other clients.

    mtls:
      issuer: mtls                               # Principal.issuer (token.iss in CEL)
      identities:
        - spiffe_id: spiffe://edgeguard.dev/ns/demo/sa/*    # * = one path segment
          scopes: [reports:read]
          roles: [service]
        - dns: "*.jobs.example.com"              # * = one DNS label
          subject: batch-jobs                    # the Principal's subject (default: the ID)
        - subject_dn: "CN=legacy-client,O=Example"

Pure but for parsing the PEM (cryptography), remembered per certificate text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import unquote

from cryptography import x509
from pydantic import Field, StrictStr, field_validator, model_validator

from authz_service.principal import Principal
from sidecar_runtime.config import Frozen

_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._*-]+)*")
_NAME_KEYS = ("spiffe_id", "uri", "dns", "subject_dn")


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a verified client certificate says about its holder."""

    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    subject_dn: str

    @property
    def spiffe_id(self) -> str | None:
        # A SPIFFE X.509-SVID has exactly one URI SAN, the SPIFFE ID.
        spiffe = [uri for uri in self.uris if uri.startswith("spiffe://")]
        return spiffe[0] if len(spiffe) == 1 and len(self.uris) == 1 else None


@lru_cache(maxsize=1024)
def read_certificate(encoded_pem: str) -> PeerCertificate | None:
    """The certificate Envoy forwarded (`source.certificate`, URL-encoded PEM), or None
    when there is none or it cannot be read (which then counts as no certificate)."""
    if not encoded_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(unquote(encoded_pem).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(sans.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(name.lower() for name in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = (), ()
    return PeerCertificate(uris, dns, cert.subject.rfc4514_string())


class MtlsIdentity(Frozen):
    """One identity: exactly one of the name keys, and what its Principal gets."""

    spiffe_id: StrictStr | None = None
    uri: StrictStr | None = None
    dns: StrictStr | None = None
    subject_dn: StrictStr | None = None
    subject: StrictStr | None = None  # the Principal's subject; default: the matched name
    scopes: tuple[StrictStr, ...] = ()
    roles: tuple[StrictStr, ...] = ()
    tenant: StrictStr | None = None
    plan: StrictStr | None = None

    @field_validator("spiffe_id")
    @classmethod
    def _spiffe(cls, value: str | None) -> str | None:
        if value is not None and not _SPIFFE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a SPIFFE ID pattern (spiffe://trust-domain/path, "
                "`*` standing for one whole path segment)"
            )
        return value

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: str | None) -> str | None:
        if value is None:
            return None
        labels = value.lower().split(".")
        if len(labels) < 2 or any(not label for label in labels) or "*" in value[1:]:
            raise ValueError(f"{value!r}: a DNS name, or `*.` and a domain")
        return value.lower()

    @model_validator(mode="after")
    def _one_name(self) -> MtlsIdentity:
        given = [key for key in _NAME_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_NAME_KEYS)}")
        return self

    def name_in(self, cert: PeerCertificate) -> str | None:
        """The certificate's name this identity matches, or None."""
        if self.spiffe_id is not None:
            spiffe = cert.spiffe_id
            return spiffe if spiffe and _path_match(self.spiffe_id, spiffe) else None
        if self.uri is not None:
            return next((u for u in cert.uris if _path_match(self.uri, u)), None)
        if self.dns is not None:
            return next((d for d in cert.dns_names if _dns_match(self.dns, d)), None)
        return cert.subject_dn if cert.subject_dn == self.subject_dn else None


class MtlsSettings(Frozen):
    """The `mtls:` section: the client certificates that stand for an identity."""

    issuer: StrictStr = "mtls"
    identities: list[MtlsIdentity] = Field(min_length=1)


def _path_match(pattern: str, value: str) -> bool:
    # `*` is one whole path segment, never a `/`: spiffe://td/ns/*/sa/x cannot reach
    # spiffe://td/ns/a/b/sa/x. Everything else is compared exactly (case-sensitive path).
    if "*" not in pattern:
        return value == pattern
    wanted, got = pattern.split("/"), value.split("/")
    return len(wanted) == len(got) and all(
        w == g or (w == "*" and g != "") for w, g in zip(wanted, got, strict=True)
    )


def _dns_match(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and dot == "." and rest == pattern[2:]
    return name == pattern


def principal_for(
    cert: PeerCertificate, settings: MtlsSettings, identities: Sequence[MtlsIdentity] | None = None
) -> Principal | None:
    """The Principal of the first identity that names `cert`, or None (unknown)."""
    for identity in identities if identities is not None else settings.identities:
        name = identity.name_in(cert)
        if name is None:
            continue
        subject = identity.subject or name
        claims: dict[str, object] = {"sub": subject, "iss": settings.issuer, "cert_name": name}
        if identity.tenant is not None:
            claims["tenant"] = identity.tenant
        if identity.plan is not None:
            claims["plan"] = identity.plan
        claims["scope"] = " ".join(identity.scopes)
        return Principal(
            subject=subject,
            issuer=settings.issuer,
            audiences=(),
            scopes=frozenset(identity.scopes),
            roles=frozenset(identity.roles),
            claims=MappingProxyType(claims),
            expires_at=float("inf"),
            algorithm="mtls",
        )
    return None
