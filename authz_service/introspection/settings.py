"""IntrospectionIssuerSettings: one issuer whose opaque tokens are checked at its RFC 7662
introspection endpoint. Validated at load like the JWT issuers (authz_service.tokens.settings).

    - type: introspection
      issuer: https://idp.example.com             # the expected `iss` when the answer has one
      introspection_endpoint: https://idp.example.com/oauth2/introspect
      client_id: authz-sidecar                    # HTTP Basic (client_secret_basic)
      client_secret_file: /run/secrets/introspection-secret   # or client_secret_env: VAR
      ca_file: idp-ca.pem                         # private CA; default: the system store
      audiences: [https://api.example.com]
      timeout_seconds: 1.0
      max_cache_seconds: 60                       # active answers: until min(exp, now + this)
      negative_cache_seconds: 5                   # refusals (active: false, wrong aud, ...)
      cache_entries: 10000
      breaker_failures: 5                         # consecutive failures that open the breaker
      breaker_open_seconds: 5
      max_in_flight: 64                           # distinct tokens being introspected at once
      roles_claim: roles
      client_id_as_subject: false                 # client-credentials tokens have no `sub`
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from authz_service.tokens.settings import check_transport, roles_claim_path, usable_ca_file
from sidecar_runtime.config import Frozen, resolve_path

# RFC 7662 §4: the endpoint sees every token and our client secret; plain http is only
# acceptable when the traffic never leaves this machine. No switch turns this off.
_WHAT = "introspection_endpoint"


class IntrospectionIssuerSettings(Frozen):
    """One issuer of opaque tokens and how to ask it about them. Times in seconds."""

    type: Literal["introspection"] = "introspection"
    issuer: str = Field(min_length=1)
    introspection_endpoint: str
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    ca_file: Path | None = None
    audiences: tuple[str, ...] = Field(min_length=1)
    # Some IdPs answer without `aud` for tokens they issued to no particular resource.
    # Off by default: an answer that does not name us is not a token for us.
    allow_missing_audience: bool = False
    timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    max_cache_seconds: float = Field(default=60, ge=1, le=3600)
    negative_cache_seconds: float = Field(default=5, ge=0, le=300)
    cache_entries: int = Field(default=10_000, ge=1, le=1_000_000)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_open_seconds: float = Field(default=5, gt=0, le=600)
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    max_response_bytes: int = Field(default=65_536, ge=1024, le=4_194_304)
    max_token_chars: int = Field(default=4096, ge=16, le=65_536)
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    roles_claim: str = "roles"
    client_id_as_subject: bool = False
    # RFC 7662 §2.2 `token_type`, compared case-insensitively when the answer has one.
    accepted_token_types: tuple[str, ...] = ("Bearer",)

    _relative_to_config = field_validator("client_secret_file")(resolve_path)

    @field_validator("introspection_endpoint")
    @classmethod
    def _secure_endpoint(cls, value: str) -> str:
        check_transport(value, _WHAT, allow_insecure_http=False)
        parts = urlsplit(value)
        if parts.username is not None or parts.fragment:
            raise ValueError(f"{_WHAT} must not carry credentials or a fragment")
        return value

    @field_validator("ca_file")
    @classmethod
    def _usable_ca_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return usable_ca_file(value, info)

    @field_validator("audiences", "accepted_token_types")
    @classmethod
    def _non_empty_strings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v for v in values):
            raise ValueError("entries must be non-empty strings")
        return values

    @field_validator("roles_claim")
    @classmethod
    def _dot_path(cls, value: str) -> str:
        return roles_claim_path(value)

    @model_validator(mode="after")
    def _one_secret_source(self) -> IntrospectionIssuerSettings:
        given = [self.client_secret_file is not None, self.client_secret_env is not None]
        if sum(given) != 1:
            raise ValueError("exactly one of client_secret_file, client_secret_env is required")
        return self

    def read_client_secret(self) -> str:
        """The client secret from its file (one trailing newline dropped) or environment
        variable. Raises ValueError naming the source (never the value) if it is unusable."""
        if self.client_secret_file is not None:
            try:
                text = self.client_secret_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"client_secret_file {self.client_secret_file}: {exc}") from None
            secret, where = text.removesuffix("\n"), f"file {self.client_secret_file}"
        else:
            assert self.client_secret_env is not None
            secret = os.environ.get(self.client_secret_env, "")
            where = f"environment variable {self.client_secret_env}"
        if not secret:
            raise ValueError(f"the introspection client secret ({where}) is empty or missing")
        return secret
