"""Keyed hashes of API key secrets: HMAC-SHA-256 under a server-side pepper.

Redis holds `HMAC-SHA-256(pepper, key_id "." secret)` in hex and the pepper's id, never
the secret. The secret has 256 random bits, so a slow password hash would add nothing;
the pepper (kept out of Redis, in a file or the environment) means a copy of Redis alone
does not even allow an offline check of a guessed key. The key id in the message binds
each hash to its record: a hash copied onto another record does not verify.

Peppers rotate: the ring's first pepper hashes new keys; every listed pepper still
verifies the keys made under it (the record names its pepper), so a pepper is retired by
removing it once no live key names it (`apikey list` shows each key's pepper id).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_PEPPER_BYTES = 32


@dataclass(frozen=True, slots=True)
class Pepper:
    """One pepper: its public id and its secret bytes (left out of repr)."""

    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_PEPPER_BYTES:
            raise ValueError(f"pepper {self.id!r} has under {MIN_PEPPER_BYTES} bytes")

    def digest(self, key_id: str, secret: str) -> str:
        """The hex HMAC-SHA-256 stored for a key."""
        message = f"{key_id}.{secret}".encode("ascii")
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


class PepperRing:
    """The configured peppers: the first hashes new keys, any of them verifies."""

    def __init__(self, peppers: Sequence[Pepper]) -> None:
        if not peppers:
            raise ValueError("at least one pepper is needed")
        self._by_id = {pepper.id: pepper for pepper in peppers}
        if len(self._by_id) != len(peppers):
            raise ValueError("pepper ids must differ")
        self.current = peppers[0]

    def __repr__(self) -> str:
        return f"PepperRing(ids={list(self._by_id)})"

    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def hash_new(self, key_id: str, secret: str) -> tuple[str, str]:
        """(pepper id, hex digest) for a new key, under the current pepper."""
        return self.current.id, self.current.digest(key_id, secret)

    def matches(self, *, key_id: str, secret: str, pepper_id: str, stored: str) -> bool:
        """Whether `secret` hashes to `stored` under the named pepper, compared in constant
        time. An unknown (retired) pepper id never matches."""
        pepper = self._by_id.get(pepper_id)
        if pepper is None:
            return False
        computed = pepper.digest(key_id, secret)
        return hmac.compare_digest(computed.encode("ascii"), stored.encode("ascii", "replace"))
