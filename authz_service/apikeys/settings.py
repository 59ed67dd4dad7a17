"""ApiKeySettings: the `api_keys:` section of the authz config file.

    api_keys:
      redis_url: redis://127.0.0.1:6390/0     # or rediss://host:port/0?ssl_ca_certs=ca.pem
                                               # (&ssl_certfile=...&ssl_keyfile=...)
      password_env: null                       # env var holding Redis's password
      redis_prefix: "apikey:"                  # records are <redis_prefix><key id>
      channel: "apikey:events"                 # revoke/rotate/create publish key ids here
      key_prefix: eg_live                      # the key text's product_environment
      issuer: apikey                           # Principal.issuer / claim `iss`
      header: authorization                    # `Authorization: ApiKey <key>`; or a header
                                               # of its own whose whole value is the key
      peppers:                                 # first: new keys; all: verification
        - {id: p2, file: /run/secrets/apikey-pepper-2}
        - {id: p1, env: APIKEY_PEPPER_1}
      default_ttl_days: 90
      cache_seconds: 30
      ceiling:                                 # what a key may be minted with, at most
        max_scopes: [users:read, users:write]
        max_roles: [service]
        max_ttl_days: 365

The authz service's own settings embed this model; the `apikey` CLI reads just this
section (`load_api_key_settings`), so it needs no issuer or route to be configured.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from authz_service.apikeys.cache import CacheLimits
from authz_service.apikeys.format import check_prefix
from authz_service.apikeys.hashing import Pepper, PepperRing
from authz_service.apikeys.records import check_token
from sidecar_runtime.config import Frozen, read_yaml, resolve_path, validate_model
from sidecar_runtime.errors import ConfigError

SECTION = "api_keys"
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_PEPPER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_REDIS_NAME = re.compile(r"^[^{}\s]{1,64}$")


class PepperSettings(Frozen):
    """One pepper: its id (stored with each hash) and where its bytes are (a file, or an
    environment variable). At least 32 bytes; a file's trailing newline is not part of it."""

    id: str
    file: Path | None = None
    env: str | None = None

    _relative_to_config = field_validator("file")(resolve_path)

    @model_validator(mode="after")
    def _one_source(self) -> PepperSettings:
        if not _PEPPER_ID.match(self.id):
            raise ValueError("id must be 1-64 letters, digits, '.', '_' or '-'")
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file or env")
        return self

    def read(self) -> Pepper:
        """The pepper's bytes, read now; ValueError (never showing them) if unusable."""
        if self.file is not None:
            try:
                secret = self.file.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise ValueError(f"cannot read {self.file}: {exc.strerror}") from None
        else:
            value = os.environ.get(self.env or "")
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            secret = value.encode("utf-8")
        return Pepper(self.id, secret)


class CeilingSettings(Frozen):
    """The most a key may be minted with: scopes and roles outside these allow-lists are
    refused at `create` (no privilege escalation through key creation). Empty lists
    (the default) allow keys with no scopes and no roles only."""

    max_scopes: frozenset[str] = frozenset()
    max_roles: frozenset[str] = frozenset()
    max_ttl_days: int = Field(default=365, ge=1, le=3650)

    @field_validator("max_scopes", "max_roles")
    @classmethod
    def _tokens(cls, values: frozenset[str]) -> frozenset[str]:
        for value in values:
            check_token("scope or role", value)
        return values


class ApiKeySettings(Frozen):
    redis_url: str
    password_env: str | None = None
    timeout_seconds: float = Field(default=0.1, gt=0, le=10)
    redis_prefix: str = "apikey:"
    channel: str = "apikey:events"
    key_prefix: str = "eg_live"
    issuer: str = Field(default="apikey", min_length=1, max_length=256)
    header: str = "authorization"
    peppers: list[PepperSettings] = Field(min_length=1)
    default_ttl_days: int = Field(default=90, ge=1, le=3650)
    cache_seconds: float = Field(default=30.0, ge=0, le=300)
    cache_size: int = Field(default=10_000, ge=1, le=10_000_000)
    negative_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    negative_cache_size: int = Field(default=10_000, ge=1, le=10_000_000)
    ceiling: CeilingSettings = CeilingSettings()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return v

    @field_validator("redis_prefix", "channel")
    @classmethod
    def _redis_name(cls, v: str) -> str:
        if not _REDIS_NAME.match(v):
            raise ValueError("must be 1-64 characters, no braces or whitespace")
        return v

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, v: str) -> str:
        return check_prefix(v)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _HEADER_NAME.match(v) or v in ("host", "cookie") or v.startswith("x-envoy-"):
            raise ValueError(f"{v!r} is not a usable lowercase header name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ApiKeySettings:
        if len({p.id for p in self.peppers}) != len(self.peppers):
            raise ValueError("peppers: ids must differ")
        if self.default_ttl_days > self.ceiling.max_ttl_days:
            raise ValueError("default_ttl_days is over ceiling.max_ttl_days")
        return self

    def cache_limits(self) -> CacheLimits:
        return CacheLimits(
            max_entries=self.cache_size,
            cache_seconds=self.cache_seconds,
            max_negative_entries=self.negative_cache_size,
            negative_seconds=self.negative_cache_seconds,
        )

    def redis_key(self, key_id: str) -> str:
        return f"{self.redis_prefix}{key_id}"


def load_peppers(settings: ApiKeySettings, path: str | Path) -> PepperRing:
    """Read every configured pepper now; ConfigError naming the one that is unusable."""
    peppers = []
    for index, pepper in enumerate(settings.peppers):
        try:
            peppers.append(pepper.read())
        except ValueError as exc:
            raise ConfigError(path, f"{SECTION}.peppers[{index}]", str(exc)) from None
    return PepperRing(peppers)


def load_api_key_settings(path: str | Path) -> ApiKeySettings:
    """The `api_keys:` section of an authz config file, validated (other sections are
    not read); ConfigError(file, key, reason) if it is missing or wrong."""
    data: Any = read_yaml(path)
    if not isinstance(data, dict) or data.get(SECTION) is None:
        raise ConfigError(path, SECTION, "missing: the file configures no API keys")
    try:
        return validate_model(ApiKeySettings, data[SECTION], path)
    except ConfigError as exc:
        key = SECTION if exc.key == "<root>" else f"{SECTION}.{exc.key}"
        raise ConfigError(path, key, exc.reason) from None
