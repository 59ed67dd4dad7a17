"""The one exception introspection raises, and its reason codes.

IntrospectionRefused(reason)   the opaque token is not accepted. `reason` is for the audit
                               log only; the client gets the generic 401 `invalid_token`
                               (ARCHITECTURE §5a: no oracle), except for the reasons in
                               UNAVAILABLE, which are about the endpoint, not the token:
                               those fail closed with a 503 (`status_hint`).
"""

from __future__ import annotations

from typing import Literal, get_args

Reason = Literal[
    "malformed",  # not a plausible bearer token (charset or length): never sent out
    "inactive",  # the endpoint said `active: false` (unknown, expired, revoked, ...)
    "expired",  # `exp` in the past (beyond the leeway)
    "not_yet_valid",  # `nbf` in the future (beyond the leeway)
    "wrong_issuer",  # `iss` present and not the configured issuer
    "wrong_audience",  # no configured audience in `aud` (or `aud` missing)
    "missing_subject",  # no `sub`, and the client id may not stand for one
    "wrong_token_type",  # `token_type` present and not an accepted one (e.g. refresh)
    "sender_constrained",  # `cnf`: bound to a key or certificate we cannot check (DPoP, mTLS)
    "bad_claim_type",  # exp/nbf/iat/sub/aud/client_id of the wrong JSON type
    "unavailable",  # no answer: timeout, network, non-200, garbage, breaker open, overload
]

REASONS: frozenset[str] = frozenset(get_args(Reason))
# About us, not the token: 503, fail closed, never cached.
UNAVAILABLE: frozenset[str] = frozenset({"unavailable"})


class IntrospectionRefused(Exception):  # noqa: N818 - a refusal, like tokens.errors.InvalidToken
    """The token is refused; `reason` says why, for the audit log only."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason

    @property
    def status_hint(self) -> int:
        """The HTTP status the refusal maps to: 503 when the endpoint failed, else 401."""
        return 503 if self.reason in UNAVAILABLE else 401
