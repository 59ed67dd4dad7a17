"""Redis key names for the revocation list: bounded, collision-free, from plain values.

    {prefix}jti:{issuer tag}:{jti part}     one revoked token   (value: the entry's JSON)
    {prefix}sub:{issuer tag}:{sub part}     one revoked subject (value: the entry's JSON)
    {prefix}index                           sorted set: entry key -> expiry (epoch seconds),
                                            so a full load reads the live entries without
                                            a SCAN over a keyspace shared with rate limits
    {prefix}version                         INCR on every write; replicas poll it

The issuer tag is 32 hex digits of SHA-256 (issuers are URLs of any length). A jti or sub
made of at most 64 of `A-Z a-z 0-9 . _ -` is kept as is, readable in redis-cli; anything
else becomes `~` + the SHA-256 hex, and `~` never occurs in a kept value, so no two
identifiers share a key. The entry's JSON keeps the full identifiers for the replicas and
`revoke --list`.
"""

from __future__ import annotations

import hashlib
import re

from authz_service.revocation.snapshot import Entry, RevokedJti

_READABLE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def issuer_tag(issuer: str) -> str:
    return _digest(issuer)[:32]


def identifier_part(value: str) -> str:
    return value if _READABLE.fullmatch(value) else "~" + _digest(value)


def jti_key(prefix: str, issuer: str, jti: str) -> str:
    return f"{prefix}jti:{issuer_tag(issuer)}:{identifier_part(jti)}"


def subject_key(prefix: str, issuer: str, subject: str) -> str:
    return f"{prefix}sub:{issuer_tag(issuer)}:{identifier_part(subject)}"


def entry_key(prefix: str, entry: Entry) -> str:
    if isinstance(entry, RevokedJti):
        return jti_key(prefix, entry.issuer, entry.jti)
    return subject_key(prefix, entry.issuer, entry.subject)


def index_key(prefix: str) -> str:
    return f"{prefix}index"


def version_key(prefix: str) -> str:
    return f"{prefix}version"
