"""Token revocation (issue 19, part 3): refuse a leaked token on every replica within 1 s.

Revoke one token by issuer + `jti`, or every token of a subject (issuer + `sub`) issued
before a moment (`iat < revoked_before`). The list lives in Redis (`store`, key layout in
`layout`), each replica holds it in memory as an immutable snapshot (`snapshot`, pure)
kept current by pub/sub and a version poll (`sync`), and `authz-service revoke` writes it
(`cli`). Reference: docs/revocation.md.
"""

from __future__ import annotations

from authz_service.revocation.cli import add_revoke_parser, run_revoke
from authz_service.revocation.settings import RevocationSettings, load_revocation_settings
from authz_service.revocation.snapshot import (
    RevocationSnapshot,
    RevokedJti,
    RevokedSubject,
    is_principal_revoked,
    is_revoked,
)
from authz_service.revocation.store import (
    MemoryRevocationStore,
    RedisRevocationStore,
    RevocationStore,
    RevocationStoreError,
)
from authz_service.revocation.sync import REVOKED, UNAVAILABLE, RevocationList, RevocationStatus

__all__ = [
    "REVOKED",
    "UNAVAILABLE",
    "MemoryRevocationStore",
    "RedisRevocationStore",
    "RevocationList",
    "RevocationSettings",
    "RevocationSnapshot",
    "RevocationStatus",
    "RevocationStore",
    "RevocationStoreError",
    "RevokedJti",
    "RevokedSubject",
    "add_revoke_parser",
    "is_principal_revoked",
    "is_revoked",
    "load_revocation_settings",
    "run_revoke",
]
