"""Bucket keys: collision-free, bounded in size, namespaced by prefix and domain.

The identity of a bucket is (domain, the request's descriptor entries, the limit's tag).
Each part is length-prefixed (`5:edge`), so no choice of keys and values can make two
different identities encode alike (`a=b:c` vs `a:b=c`). Identities longer than
`MAX_RAW_CHARS` are replaced by their SHA-256 (marked `#`, which no length prefix starts
with), so a client-chosen value can never make a key large.

In Redis Cluster the key also carries a hash tag made from the identity's digest: it spreads
buckets evenly over slots, and a client value containing `{...}` cannot pick the slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_RAW_CHARS = 256


def _encode(parts: Sequence[str]) -> str:
    return "".join(f"{len(part)}:{part}" for part in parts)


def bucket_key(
    prefix: str,
    domain: str,
    entries: Sequence[tuple[str, str]],
    tag: str,
    *,
    hash_tag: bool = False,
) -> str:
    """The store key for one bucket."""
    parts = [domain]
    for key, value in entries:
        parts.append(key)
        parts.append(value)
    parts.append(tag)
    identity = _encode(parts)
    digest = (
        hashlib.sha256(identity.encode()).hexdigest()
        if hash_tag or len(identity) > MAX_RAW_CHARS
        else ""
    )
    body = identity if len(identity) <= MAX_RAW_CHARS else "#" + digest
    if hash_tag:
        return f"{prefix}{{{digest[:16]}}}{body}"
    return prefix + body
