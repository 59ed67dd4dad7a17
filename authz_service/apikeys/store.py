"""The KeyStore port: where key records live, and how every replica hears of a change.

    KeyStore          the Protocol (get, create, update, touch, ids, publish)
    MemoryKeyStore    the in-memory double, for the lifecycle's tests
    StoreUnavailable  the store could not answer (the Redis adapter translates its errors)

The real one is authz_service.apikeys.redis_store.RedisKeyStore.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from authz_service.apikeys.records import KeyRecord, record_from_fields

# Records stay this long after they stop being accepted, so `list` and `show` can still
# explain why a key is refused; then Redis drops them (EXPIREAT).
RETENTION_SECONDS = 30 * 86_400


class StoreUnavailable(Exception):  # noqa: N818 - a condition, not a bug
    """The store could not be read or written in time."""


class KeyStore(Protocol):
    async def get(self, key_id: str) -> KeyRecord | None:
        """The record, or None if there is none (or it is not well formed)."""
        ...

    async def create(self, record: KeyRecord) -> bool:
        """Store a new record; False (and nothing written) if its key id is taken."""
        ...

    async def update(self, record: KeyRecord) -> bool:
        """Rewrite an existing record's fields; False if it no longer exists."""
        ...

    async def touch(self, key_id: str, when: float) -> None:
        """Set `last_used` on an existing record (never creates one)."""
        ...

    async def ids(self) -> list[str]:
        """Every stored key id."""
        ...

    async def publish(self, key_id: str) -> None:
        """Tell every replica to forget what it cached about `key_id`."""
        ...


class MemoryKeyStore:
    """KeyStore in a dict, storing the same fields Redis would; `events` lists what was
    published."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.events: list[str] = []

    async def get(self, key_id: str) -> KeyRecord | None:
        fields: Mapping[str, str] = self.hashes.get(key_id, {})
        return record_from_fields(key_id, fields)

    async def create(self, record: KeyRecord) -> bool:
        if record.key_id in self.hashes:
            return False
        self.hashes[record.key_id] = record.to_fields()
        return True

    async def update(self, record: KeyRecord) -> bool:
        if record.key_id not in self.hashes:
            return False
        self.hashes[record.key_id] = record.to_fields()
        return True

    async def touch(self, key_id: str, when: float) -> None:
        if key_id in self.hashes:
            self.hashes[key_id]["last_used"] = repr(round(when, 3))

    async def ids(self) -> list[str]:
        return list(self.hashes)

    async def publish(self, key_id: str) -> None:
        self.events.append(key_id)
