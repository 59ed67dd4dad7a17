"""Config models for token verification: trusted issuers, their key sources, size caps.

Validated once at load (ARCHITECTURE §5 "Config"); the verifier precompiles what the hot
path needs from them. Error messages are ValueErrors that `sidecar_runtime.config` turns
into `file: key: reason` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from sidecar_runtime.config import Frozen

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


class JwksSettings(Frozen):
    """How a remote (or file) JWKS is cached, refreshed and bounded. Times in seconds."""

    ttl_seconds: float = Field(default=300, gt=0)
    # Bounds for a `Cache-Control: max-age` from the IdP: too short would hammer it, too long
    # would keep a revoked key alive.
    min_ttl_seconds: float = Field(default=60, gt=0)
    max_ttl_seconds: float = Field(default=86400, gt=0)
    unknown_kid_cooldown_seconds: float = Field(default=30, ge=0)
    fetch_timeout_seconds: float = Field(default=3, gt=0)
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

    @field_validator("audiences", "client_id_claims")
    @classmethod
    def _non_empty_strings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v for v in values):
            raise ValueError("entries must be non-empty strings")
        return values

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, "jwks_url")

    @field_validator("required_typ")
    @classmethod
    def _typ_given(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("required_typ must be a non-empty media type such as 'at+jwt'")
        return value

    @field_validator("roles_claim")
    @classmethod
    def _dot_path(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError("roles_claim must be a dot path such as 'realm_access.roles'")
        return value

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
