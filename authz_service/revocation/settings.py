"""The `revocation:` section of the authz config file.

revocation:
  redis_url: redis://127.0.0.1:6390/0   redis:// or rediss:// (standalone Redis)
  username: null
  password_env: null                  name of an environment variable holding the password
  tls_ca_file: null                   rediss://: the CA that signed Redis's certificate
  tls_cert_file: null                 with tls_key_file: a client certificate for Redis
  tls_key_file: null
  key_prefix: "revoked:"
  channel: "revoked:events"           pub/sub channel announcing each new revocation
  sync_interval_seconds: 0.5          version check (full reload on change); at most 0.9,
                                      so a lost event still reaches every replica in 1 s
  full_resync_seconds: 30             a full reload even when the version did not move
                                      (a restarted Redis can reach an old version again)
  call_timeout_seconds: 0.5           each Redis call
  max_token_lifetime_seconds: 86400   the longest life of any accepted token: the TTL of a
                                      revoked jti, and how long a subject entry outlives
                                      its revoked_before
  on_unavailable: keep_last           keep_last | fail_closed (see docs/revocation.md)
  fail_closed_after_seconds: 5        fail_closed: refuse every token once the list is
                                      this stale
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sidecar_runtime.config import Frozen, read_yaml, resolve_path, validate_model
from sidecar_runtime.errors import ConfigError

SECTION = "revocation"


class RevocationSettings(Frozen):
    redis_url: str = Field(pattern=r"^rediss?://")
    username: str | None = None
    password_env: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    key_prefix: str = Field(default="revoked:", min_length=1, max_length=64)
    channel: str = Field(default="revoked:events", min_length=1, max_length=128)
    sync_interval_seconds: float = Field(default=0.5, gt=0, le=0.9)
    full_resync_seconds: float = Field(default=30.0, gt=0, le=3_600)
    call_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    max_token_lifetime_seconds: int = Field(default=86_400, ge=60, le=400 * 86_400)
    on_unavailable: Literal["keep_last", "fail_closed"] = "keep_last"
    fail_closed_after_seconds: float = Field(default=5.0, gt=0, le=3_600)

    _relative_to_config = field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")(
        resolve_path
    )

    @model_validator(mode="after")
    def _tls_files(self) -> RevocationSettings:
        tls_files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(tls_files) and not self.redis_url.startswith("rediss://"):
            raise ValueError("tls_* files need a rediss:// redis_url")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name} {value} does not exist")
        return self


def load_revocation_settings(path: str | Path) -> RevocationSettings:
    """The `revocation:` section of the authz config at `path` (a located ConfigError if
    it is missing or invalid)."""
    data = read_yaml(path)
    section = data.get(SECTION) if isinstance(data, dict) else None
    if section is None:
        raise ConfigError(path, SECTION, "missing: revocation needs its own section")
    try:
        return validate_model(RevocationSettings, section, path)
    except ConfigError as exc:
        key = SECTION if exc.key == "<root>" else f"{SECTION}.{exc.key}"
        raise ConfigError(path, key, exc.reason) from None


def configured_issuers(path: str | Path) -> list[str]:
    """The `issuers[].issuer` names of the authz config at `path` (the CLI refuses to
    revoke for an issuer that is not one of them: a typo would revoke nothing)."""
    data: Any = read_yaml(path)
    issuers = data.get("issuers") if isinstance(data, dict) else None
    if not isinstance(issuers, list):
        return []
    return [
        i["issuer"] for i in issuers if isinstance(i, dict) and isinstance(i.get("issuer"), str)
    ]
