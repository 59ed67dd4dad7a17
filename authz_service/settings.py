"""The authz sidecar's config file: one YAML document, validated once into frozen models.

server:      the shared gRPC server section (listen, tls/mtls, workers, reflection, ...)
issuers:     trusted token issuers (see authz_service.tokens.settings.IssuerSettings)
limits:      token size caps, checked before any crypto
identity:    header names and metadata claims emitted on allow
credentials: cookie names that count as a second credential
audit:       where decision lines go
reload:      file watching
health:      when gRPC health says SERVING (see authz_service.readiness)
mtls:        client certificates that stand for an identity (see authz_service.mtls)
api_keys:    API keys, hashed in Redis (see authz_service.apikeys)
introspection: an RFC 7662 endpoint for opaque bearer tokens (authz_service.introspection)
revocation:  revoked tokens and subjects in Redis (see authz_service.revocation)
mode:        enforce (default) or dry_run, for the default rule set
routes:      the policy (see authz_service.policy): the default rule set
rule_sets:   further rule sets, each chosen by Envoy context extensions (`select`)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from authz_service.apikeys.settings import ApiKeySettings
from authz_service.introspection.settings import IntrospectionIssuerSettings
from authz_service.mtls import MtlsSettings
from authz_service.policy.settings import Mode, PolicySettings, RouteSettings, RuleSetSettings
from authz_service.revocation.settings import RevocationSettings
from authz_service.tokens.settings import IssuerSettings, TokenLimits
from sidecar_runtime.config import Frozen, load_model
from sidecar_runtime.settings import ServerSettings
from sidecar_runtime.telemetry import TelemetrySettings

_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class IdentityHeaders(Frozen):
    """Request headers injected upstream on allow (and removed when the client sent them)."""

    subject: str = "x-auth-subject"
    issuer: str = "x-auth-issuer"
    scopes: str = "x-auth-scopes"
    roles: str = "x-auth-roles"
    client_id: str = "x-auth-client-id"

    @model_validator(mode="after")
    def _valid_names(self) -> IdentityHeaders:
        names = [self.subject, self.issuer, self.scopes, self.roles, self.client_id]
        for name in names:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a lowercase header name")
            if name in ("authorization", "host", "cookie") or name.startswith(("x-envoy-", ":")):
                raise ValueError(f"{name!r} cannot be used as an identity header")
        if len(set(names)) != len(names):
            raise ValueError("identity header names must differ")
        return self

    def all(self) -> tuple[str, ...]:
        return (self.subject, self.issuer, self.scopes, self.roles, self.client_id)


class IdentitySettings(Frozen):
    headers: IdentityHeaders = IdentityHeaders()
    # Dot paths of the claims that become the `tenant` and `plan` dynamic-metadata keys.
    tenant_claim: str = "tenant"
    plan_claim: str = "plan"
    realm: str = "edgeguard"
    # Sent upstream on allow and to the client on deny; also in metadata and audit lines.
    decision_id_header: str = "x-decision-id"

    @field_validator("decision_id_header")
    @classmethod
    def _decision_header_name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v) or v.startswith("x-envoy-"):
            raise ValueError(f"{v!r} is not a usable lowercase header name")
        return v

    @field_validator("realm")
    @classmethod
    def _quotable_realm(cls, v: str) -> str:
        if not v or any(c in v for c in '"\\\r\n') or not v.isprintable():
            raise ValueError("realm must be printable and contain no quote or backslash")
        return v


class CredentialSettings(Frozen):
    # A cookie of one of these names next to an Authorization header is ambiguous (400).
    cookie_names: frozenset[str] = frozenset({"access_token"})


class AuditSettings(Frozen):
    enabled: bool = True
    target: str = "stdout"  # stdout, stderr or a file path
    max_backlog: int = Field(default=100_000, ge=100)


class ReloadSettings(Frozen):
    watch: bool = True
    interval_seconds: float = Field(default=1.0, ge=0.1, le=3600)


class HealthSettings(Frozen):
    # NOT_SERVING while any issuer (true) or every issuer (false) has no usable key set.
    require_all_issuers: bool = True
    check_interval_seconds: float = Field(default=1.0, ge=0.05, le=60)


class AuthzSettings(Frozen):
    server: ServerSettings = ServerSettings(listen="127.0.0.1:9001")
    issuers: list[IssuerSettings] = Field(default_factory=list)
    limits: TokenLimits = TokenLimits()
    verified_token_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    identity: IdentitySettings = IdentitySettings()
    credentials: CredentialSettings = CredentialSettings()
    audit: AuditSettings = AuditSettings()
    reload: ReloadSettings = ReloadSettings()
    health: HealthSettings = HealthSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # Client certificates that stand for an identity on rules taking `mtls` (mtls.py).
    mtls: MtlsSettings | None = None
    # API keys: hashed in Redis, verified through a cache (docs/api-keys.md).
    api_keys: ApiKeySettings | None = None
    # Opaque bearer tokens checked at an OAuth2 introspection endpoint (RFC 7662); written
    # as an `issuers` entry with `type: introspection` (or here, directly).
    introspection: IntrospectionIssuerSettings | None = None
    # Revoked tokens and subjects, shared through Redis (docs/revocation.md).
    revocation: RevocationSettings | None = None
    # The default rule set (requests no rule set selects) and its mode; rule_sets come
    # first so that `routes` can be checked knowing whether there are any.
    mode: Mode = "enforce"
    rule_sets: list[RuleSetSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=list, validate_default=True)

    @field_validator("rule_sets")
    @classmethod
    def _distinct_rule_sets(cls, rule_sets: list[RuleSetSettings]) -> list[RuleSetSettings]:
        names: dict[str, int] = {}
        selects: dict[tuple[tuple[str, str], ...], int] = {}
        for i, rule_set in enumerate(rule_sets):
            if rule_set.name in names:
                first = names[rule_set.name]
                raise ValueError(
                    f"rule_sets[{i}].name: {rule_set.name!r} is used by rule_sets[{first}]"
                )
            names[rule_set.name] = i
            select = tuple(sorted(rule_set.select.items()))
            if select in selects:
                raise ValueError(
                    f"rule_sets[{i}].select: the same as rule_sets[{selects[select]}]'s; "
                    "that rule set would never be chosen"
                )
            selects[select] = i
        return rule_sets

    @field_validator("routes")
    @classmethod
    def _some_rules(cls, routes: list[RouteSettings], info: ValidationInfo) -> list[RouteSettings]:
        if not routes and not info.data.get("rule_sets"):
            raise ValueError("list at least one rule (or a rule set in rule_sets)")
        return routes

    @model_validator(mode="before")
    @classmethod
    def _introspection_issuer(cls, data: Any) -> Any:
        """An `issuers` entry with `type: introspection` is the introspection issuer
        (docs/introspection.md); at most one, kept apart from the JWT issuers."""
        if not isinstance(data, dict) or not isinstance(data.get("issuers"), list):
            return data
        entries = data["issuers"]
        opaque = [e for e in entries if isinstance(e, dict) and e.get("type") == "introspection"]
        if not opaque:
            return data
        if len(opaque) > 1 or data.get("introspection") is not None:
            raise ValueError("issuers: at most one issuer of type introspection")
        return {
            **data,
            "issuers": [e for e in entries if e is not opaque[0]],
            "introspection": opaque[0],
        }

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, v: list[IssuerSettings]) -> list[IssuerSettings]:
        seen: set[str] = set()
        for item in v:
            if item.issuer in seen:
                raise ValueError(f"issuer {item.issuer!r} is configured twice")
            seen.add(item.issuer)
        return v

    def policy(self) -> PolicySettings:
        """The default rule set."""
        return PolicySettings(routes=self.routes, mode=self.mode)


def load_settings(path: str | Path) -> AuthzSettings:
    """Read and validate the config file; raises ConfigError(file, key, reason)."""
    return load_model(AuthzSettings, path)
