"""The one exception the token verifier raises, and its reason codes.

InvalidToken(reason)   the token is not accepted. `reason` is a short machine code for
                       the audit log; the client only ever sees a generic 401
                       `invalid_token` (ARCHITECTURE §5a: no oracle). `keys_unavailable`
                       is the one reason that is about us, not the token: the issuer's
                       keys have never been loaded, so callers may answer 503.
"""

from __future__ import annotations

import logging
import traceback
from typing import Literal, get_args

Reason = Literal[
    # shape and size, decided before any crypto
    "malformed",  # not compact JWS, bad base64url, bad JSON, wrong member types
    "oversized",  # a size cap was exceeded (whole token, header, payload or signature)
    "duplicate_member",  # a JSON object repeats a member name
    "jws_json",  # JWS JSON serialization (only the compact form is accepted)
    "jwe",  # five parts: an encrypted token
    "nested_jwt",  # cty: JWT
    "crit_unsupported",  # any crit header (we understand no extensions)
    "b64_unsupported",  # RFC 7797 unencoded payload
    # issuer and algorithm
    "unknown_issuer",  # iss missing or not configured
    "wrong_issuer",  # iss does not equal the issuer whose rules were applied
    "alg_not_allowed",  # alg not in the issuer's allow-list (none and HS* never are)
    "typ_mismatch",  # required typ absent or different
    # keys and signature
    "keys_unavailable",  # the issuer's key set has never been loaded
    "unknown_key",  # no key with that kid (after one refetch), or no key fits the alg
    "alg_key_mismatch",  # the kid's key has another type, curve or alg than the token's alg
    "bad_signature",
    # claims
    "bad_claim_type",  # exp/nbf/iat not a number (null too), aud/sub of the wrong JSON type
    "missing_exp",
    "missing_iat",  # max_token_age_seconds is configured and iat is absent
    "expired",
    "not_yet_valid",
    "iat_in_future",
    "too_old",  # older than max_token_age_seconds
    "wrong_audience",
    "missing_sub",  # sub absent or ""
    "bad_sub",  # sub only whitespace, or with leading or trailing whitespace
    # safety net: a bug, never expected; the token is refused (fail closed)
    "internal_error",
]

REASONS: frozenset[str] = frozenset(get_args(Reason))


class InvalidToken(Exception):  # noqa: N818 - name fixed by the public interface
    """The token is refused; `reason` says why, for the audit log only."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


def log_unexpected(logger: logging.Logger, message: str, exc: Exception) -> None:
    """Log an unexpected failure (the caller fails closed) by where it happened, never by
    its message: that could quote token content or a fetched document."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    at = f"{where.filename}:{where.lineno}"
    logger.error(message, extra={"fields": {"exc_type": type(exc).__name__, "at": at}})
