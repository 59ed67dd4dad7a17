"""The authorization pipeline, read top to bottom like the contract (ARCHITECTURE.md 5):

    1. credentials   ambiguous credentials (two Authorization headers, header + query/cookie) -> 400
    2. route         undecodable path -> 400; no rule matches -> 403 (allow-list)
    3. public        a public rule allows without credentials
    4. identity      no bearer token -> 401 challenge; any invalid token -> 401 invalid_token;
                     no usable keys for the issuer (IdP down, nothing cached) -> 503
    5. policy        missing scope -> 403 insufficient_scope; role or condition -> 403

A denial is a `Decision`, never an exception. Anything unexpected is turned into a 503 deny
by the servicer (fail closed).

The pipeline is synchronous and does no I/O (`decide_now`): when the token needs keys the
issuer's current set lacks, it answers `NeedKeys`; the caller fetches them (on the event
loop: `CompiledConfig.decide`, or the servicer's worker threads through the loop bridge)
and decides again with the keys there are then (`decide_fetched`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from authz_service.credentials import extract_bearer
from authz_service.policy import (
    BadRequestPath,
    CompiledPolicy,
    PolicyOutcome,
    RequestFacts,
    evaluate,
)
from authz_service.principal import Principal
from authz_service.tokens import InvalidToken
from authz_service.tokens.verifier import NeedKeys, TokenVerifier

__all__ = ["INTERNAL_ERROR", "Authorizer", "Decision", "NeedKeys", "deny"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int  # HTTP status the client sees (200 on allow)
    reason: str  # machine reason code for the audit log; never sent to the client
    error: str = ""  # the public error code: body `error` and WWW-Authenticate `error=`
    rule: str = ""
    principal: Principal | None = None
    required_scopes: tuple[str, ...] = ()
    detail: str = ""  # why, for `explain` and the audit log (never a token)


def deny(status: int, reason: str, error: str, **kw: object) -> Decision:
    return Decision(False, status, reason, error, **kw)  # type: ignore[arg-type]


INTERNAL_ERROR = deny(503, "internal_error", "temporarily_unavailable")

_OUTCOME_STATUS = {
    "unauthenticated": (401, "unauthorized"),
    "insufficient_scope": (403, "insufficient_scope"),
    "role_denied": (403, "forbidden"),
    "condition_false": (403, "forbidden"),
    "condition_error": (403, "forbidden"),
}


class Authorizer:
    """One compiled config's pipeline. Immutable; a reload builds a new one."""

    def __init__(
        self,
        policy: CompiledPolicy,
        verifier: TokenVerifier,
        *,
        cookie_names: frozenset[str],
    ) -> None:
        self.policy = policy
        self.verifier = verifier
        self._cookie_names = cookie_names

    def decide_now(
        self, facts: RequestFacts, *, authorization: Sequence[str], cookie: str
    ) -> Decision | NeedKeys:
        """Decide with the keys known now, or say which keys to fetch first. No I/O."""
        return self._decide(facts, authorization, cookie, self.verifier.verify_now)

    def decide_fetched(
        self, facts: RequestFacts, *, authorization: Sequence[str], cookie: str
    ) -> Decision:
        """Decide again after the keys were fetched, with the keys there are now."""
        decided = self._decide(facts, authorization, cookie, self.verifier.verify_fetched)
        if isinstance(decided, NeedKeys):  # not reached: verify_fetched never asks
            return deny(503, "keys_unavailable", "temporarily_unavailable")
        return decided

    def _decide(
        self,
        facts: RequestFacts,
        authorization: Sequence[str],
        cookie: str,
        verify: Callable[[str], Principal | NeedKeys],
    ) -> Decision | NeedKeys:
        query = facts.raw_path.partition("?")[2]
        creds = extract_bearer(
            authorization, raw_query=query, cookie_header=cookie, cookie_names=self._cookie_names
        )
        if creds.problem is not None:
            return deny(400, creds.problem, "invalid_request")
        try:
            match = self.policy.match(facts)
        except BadRequestPath as exc:
            return deny(400, "bad_path", "invalid_request", detail=exc.reason)
        if match is None:
            return deny(403, "no_route", "forbidden")
        if match.rule.public:
            return _from_outcome(evaluate(match, None, facts), None)
        if not creds.token:
            return deny(401, "no_credentials", "unauthorized", rule=match.rule.name)
        try:
            principal = verify(creds.token)
        except InvalidToken as exc:
            if exc.reason == "keys_unavailable":
                return deny(503, exc.reason, "temporarily_unavailable", rule=match.rule.name)
            return deny(401, exc.reason, "invalid_token", rule=match.rule.name)
        if isinstance(principal, NeedKeys):
            return principal
        return _from_outcome(evaluate(match, principal, facts), principal)


def _from_outcome(outcome: PolicyOutcome, principal: Principal | None) -> Decision:
    if outcome.allowed:
        return Decision(
            True, 200, outcome.reason, rule=outcome.rule, principal=principal, detail=outcome.detail
        )
    status, error = _OUTCOME_STATUS.get(outcome.reason, (403, "forbidden"))
    return Decision(
        False,
        status,
        outcome.reason,
        error,
        rule=outcome.rule,
        principal=principal,
        required_scopes=outcome.required_scopes,
        detail=outcome.detail,
    )
