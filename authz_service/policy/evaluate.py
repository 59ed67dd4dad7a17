"""Authorizing a matched request: the checks of one rule, in a fixed order.

    public rule          -> its conditions (which cannot read the token), then "public"
    no principal         -> "unauthenticated"        (caller: 401)
    scopes (all of)      -> "insufficient_scope"     (caller: 403, scope="<required>")
    roles (any of)       -> "role_denied"            (caller: 403)
    conditions (in order, each must yield exactly true)
                         -> "condition_false" / "condition_error"   (caller: 403)
    otherwise            -> "allowed"

Cheap checks run before CEL so a request without the scope costs no evaluation. Nothing
here raises for a deny, and nothing unexpected becomes an allow: any failure while
building the CEL variables or evaluating is a "condition_error".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from authz_service.policy.conditions import PARAMS, REQUEST, TOKEN, new_activation, run_condition
from authz_service.policy.rules import (
    CONDITION_ERROR,
    INSUFFICIENT_SCOPE,
    CompiledRule,
    PolicyOutcome,
    RequestFacts,
    RouteMatch,
)
from authz_service.principal import Principal


def evaluate(
    match: RouteMatch,
    principal: Principal | None,
    facts: RequestFacts,
    *,
    body: Any = None,
    request_map: Mapping[str, Any] | None = None,
) -> PolicyOutcome:
    """Decide whether `principal` may make the matched request. Never raises for a deny.

    `body` is the request body as parsed and validated against the rule's schema (CEL
    `request.body`). `request_map` lets a caller that already built the CEL `request`
    variable (see `request_variables`; plain dicts and lists only, as CEL requires) pass
    it in; otherwise only the fields the rule's conditions read are built, and only then."""
    rule = match.rule
    if rule.public:
        if rule.conditions:
            denied = _check_conditions(rule, match, None, facts, body, request_map)
            if denied is not None:
                return denied
        return rule.public_outcome
    denied = access_denied(rule, principal)
    if denied is not None:
        return denied
    if rule.conditions:
        denied = _check_conditions(rule, match, principal, facts, body, request_map)
        if denied is not None:
            return denied
    return rule.allowed_outcome


def access_denied(rule: CompiledRule, principal: Principal | None) -> PolicyOutcome | None:
    """The deny a non-public rule gives before its conditions (no principal, a missing
    scope, none of the roles), or None. The pipeline asks this before it looks at a
    body, so a client without access learns nothing about the schema."""
    if principal is None:
        return rule.unauthenticated_outcome
    if rule.scopes:
        missing = [s for s in rule.scopes if s not in principal.scopes]
        if missing:
            return PolicyOutcome(
                False, INSUFFICIENT_SCOPE, rule.name, rule.scopes, "missing: " + " ".join(missing)
            )
    if rule.roles and rule.roles.isdisjoint(principal.roles):
        return rule.role_denied_outcome
    return None


def _check_conditions(
    rule: CompiledRule,
    match: RouteMatch,
    principal: Principal | None,
    facts: RequestFacts,
    body: Any,
    request_map: Mapping[str, Any] | None,
) -> PolicyOutcome | None:
    try:
        variables: Any = _variables(rule, match, principal, facts, body, request_map)
        if len(rule.conditions) > 1:
            variables = new_activation(variables)  # converted once, read by each
    except Exception as exc:  # e.g. a claim value CEL cannot represent: fail closed
        return PolicyOutcome(False, CONDITION_ERROR, rule.name, detail=f"variables: {exc}"[:200])
    for condition in rule.conditions:
        result = run_condition(condition, variables)
        if result.passed:
            continue
        if result.error:
            detail = f"conditions[{condition.index}]: {result.error}"
            return PolicyOutcome(False, CONDITION_ERROR, rule.name, detail=detail)
        return rule.condition_false_outcomes[condition.index]
    return None


def _variables(
    rule: CompiledRule,
    match: RouteMatch,
    principal: Principal | None,
    facts: RequestFacts,
    body: Any,
    request_map: Mapping[str, Any] | None,
) -> dict[str, Any]:
    # Converting Python values into CEL values is most of an evaluation's cost, so only
    # the variables, and the fields of them, that the rule's conditions read are built.
    # (Which variables a condition reads is known exactly: see compile_condition.)
    params = match.params if type(match.params) is dict else dict(match.params)
    variables: dict[str, Any] = {PARAMS: params}
    if rule.reads_request:
        variables[REQUEST] = (
            request_map
            if request_map is not None
            else request_variables(match, facts, fields=rule.request_fields, body=body)
        )
    if rule.reads_token:
        variables[TOKEN] = (
            token_variables(principal, fields=rule.token_fields) if principal is not None else {}
        )
    return variables


_REQUEST_FIELDS: dict[str, Callable[[RouteMatch, RequestFacts], Any]] = {
    "method": lambda match, facts: facts.method,
    "path": lambda match, facts: match.path,
    "host": lambda match, facts: match.host,
    "headers": lambda match, facts: _plain(facts.headers),
    "query": lambda match, facts: {name: list(vals) for name, vals in match.query.items()},
    "client_address": lambda match, facts: facts.client_address,
    "principal": lambda match, facts: facts.peer_principal,
    "id": lambda match, facts: facts.request_id,
    "context": lambda match, facts: dict(facts.context),
    "metadata": lambda match, facts: _plain(facts.route_metadata),
    "dynamic_metadata": lambda match, facts: _plain(facts.dynamic_metadata),
}

_TOKEN_FROM_PRINCIPAL: dict[str, Callable[[Principal], Any]] = {
    "sub": lambda principal: principal.subject,
    "iss": lambda principal: principal.issuer,
    "roles": lambda principal: sorted(principal.roles),
    "scopes": lambda principal: sorted(principal.scopes),
}


def request_variables(
    match: RouteMatch,
    facts: RequestFacts,
    *,
    fields: Iterable[str] | None = None,
    body: Any = None,
) -> dict[str, Any]:
    """The CEL `request` map (plain dicts and lists, as CEL requires): every field, or
    only `fields` (unknown names are left out, so reading them is an error). `body` is
    there only when the rule has a schema that accepted it: a condition reading
    `request.body` elsewhere fails, which denies."""
    names = _REQUEST_FIELDS.keys() if fields is None else fields
    out = {name: _REQUEST_FIELDS[name](match, facts) for name in names if name in _REQUEST_FIELDS}
    if match.rule.body is not None and (fields is None or "body" in fields):
        out["body"] = body
    return out


def token_variables(principal: Principal, *, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The CEL `token` map: the claims, with sub/iss/roles/scopes from the Principal (so
    `token.roles` holds the roles extracted from the configured claim); every claim, or
    only `fields`."""
    claims = principal.claims
    names = claims.keys() | _TOKEN_FROM_PRINCIPAL.keys() if fields is None else fields
    token = {}
    for name in names:
        from_principal = _TOKEN_FROM_PRINCIPAL.get(name)
        if from_principal is not None:
            token[name] = from_principal(principal)
        elif name in claims:
            token[name] = _plain(claims[name])
    return token


def _plain(value: Any) -> Any:
    # CEL accepts only exact dicts and lists; claims may be read-only views or tuples.
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value  # anything else makes evaluation fail, which denies
