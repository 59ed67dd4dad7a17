"""The authorization pipeline, read top to bottom like the contract (ARCHITECTURE.md 5):

    0. rule set      the one Envoy's context extensions select, else the default
    1. credentials   ambiguous credentials (two Authorization headers, header + query/cookie) -> 400
    2. route         undecodable path -> 400; no rule matches -> 403 (allow-list)
    3. public        a public rule allows without credentials (body and conditions still apply)
    4. identity      no credential -> 401 challenge (on a rule taking `mtls`, the client
                     certificate Envoy verified stands for one: a certificate no identity
                     names -> 403); any invalid token -> 401 invalid_token; no usable
                     keys for the issuer (IdP down, nothing cached) -> 503
    5. access        missing scope -> 403 insufficient_scope; none of the roles -> 403
    6. body          the rule's schema: over max_bytes -> 413, wrong content type -> 415,
                     not well-formed JSON -> 400, breaks the schema -> 422 (RFC 9457)
    7. conditions    CEL, which may read the validated `request.body` -> 403

A denial is a `Decision`, never an exception. Anything unexpected is turned into a 503 deny
by the servicer (fail closed). Under `mode: dry_run` (the rule's, else its rule set's) a
deny is recorded as it is (`enforced=False`) and the request is allowed.

The pipeline is synchronous and does no I/O (`decide_now`): when the token needs keys the
issuer's current set lacks, it answers `NeedKeys`; the caller fetches them (on the event
loop: `CompiledConfig.decide`, or the servicer's worker threads through the loop bridge)
and decides again with the keys there are then (`decide_fetched`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from authz_service.apikeys.errors import InvalidApiKey
from authz_service.apikeys.verifier import ApiKeyVerifier, NeedKey
from authz_service.body import BodyVerdict, CompiledBody, Violation
from authz_service.body.verdict import BODY_NOT_FORWARDED
from authz_service.body.verdict import refused as refused_body
from authz_service.credentials import API_KEY, BEARER, extract_bearer
from authz_service.introspection import (
    IntrospectionRefused,
    IntrospectionVerifier,
    NeedIntrospection,
    looks_like_jws,
)
from authz_service.mtls import MtlsSettings, PeerCertificate, principal_for, read_certificate
from authz_service.policy import (
    BadRequestPath,
    CompiledPolicy,
    PolicyOutcome,
    RequestFacts,
    RouteMatch,
    RuleSets,
    evaluate,
)
from authz_service.policy.evaluate import access_denied
from authz_service.policy.rules import DRY_RUN
from authz_service.principal import Principal
from authz_service.tokens import InvalidToken
from authz_service.tokens.verifier import NeedKeys, TokenVerifier

__all__ = [
    "INTERNAL_ERROR",
    "NEEDS",
    "Authorizer",
    "Decision",
    "Need",
    "NeedIntrospection",
    "NeedKey",
    "NeedKeys",
    "deny",
]


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
    violations: tuple[Violation, ...] = ()  # a refused body's pointers and reasons
    rule_set: str = ""  # "" for the default rule set
    # False: a deny under dry_run, recorded as it would be enforced; the request is allowed.
    enforced: bool = True

    @property
    def lets_through(self) -> bool:
        """Whether Envoy lets the request through: an allow, or a deny in dry run."""
        return self.allowed or not self.enforced


def deny(status: int, reason: str, error: str, **kw: object) -> Decision:
    return Decision(False, status, reason, error, **kw)  # type: ignore[arg-type]


INTERNAL_ERROR = deny(503, "internal_error", "temporarily_unavailable")

# The rule's credential type (`credentials:` in a rule) of each kind of presented credential.
_CREDENTIAL_TYPE = {BEARER: "jwt", API_KEY: "api_key"}
RevocationCheck = Callable[[Principal], str | None]
# What the pipeline may ask the caller to fetch before it decides again.
Need = NeedKeys | NeedKey | NeedIntrospection
NEEDS = (NeedKeys, NeedKey, NeedIntrospection)
MTLS = "mtls"

# The public error code of each body verdict (the problem document carries the details).
_BODY_ERRORS = {
    400: "invalid_request",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
}

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
        rule_sets: RuleSets,
        verifier: TokenVerifier,
        *,
        cookie_names: frozenset[str],
        mtls: MtlsSettings | None = None,
        revoked: RevocationCheck | None = None,
        api_keys: ApiKeyVerifier | None = None,
        api_key_header: str | None = None,
        introspection: IntrospectionVerifier | None = None,
    ) -> None:
        self.rule_sets = rule_sets
        self.verifier = verifier
        # None: every bearer token is a JWT. Else a token that is not JWS-shaped is opaque
        # and goes to the introspection endpoint (no token is tried on both).
        self.introspection = introspection
        self.api_keys = api_keys  # None: API keys are off (the ApiKey scheme is not ours)
        # A header of the API keys' own, or None for `Authorization: ApiKey <key>`.
        self._api_key_header = api_key_header
        self._cookie_names = cookie_names
        self._mtls = mtls  # None: no certificate stands for an identity
        # principal -> None, "revoked" or why the revocation list cannot be trusted now
        # (authz_service.revocation: an in-memory snapshot, no I/O here).
        self._revoked = revoked

    def decide_now(
        self, facts: RequestFacts, *, authorization: Sequence[str], cookie: str
    ) -> Decision | Need:
        """Decide with the keys known now, or say what to fetch first (a JWKS, an API key's
        record, an opaque token's introspection). No I/O."""
        return self._decide(facts, authorization, cookie, fetched=False)

    def decide_fetched(
        self, facts: RequestFacts, *, authorization: Sequence[str], cookie: str
    ) -> Decision:
        """Decide again after the keys were fetched, with the keys there are now."""
        decided = self._decide(facts, authorization, cookie, fetched=True)
        if isinstance(decided, NEEDS):  # not reached: fetched never asks
            return deny(503, "keys_unavailable", "temporarily_unavailable")
        return decided

    def _decide(
        self, facts: RequestFacts, authorization: Sequence[str], cookie: str, *, fetched: bool
    ) -> Decision | Need:
        rule_set = self.rule_sets.choose(facts.context)
        decided, mode = self._decide_in(rule_set.policy, facts, authorization, cookie, fetched)
        if isinstance(decided, NEEDS):
            return decided
        if rule_set.name:
            decided = replace(decided, rule_set=rule_set.name)
        if mode == DRY_RUN and not decided.allowed:
            return replace(decided, enforced=False)
        return decided

    def _decide_in(
        self,
        policy: CompiledPolicy,
        facts: RequestFacts,
        authorization: Sequence[str],
        cookie: str,
        fetched: bool,
    ) -> tuple[Decision | Need, str]:
        """The decision, and the mode it falls under (the matched rule's, else the set's)."""
        set_mode = policy.mode
        query = facts.raw_path.partition("?")[2]
        key_header = self._api_key_header
        in_own_header = facts.headers.get(key_header) if key_header else None
        creds = extract_bearer(
            authorization,
            raw_query=query,
            cookie_header=cookie,
            cookie_names=self._cookie_names,
            api_keys=self.api_keys is not None and key_header is None,
            api_key_header=() if in_own_header is None else (in_own_header,),
        )
        if creds.problem is not None:
            return deny(400, creds.problem, "invalid_request"), set_mode
        try:
            match = policy.match(facts)
        except BadRequestPath as exc:
            return deny(400, "bad_path", "invalid_request", detail=exc.reason), set_mode
        if match is None:
            return deny(403, "no_route", "forbidden"), set_mode
        rule = match.rule
        if rule.public:
            return self._after_access(match, None, facts), rule.mode
        if not creds.token:
            if MTLS in rule.credentials and self._mtls is not None:
                cert = read_certificate(facts.peer_certificate)
                if cert is not None:
                    return self._by_certificate(match, cert, facts), rule.mode
            return deny(401, "no_credentials", "unauthorized", rule=rule.name), rule.mode
        if _CREDENTIAL_TYPE[creds.kind] not in rule.credentials:
            # The same generic 401 as a bad token: which types a rule takes is no oracle.
            return deny(401, "credential_not_accepted", "invalid_token", rule=rule.name), rule.mode
        if creds.kind == API_KEY:
            return self._by_api_key(match, creds.token, facts, fetched), rule.mode
        verify: Callable[[str], Principal | NeedKeys | NeedIntrospection]
        if self.introspection is not None and not looks_like_jws(creds.token):
            verify = self._introspected_fetched if fetched else self.introspection.verify_now
        else:
            verify = self.verifier.verify_fetched if fetched else self.verifier.verify_now
        try:
            principal = verify(creds.token)
        except IntrospectionRefused as exc:
            if exc.status_hint == 503:
                status, error = 503, "temporarily_unavailable"
            else:
                status, error = 401, "invalid_token"
            return deny(status, f"introspection_{exc.reason}", error, rule=rule.name), rule.mode
        except InvalidToken as exc:
            if exc.reason == "keys_unavailable":
                return deny(503, exc.reason, "temporarily_unavailable", rule=rule.name), rule.mode
            return deny(401, exc.reason, "invalid_token", rule=rule.name), rule.mode
        if isinstance(principal, NeedKeys | NeedIntrospection):
            return principal, rule.mode
        refusal = None if self._revoked is None else self._revoked(principal)
        if refusal == "revoked":  # the same generic 401 as any bad token
            return deny(401, "revoked", "invalid_token", rule=rule.name), rule.mode
        if refusal is not None:  # the list is stale under fail_closed, or never loaded
            return deny(503, refusal, "temporarily_unavailable", rule=rule.name), rule.mode
        return self._authenticated(match, principal, facts), rule.mode

    def _introspected_fetched(self, token: str) -> Principal:
        assert self.introspection is not None
        return self.introspection.verify_fetched(token)

    def _by_api_key(
        self, match: RouteMatch, key: str, facts: RequestFacts, fetched: bool
    ) -> Decision | NeedKey:
        """A request whose credential is an API key: its record from the cache, or which
        record to fetch first; refused with the same generic 401 as a bad token."""
        assert self.api_keys is not None  # only extracted when API keys are on
        rule = match.rule.name
        try:
            found = self.api_keys.verify_now(key, client_address=facts.client_address)
        except InvalidApiKey as exc:
            if exc.reason == "store_unavailable":
                return deny(503, exc.reason, "temporarily_unavailable", rule=rule)
            return deny(401, f"api_key_{exc.reason}", "invalid_token", rule=rule)
        if isinstance(found, NeedKey):
            if not fetched:
                return found
            # The fetch left nothing in the cache: the store could not be read.
            self.api_keys.refuse("store_unavailable", facts.client_address)
            return deny(503, "store_unavailable", "temporarily_unavailable", rule=rule)
        return self._authenticated(match, found, facts)

    def _by_certificate(
        self, match: RouteMatch, cert: PeerCertificate, facts: RequestFacts
    ) -> Decision:
        """A request whose only credential is the client certificate Envoy verified."""
        assert self._mtls is not None
        principal = principal_for(cert, self._mtls)
        if principal is None:  # signed by a trusted CA, but no configured identity
            return deny(403, "unknown_certificate", "forbidden", rule=match.rule.name)
        return self._authenticated(match, principal, facts)

    def _authenticated(
        self, match: RouteMatch, principal: Principal, facts: RequestFacts
    ) -> Decision:
        denied = access_denied(match.rule, principal)
        if denied is not None:
            return _from_outcome(denied, principal)
        return self._after_access(match, principal, facts)

    @staticmethod
    def _after_access(
        match: RouteMatch, principal: Principal | None, facts: RequestFacts
    ) -> Decision:
        """The body (when the rule has a schema), then the conditions."""
        body = match.rule.body
        if body is None:
            return _from_outcome(evaluate(match, principal, facts), principal)
        verdict = _body_verdict(body, facts)
        if not verdict.ok:
            return _body_denied(verdict, match.rule.name, principal)
        outcome = evaluate(match, principal, facts, body=verdict.value)
        return _from_outcome(outcome, principal)


def _body_verdict(body: CompiledBody, facts: RequestFacts) -> BodyVerdict:
    # Envoy forwards the body only on the routes it was told have a schema. A body the
    # client declared but Envoy did not forward (Envoy's routing and the policy's differ
    # for this path) cannot be checked: refuse it rather than validate an empty one.
    declared = facts.headers.get("content-length")
    if declared is not None and declared.strip() != str(len(facts.raw_body)):
        return refused_body(BODY_NOT_FORWARDED, "the body did not reach the policy")
    return body.check(facts.raw_body, facts.headers.get("content-type"))


def _body_denied(verdict: BodyVerdict, rule: str, principal: Principal | None) -> Decision:
    return Decision(
        False,
        verdict.status,
        verdict.reason,
        _BODY_ERRORS.get(verdict.status, "invalid_request"),
        rule=rule,
        principal=principal,
        detail=verdict.detail,
        violations=verdict.violations,
    )


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
