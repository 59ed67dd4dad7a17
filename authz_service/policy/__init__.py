"""The authorization policy core of the authz sidecar: pure, no I/O.

    settings    the `routes:` config section (pydantic, located errors)
    template    path templates `/users/{id}` and `/files/{path...}`
    paths       checking and decoding Envoy's `:path` (BadRequestPath -> 400)
    router      most-specific-wins matching over a segment trie (the precedence contract)
    conditions  CEL programs: compiled at load, evaluated fail-closed
    policy      CompiledPolicy: compile once, match per request, explain for the CLI
    evaluate    scopes, roles and conditions of the matched rule -> PolicyOutcome

Typical use by the Check handler:

    match = policy.match(facts)          # BadRequestPath -> 400; None -> 403
    outcome = evaluate(match, principal, facts)
"""

from authz_service.policy.evaluate import evaluate, request_variables, token_variables
from authz_service.policy.paths import BadRequestPath
from authz_service.policy.policy import CompiledPolicy, explain_match
from authz_service.policy.router import Candidate
from authz_service.policy.rules import (
    ALLOWED,
    CONDITION_ERROR,
    CONDITION_FALSE,
    INSUFFICIENT_SCOPE,
    PUBLIC,
    ROLE_DENIED,
    UNAUTHENTICATED,
    CompiledRule,
    PolicyOutcome,
    RequestFacts,
    RouteMatch,
)
from authz_service.policy.settings import PolicySettings, RouteSettings

__all__ = [
    "ALLOWED",
    "CONDITION_ERROR",
    "CONDITION_FALSE",
    "INSUFFICIENT_SCOPE",
    "PUBLIC",
    "ROLE_DENIED",
    "UNAUTHENTICATED",
    "BadRequestPath",
    "Candidate",
    "CompiledPolicy",
    "CompiledRule",
    "PolicyOutcome",
    "PolicySettings",
    "RequestFacts",
    "RouteMatch",
    "RouteSettings",
    "evaluate",
    "explain_match",
    "request_variables",
    "token_variables",
]
