"""The API-key errors and their reason codes.

InvalidApiKey(reason)   the presented key is refused. The client only ever gets the
                        generic 401 (ARCHITECTURE §5a: no oracle); `reason` is for the
                        audit log. `store_unavailable` is about us, not the key: Redis
                        could not be read, so callers may answer 503 (fail closed).
LifecycleError(msg)     an admin command cannot be done (unknown id, over the ceiling,
                        already revoked, ...); the CLI prints it and exits 2.
"""

from __future__ import annotations

from typing import Literal, get_args

Reason = Literal[
    "malformed",  # not this deployment's key format (length, charset, checksum)
    "wrong_prefix",  # a well-formed key of another product or environment
    "unknown_key",  # no record for the key id
    "bad_secret",  # the secret does not hash to the record's hash
    "expired",  # past `expires`, or past `valid_until` after a rotation
    "revoked",
    "store_unavailable",  # Redis could not be read: fail closed
]

REASONS: frozenset[str] = frozenset(get_args(Reason))


class InvalidApiKey(Exception):  # noqa: N818 - named like tokens.errors.InvalidToken
    """The key is refused; `reason` says why, for the audit log only."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


class LifecycleError(Exception):
    """An admin operation was refused; the message is for the operator."""

    exit_code = 2
