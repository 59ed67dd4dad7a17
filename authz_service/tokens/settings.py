"""Config models for token verification: trusted issuers, their key sources, size caps.

Validated once at load (ARCHITECTURE §5 "Config"); the verifier precompiles what the hot
path needs from them. Error messages are ValueErrors that `sidecar_runtime.config` turns
into `file: key: reason` lines.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sidecar_runtime.config import Frozen, resolve_path

# Asymmetric algorithms only. `none` and HS* are not representable, so no config can allow
# them (RFC 8725 §3.1: "each key MUST be used with exactly one algorithm"; a shared-secret
# alg next to a public key is the classic confusion attack).
JwsAlgorithm = Literal[
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
]


def check_http_url(value: str, what: str) -> str:
    """Return `value` if it is an absolute http(s) URL with a host, else raise ValueError."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL, got {value!r}")
    return value


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_http(url: str) -> bool:
    """Is this a plain-http URL to a host off this machine (keys anyone on the path can swap)?"""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")


def check_transport(url: str, what: str, *, allow_insecure_http: bool) -> str:
    """`url` if it is https, loopback http, or any http with the insecure switch on."""
    check_http_url(url, what)
    if insecure_http(url) and not allow_insecure_http:
        raise ValueError(
            f"{what} {url!r} is plain http:// to a host that is not loopback: anyone on the "
            "path could replace the keys. Use https://, or set allow_insecure_http: true"
        )
    return url


class JwksSettings(Frozen):
    """How a remote (or file) JWKS is cached, refreshed and bounded. Times in seconds."""

    ttl_seconds: float = Field(default=300, gt=0)
    # Bounds for a `Cache-Control: max-age` from the IdP: too short would hammer it, too long
    # would keep a revoked key alive.
    min_ttl_seconds: float = Field(default=60, gt=0)
    max_ttl_seconds: float = Field(default=86400, gt=0)
    # Unknown-kid refetches (tokens/refetch.py): at least `cooldown` apart, at most
    # `refetches_per_minute` (bucket of `refetch_burst`), and a kid a refetch showed absent
    # triggers none for `absent_seconds`. Fetches per minute stay small under a flood of
    # random kids, and a rotated-in key is picked up within seconds all the same.
    unknown_kid_cooldown_seconds: float = Field(default=2, ge=0, le=300)
    unknown_kid_refetches_per_minute: float = Field(default=12, gt=0, le=600)
    unknown_kid_refetch_burst: int = Field(default=4, ge=1, le=100)
    unknown_kid_absent_seconds: float = Field(default=30, ge=0, le=3600)
    # One deadline for a whole fetch (proxy, TLS handshake, redirects, every body byte),
    # not per read: an IdP trickling a byte a second cannot hold a fetch longer than this.
    fetch_timeout_seconds: float = Field(default=3, gt=0, le=120)
    # How long one Check may wait for keys (an unknown kid's refetch, or a first load that
    # may be discovery plus a JWKS fetch). The fetch goes on in the background; the Check
    # answers with what is known by then. Keep it under Envoy's ext_authz timeout (0.2 s).
    check_wait_seconds: float = Field(default=0.15, gt=0, le=60)
    max_bytes: int = Field(default=262144, gt=0)
    retry_seconds: float = Field(default=10, gt=0)
    # jwks_file only: how often the file's mtime is looked at.
    file_check_seconds: float = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _ordered_bounds(self) -> JwksSettings:
        if self.min_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("min_ttl_seconds must not exceed max_ttl_seconds")
        if not self.min_ttl_seconds <= self.ttl_seconds <= self.max_ttl_seconds:
            raise ValueError("ttl_seconds must lie between min_ttl_seconds and max_ttl_seconds")
        return self


class IssuerSettings(Frozen):
    """One trusted token issuer: who it is, what it may sign with, where its keys are."""

    # Plain http:// to a host that is not loopback lets anyone on the path swap the keys.
    # Refused unless this is set (and a warning is logged at every start and reload).
    # First, so the URL fields' validators below can read it.
    allow_insecure_http: bool = False
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    algorithms: tuple[JwsAlgorithm, ...] = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    discovery: bool = False
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    max_token_age_seconds: int | None = Field(default=None, gt=0)
    required_typ: str | None = None
    roles_claim: str = "roles"
    client_id_claims: tuple[str, ...] = ("client_id", "azp")
    jwks: JwksSettings = JwksSettings()
    # PEM bundle of the CA(s) that sign the IdP's TLS certificate (a private CA). It
    # replaces the system trust store for this issuer's fetches. Relative to the config.
    ca_file: Path | None = None

    @field_validator("audiences", "client_id_claims")
    @classmethod
    def _non_empty_strings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v for v in values):
            raise ValueError("entries must be non-empty strings")
        return values

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        insecure_ok = bool(info.data.get("allow_insecure_http"))
        return check_transport(value, "jwks_url", allow_insecure_http=insecure_ok)

    @field_validator("issuer")
    @classmethod
    def _secure_issuer(cls, value: str, info: ValidationInfo) -> str:
        # The issuer URL is where discovery fetches from; an http one is refused even with
        # a jwks_url, since switching to discovery later must not silently go plain-text.
        if urlsplit(value).scheme == "http":
            insecure_ok = bool(info.data.get("allow_insecure_http"))
            check_transport(value, "issuer", allow_insecure_http=insecure_ok)
        return value

    @field_validator("ca_file")
    @classmethod
    def _usable_ca_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return usable_ca_file(value, info)

    @field_validator("required_typ")
    @classmethod
    def _typ_given(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("required_typ must be a non-empty media type such as 'at+jwt'")
        return value

    @field_validator("roles_claim")
    @classmethod
    def _dot_path(cls, value: str) -> str:
        return roles_claim_path(value)

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        given = [self.jwks_file is not None, self.jwks_url is not None, self.discovery]
        if sum(given) != 1:
            raise ValueError("exactly one of jwks_file, jwks_url, discovery is required")
        if self.discovery:
            # OIDC Discovery §4: the document lives under the issuer URL, so it must be one.
            check_http_url(self.issuer, "issuer (with discovery: true)")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms must not repeat")
        return self


def usable_ca_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A `ca_file` resolved against the config file's directory, and loaded once now: a
    file that cannot be used fails at load, not at the first fetch."""
    path = resolve_path(value, info)
    if path is not None:
        tls_context(path)
    return path


def roles_claim_path(value: str) -> str:
    """A `roles_claim`: a dot path into the claims."""
    if not value or any(not part for part in value.split(".")):
        raise ValueError("roles_claim must be a dot path such as 'realm_access.roles'")
    return value


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked, TLS 1.2 or newer; `ca_file` replaces the system
    trust store. Raises ValueError if the file holds no usable certificate."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ValueError(f"cannot use {ca_file} as a CA bundle: {reason}") from None
    if ca_file is not None and not context.get_ca_certs():
        raise ValueError(f"{ca_file} holds no CA certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TokenLimits(Frozen):
    """Size caps checked before any decoding or crypto (ARCHITECTURE §5a).

    All caps count ENCODED characters: the whole compact token, and each of its three
    base64url segments as they appear in the token. Checking the encoded form means nothing
    is decoded before it is known to be small; decoded sizes are about 3/4 of these.
    """

    max_token_bytes: int = Field(default=8192, gt=0)
    max_header_bytes: int = Field(default=2048, gt=0)
    max_payload_bytes: int = Field(default=6144, gt=0)
    max_signature_bytes: int = Field(default=1024, gt=0)
