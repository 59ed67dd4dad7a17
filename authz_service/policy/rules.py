"""The plain values the policy core takes and returns (no I/O, no Envoy types)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from authz_service.body import CompiledBody
from authz_service.policy.conditions import CompiledCondition
from authz_service.policy.template import PathTemplate, SegmentKind

# PolicyOutcome.reason values.
PUBLIC = "public"
ALLOWED = "allowed"
UNAUTHENTICATED = "unauthenticated"
INSUFFICIENT_SCOPE = "insufficient_scope"
ROLE_DENIED = "role_denied"
CONDITION_FALSE = "condition_false"
CONDITION_ERROR = "condition_error"

ENFORCE, DRY_RUN = "enforce", "dry_run"
_NOTHING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the policy needs to know about one request, taken from Envoy's CheckRequest.

    `host` is the raw `:authority`; `headers` have lower-case names and no credentials
    (the caller strips authorization and cookie before building this)."""

    method: str
    raw_path: str
    host: str
    headers: Mapping[str, str]
    client_address: str
    peer_principal: str
    request_id: str
    # The client certificate Envoy verified (URL-encoded PEM, `source.certificate`), "".
    peer_certificate: str = ""
    # The body as Envoy forwarded it: only on routes whose rule declares a body schema
    # (Envoy's per-route `with_request_body`); empty elsewhere.
    raw_body: bytes = b""
    # Envoy's per-route context extensions (string -> string), and the route's metadata
    # and the request's dynamic metadata (namespace -> plain JSON values).
    context: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    route_metadata: Mapping[str, Any] = field(default_factory=lambda: _NOTHING)
    dynamic_metadata: Mapping[str, Any] = field(default_factory=lambda: _NOTHING)


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """The decision for one matched rule. A deny is a value, never an exception."""

    allowed: bool
    reason: str
    rule: str
    required_scopes: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Capture:
    """Where a path parameter sits in the request's segments."""

    name: str
    position: int
    rest: bool


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """One rule, ready for the hot path. `index` is its position in the routes list."""

    name: str
    index: int
    methods: frozenset[str]  # {"*"} for any method
    template: PathTemplate
    hosts: tuple[str, ...] | None
    public: bool
    scopes: tuple[str, ...]
    roles: frozenset[str]
    conditions: tuple[CompiledCondition, ...]
    body: CompiledBody | None = None
    mode: str = ENFORCE  # the rule's own, or its rule set's
    credentials: frozenset[str] = frozenset({"jwt"})  # jwt, api_key, mtls
    captures: tuple[Capture, ...] = field(init=False)
    reads_request: bool = field(init=False)
    reads_token: bool = field(init=False)
    request_fields: frozenset[str] | None = field(init=False)  # None: the whole map
    token_fields: frozenset[str] | None = field(init=False)
    # The outcomes that do not depend on the request, built once.
    public_outcome: PolicyOutcome = field(init=False)
    allowed_outcome: PolicyOutcome = field(init=False)
    unauthenticated_outcome: PolicyOutcome = field(init=False)
    role_denied_outcome: PolicyOutcome = field(init=False)
    condition_false_outcomes: tuple[PolicyOutcome, ...] = field(init=False)  # by index

    def __post_init__(self) -> None:
        init = object.__setattr__  # frozen: derived fields are set once, here
        init(self, "captures", _captures(self.template))
        init(self, "reads_request", any(c.reads_request for c in self.conditions))
        init(self, "reads_token", any(c.reads_token for c in self.conditions))
        init(self, "request_fields", _union(c.request_fields for c in self.conditions))
        init(self, "token_fields", _union(c.token_fields for c in self.conditions))
        init(self, "public_outcome", PolicyOutcome(True, PUBLIC, self.name))
        init(self, "allowed_outcome", PolicyOutcome(True, ALLOWED, self.name))
        init(self, "unauthenticated_outcome", PolicyOutcome(False, UNAUTHENTICATED, self.name))
        init(self, "role_denied_outcome", PolicyOutcome(False, ROLE_DENIED, self.name))
        false_outcomes = tuple(
            PolicyOutcome(False, CONDITION_FALSE, self.name, detail=f"conditions[{i}] is false")
            for i in range(len(self.conditions))
        )
        init(self, "condition_false_outcomes", false_outcomes)

    def extract_params(self, segments: tuple[str, ...]) -> dict[str, str]:
        """Path parameters from the segments of a path this rule's template matched."""
        params = {}
        for capture in self.captures:
            if capture.rest:
                params[capture.name] = "/".join(segments[capture.position :])
            else:
                params[capture.name] = segments[capture.position]
        return params

    def describe(self) -> str:
        """`GET,PUT /api/v1/users/{user_id} on api.example.com` (for errors and explain)."""
        hosts = ",".join(self.hosts) if self.hosts else "any host"
        return f"{','.join(sorted(self.methods))} {self.template.source} on {hosts}"


def _union(field_sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    out: frozenset[str] = frozenset()
    for fields in field_sets:
        if fields is None:
            return None
        out |= fields
    return out


def _captures(template: PathTemplate) -> tuple[Capture, ...]:
    return tuple(
        Capture(seg.text, i, seg.kind is SegmentKind.REST)
        for i, seg in enumerate(template.segments)
        if seg.kind is not SegmentKind.LITERAL
    )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The rule a request matched, with the decoded path, its parameters and query."""

    rule: CompiledRule
    params: Mapping[str, str]
    path: str
    query: Mapping[str, tuple[str, ...]]
    host: str = ""  # normalised: lower case, no port
