"""A bounded cache of verified tokens, so a repeated bearer token skips parsing and crypto.

An entry holds what is needed to re-decide validity without the signature: the Principal,
the usable window [not_before, not_after) from the claims, and which key verified it. The
verifier re-checks the window against the clock and the key against the issuer's current key
set on every hit, so an entry never outlives `exp` (or max age) and dies with its key.

Only successes are cached. There is no negative cache: refusing a bad token is already
cheap before crypto, and a forged signature costs one verify, which the per-client rate
limit in front of us (stage 0) bounds better than a cache an attacker can fill with unique
junk.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from authz_service.principal import Principal
from authz_service.tokens.jwk import KeyIdentity


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A verified token's Principal and the facts its validity depends on."""

    principal: Principal
    issuer: str
    key_identity: KeyIdentity
    not_before: float  # inclusive
    not_after: float  # exclusive


class VerifiedTokenCache:
    """Exact token string -> CachedToken, evicting the oldest insertion when full.

    Safe from several threads (the `sync` server stack): a lookup is one dict operation;
    an insertion, which may evict, takes a lock (it follows a signature check, so the
    lock's cost does not show)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        self._capacity = capacity
        # dicts keep insertion order, so the first key is always the oldest entry.
        self._entries: dict[str, CachedToken] = {}
        self._insert_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> CachedToken | None:
        """The entry for exactly this token string, if any (validity is the caller's job)."""
        return self._entries.get(token)

    def put(self, token: str, entry: CachedToken) -> None:
        """Remember a verified token, evicting the oldest entry when at capacity."""
        if self._capacity == 0:
            return
        entries = self._entries
        with self._insert_lock:
            if token not in entries and len(entries) >= self._capacity:
                _drop_oldest(entries)
            entries[token] = entry

    def discard(self, token: str) -> None:
        """Forget a token (its window ended or its key is gone)."""
        self._entries.pop(token, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


def _drop_oldest(entries: dict[str, CachedToken]) -> None:
    # discard() and clear() take no lock: the dict may change under the iterator.
    with contextlib.suppress(KeyError, RuntimeError, StopIteration):
        del entries[next(iter(entries))]
