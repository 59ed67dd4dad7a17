"""The `routes:` section of the authz config, as validated pydantic models.

Each check that concerns one value lives on that value, so pydantic locates the error
precisely (`routes[3].methods[1]: method 'get' must be uppercase ...`). Checks across
rules (unique names, conflicting match keys) and CEL compilation happen in
`CompiledPolicy.compile`, which raises the same located `ConfigError`.

Example rule:

    - name: get-user
      methods: [GET]                 # or ["*"]; HEAD does not imply GET
      path: /api/v1/users/{user_id}
      hosts: [api.example.com]       # optional; "*.example.com" for any subdomain
      scopes: [users:read]           # all required
      roles: [admin, support]        # any one suffices
      conditions:                    # CEL, all must be true
        - "params.user_id == token.sub || 'admin' in token.roles"

A gRPC rule names the service and method instead of `path` and `methods`:

    - name: say-hello
      grpc: {service: demo.v1.Greeter, method: SayHello}   # method "*": every method
      scopes: [greeter:read]

It becomes `POST /demo.v1.Greeter/SayHello` (gRPC's `:path`, always POST), with the same
hosts, scopes, roles and conditions as any rule; `"*"` becomes `/demo.v1.Greeter/{method}`.
Server reflection is a service like any other: denied unless a rule names it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from authz_service.body.settings import BodySettings
from authz_service.policy.template import TemplateError, parse_template
from sidecar_runtime.config import Frozen

ANY_METHOD = "*"
MAX_CONDITION_CHARS = 4096

_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_LABELS = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*"
_EXACT_HOST = re.compile(rf"{_LABELS}|\[[0-9a-f:.]+\]")
_WILDCARD_HOST = re.compile(rf"\*\.{_LABELS}")
# OAuth scope tokens: NQCHAR without space (RFC 6749 §3.3).
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# Protobuf identifiers (the language spec's `ident`); a service is `package.Service`, the
# package dotted. These are also the only characters a gRPC `:path` has, so the path built
# from them needs no escaping and matches the request byte for byte.
_PROTO_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_GRPC_SERVICE = re.compile(rf"{_PROTO_IDENT}(?:\.{_PROTO_IDENT})+")
_GRPC_METHOD = re.compile(_PROTO_IDENT)
# The gRPC HTTP/2 mapping (PROTOCOL-HTTP2.md): every call is a POST to /Service/Method.
GRPC_HTTP_METHOD = "POST"
GRPC_ANY_METHOD = "*"
GRPC_METHOD_PARAM = "grpc_method"  # the path parameter a "*" method becomes


def _check_name(name: str) -> str:
    if not _RULE_NAME.fullmatch(name):
        raise ValueError(
            "rule name must be 1-128 characters of letters, digits and ._:- "
            "starting with a letter or digit"
        )
    return name


def _check_method(method: str) -> str:
    if method == ANY_METHOD:
        return method
    if _METHOD.fullmatch(method.upper()) and method != method.upper():
        raise ValueError(
            f"method {method!r} must be uppercase (methods are case-sensitive, RFC 9110 §9.1)"
        )
    if not _METHOD.fullmatch(method):
        raise ValueError(f"method {method!r} is not an HTTP method name")
    return method


def _check_path(path: str) -> str:
    try:
        parse_template(path)
    except TemplateError as exc:
        raise ValueError(f"invalid path template {path!r}: {exc}") from None
    return path


def _check_host(host: str) -> str:
    lowered = host.lower()
    if lowered.endswith("."):
        lowered = lowered[:-1]
    if _EXACT_HOST.fullmatch(lowered) or _WILDCARD_HOST.fullmatch(lowered):
        return lowered
    if ":" in lowered and not lowered.startswith("["):
        raise ValueError(f"host {host!r} must not include a port (ports are ignored)")
    raise ValueError(
        f"host {host!r} must be a host name, a bracketed IPv6 address or '*.' followed by "
        "a domain (omit `hosts` to match any host)"
    )


def _check_scope(scope: str) -> str:
    if not _SCOPE.fullmatch(scope):
        raise ValueError(f"scope {scope!r} must be a non-empty scope token without spaces")
    return scope


def _check_role(role: str) -> str:
    if not role:
        raise ValueError("role must not be empty")
    return role


def _check_condition(text: str) -> str:
    if not text.strip():
        raise ValueError("condition must not be empty")
    if len(text) > MAX_CONDITION_CHARS:
        raise ValueError(f"condition is longer than {MAX_CONDITION_CHARS} characters")
    return text


def _check_grpc_service(service: str) -> str:
    if not _GRPC_SERVICE.fullmatch(service):
        raise ValueError(
            f"service {service!r} must be a fully qualified proto service name, "
            "package and service (e.g. demo.v1.Greeter)"
        )
    return service


def _check_grpc_method(method: str) -> str:
    if method != GRPC_ANY_METHOD and not _GRPC_METHOD.fullmatch(method):
        raise ValueError(
            f'method {method!r} must be a proto method name (e.g. SayHello), or "*" for '
            "every method of the service"
        )
    return method


def _unique(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)
    return values


RuleName = Annotated[StrictStr, AfterValidator(_check_name)]
Method = Annotated[StrictStr, AfterValidator(_check_method)]
PathTemplateText = Annotated[StrictStr, AfterValidator(_check_path)]
Host = Annotated[StrictStr, AfterValidator(_check_host)]
Scope = Annotated[StrictStr, AfterValidator(_check_scope)]
Role = Annotated[StrictStr, AfterValidator(_check_role)]
Condition = Annotated[StrictStr, AfterValidator(_check_condition)]
GrpcService = Annotated[StrictStr, AfterValidator(_check_grpc_service)]
GrpcMethod = Annotated[StrictStr, AfterValidator(_check_grpc_method)]


class GrpcTarget(Frozen):
    """`grpc: {service: pkg.v1.Service, method: Method}`: what a gRPC rule allows."""

    service: GrpcService
    method: GrpcMethod

    def path_template(self) -> str:
        """The request `:path` this target allows, as a path template."""
        method = f"{{{GRPC_METHOD_PARAM}}}" if self.method == GRPC_ANY_METHOD else self.method
        return f"/{self.service}/{method}"


Mode = Literal["enforce", "dry_run"]
# What a rule accepts as proof of identity: a JWT (`Authorization: Bearer`), an API key
# (`Authorization: ApiKey`, or its own header), the mTLS client certificate Envoy verified.
CredentialType = Literal["jwt", "api_key", "mtls"]


class RouteSettings(Frozen):
    """One rule of the allow-list."""

    name: RuleName
    # Required unless `grpc` is given, which fills them in (see _grpc_form).
    methods: tuple[Method, ...] = ()
    path: PathTemplateText = ""
    grpc: GrpcTarget | None = None
    hosts: tuple[Host, ...] | None = None
    public: StrictBool = False
    scopes: tuple[Scope, ...] = ()
    roles: tuple[Role, ...] = ()
    conditions: tuple[Condition, ...] = ()
    # A JSON Schema for the request body, checked after the scopes and roles and before
    # the conditions (which may read `request.body`); see authz_service.body.
    body: BodySettings | None = None
    # None: the rule set's mode. dry_run: decide and record, but allow (docs/authz.md).
    mode: Mode | None = None
    credentials: tuple[CredentialType, ...] = ("jwt",)

    @field_validator("methods")
    @classmethod
    def _methods_consistent(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if not methods:
            raise ValueError('list at least one method, or "*" for any')
        if ANY_METHOD in methods and len(methods) > 1:
            raise ValueError('"*" already matches every method; list it alone')
        return _unique(methods, "method")

    @field_validator("hosts")
    @classmethod
    def _hosts_unique(cls, hosts: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if hosts is None:
            return None
        if not hosts:
            raise ValueError("hosts must not be empty (omit it to match any host)")
        return _unique(hosts, "host")

    @field_validator("credentials")
    @classmethod
    def _some_credential(cls, kinds: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not kinds:
            raise ValueError("list at least one credential type (jwt, api_key, mtls)")
        if info.data.get("public") is True and kinds != ("jwt",):
            raise ValueError("a public rule takes no credentials; remove `credentials`")
        return _unique(kinds, "credential type")

    @field_validator("scopes", "roles")
    @classmethod
    def _not_on_public(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # A public rule is answered before any credential is looked at, so a scope or a
        # role on it would be silently ignored: refuse the contradiction instead.
        if values and info.data.get("public") is True:
            raise ValueError(f"a public rule cannot require {info.field_name}")
        return _unique(values, str(info.field_name)[:-1])

    @model_validator(mode="after")
    def _grpc_form(self) -> RouteSettings:
        # Defaults are not validated, so an empty `methods` or `path` here means "not given".
        given = [key for key in ("methods", "path") if key in self.model_fields_set]
        if self.grpc is None:
            missing = [key for key in ("methods", "path") if key not in given]
            if missing:
                raise ValueError(
                    f"a rule needs `path` and `methods`, or `grpc`: `{missing[0]}` is missing"
                )
            return self
        derived = {"methods": (GRPC_HTTP_METHOD,), "path": self.grpc.path_template()}
        if self.methods == derived["methods"] and self.path == derived["path"]:
            return self  # derived already: an outer model validating this one again
        if given:
            raise ValueError(f"`grpc` sets the path and method itself; remove `{given[0]}`")
        # One compiled form for both kinds of rule: the router and the policy never need
        # to know a rule was written as gRPC.
        return self.model_copy(update=derived)


class PolicySettings(Frozen):
    """The `routes:` section: the allow-list of requests the authz sidecar may allow."""

    routes: list[RouteSettings] = Field(default_factory=list)
    mode: Mode = "enforce"


def _check_context_entry(value: str) -> str:
    if not value or len(value) > 256:
        raise ValueError("context keys and values must be 1-256 characters")
    return value


ContextText = Annotated[StrictStr, AfterValidator(_check_context_entry)]


class RuleSetSettings(Frozen):
    """`rule_sets[i]`: routes for the requests whose Envoy context extensions hold every
    `select` entry (one sidecar serving several APIs or tenants)."""

    name: RuleName
    select: dict[ContextText, ContextText]
    mode: Mode = "enforce"
    routes: list[RouteSettings] = Field(min_length=1)

    @field_validator("select")
    @classmethod
    def _select_something(cls, select: dict[str, str]) -> dict[str, str]:
        if not select:
            raise ValueError(
                "select needs at least one context entry (the top-level routes are the "
                "rule set for requests no rule set selects)"
            )
        return select

    def policy(self) -> PolicySettings:
        return PolicySettings(routes=self.routes, mode=self.mode)
