"""Bucket keys: collision-free, bounded in size, namespaced by prefix and domain.

The identity of a bucket is (domain, the request's descriptor entries, the limit's tag).
Each part is length-prefixed (`5:edge`), so no choice of keys and values can make two
different identities encode alike (`a=b:c` vs `a:b=c`). Identities longer than
`MAX_RAW_CHARS` are replaced by their SHA-256 (marked `#`, which no length prefix starts
with), so a client-chosen value can never make a key large.

In Redis Cluster the key also carries a hash tag: the digest of the identity without the
limit's tag, i.e. of (domain, descriptor entries). It spreads descriptors evenly over the
slots, a client value containing `{...}` cannot pick the slot, and the several limits of
one descriptor (10/s and 10,000/day) share a slot, so the store decides them in one
script call. A request's different descriptors land on different slots (they are shared
with other requests, so no one request could choose a slot for them); the Cluster store
calls each slot once, in parallel (stores/redis_cluster.py). Standalone keys carry no tag.
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
    descriptor = _encode(parts)
    identity = descriptor + _encode([tag])
    body = identity
    if len(identity) > MAX_RAW_CHARS:
        body = "#" + hashlib.sha256(identity.encode()).hexdigest()
    if hash_tag:
        slot_tag = hashlib.sha256(descriptor.encode()).hexdigest()[:16]
        return f"{prefix}{{{slot_tag}}}{body}"
    return prefix + body
