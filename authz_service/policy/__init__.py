"""The authorization policy core of the authz sidecar: pure, no I/O.

    settings    the `routes:` config section (pydantic, located errors)
    template    path templates `/users/{id}` and `/files/{path...}`
    paths       checking and decoding Envoy's `:path` (BadRequestPath -> 400)
    router      most-specific-wins matching over a segment trie (the precedence contract)
    conditions  CEL programs: compiled at load, evaluated fail-closed
    policy      CompiledPolicy: compile once, match per request, explain for the CLI
    rule_sets   RuleSets: the default rule set and those chosen by Envoy's context
    evaluate    scopes, roles and conditions of the matched rule -> PolicyOutcome

Typical use by the Check handler:

    policy = rule_sets.choose(facts.context).policy
    match = policy.match(facts)          # BadRequestPath -> 400; None -> 403
    denied = access_denied(match.rule, principal)        # scopes and roles
    verdict = match.rule.body.check(...)                 # when the rule has a body schema
    outcome = evaluate(match, principal, facts, body=verdict.value)
"""

from authz_service.policy.evaluate import evaluate, request_variables, token_variables
from authz_service.policy.paths import BadRequestPath
from authz_service.policy.policy import CompiledPolicy, explain_match
from authz_service.policy.router import Candidate
from authz_service.policy.rule_sets import RuleSet, RuleSets
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
    "RuleSet",
    "RuleSets",
    "evaluate",
    "explain_match",
    "request_variables",
    "token_variables",
]
