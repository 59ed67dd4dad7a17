"""Where the revocation list lives: a small Protocol, the Redis adapter, an in-memory one.

Only this module touches Redis. Every redis-py error (and a timeout) becomes
`RevocationStoreError` here, so the sync loop and the CLI handle one kind of failure.

A write is one MULTI/EXEC under WATCH of the entry's key (layout.py): the entry (merged
with the stored one, so a second revocation never loosens the first) with its TTL, its
line in the index, the index trimmed of expired lines, and INCR of the version; then a
PUBLISH of `{"version": N, "entry": "<entry JSON>"}` on the channel. A publish lost
between EXEC and PUBLISH (the CLI killed) is caught by the replicas' version poll.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from authz_service.revocation.layout import entry_key, index_key, version_key
from authz_service.revocation.settings import RevocationSettings
from authz_service.revocation.snapshot import (
    BadEntryError,
    Entry,
    decode_entry,
    encode_entry,
    merged_entry,
)

EventHandler = Callable[[int, Entry], None]
_MGET_CHUNK = 512


class RevocationStoreError(Exception):
    """The store could not be read or written (down, hung, refused, answered garbage)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A full read: the version seen first, the live entries, and how many were unusable."""

    version: int
    entries: list[Entry]
    skipped: int = 0


class RevocationStore(Protocol):
    async def version(self) -> int:
        """The store's version counter (0 before any write)."""
        ...

    async def load(self, *, now: float) -> Loaded:
        """Every entry that has not expired by `now`."""
        ...

    async def write(self, entry: Entry, *, now: float) -> tuple[Entry, int]:
        """Store `entry` (merged with what is there); return the stored entry and version."""
        ...

    async def listen(self, on_event: EventHandler) -> None:
        """Call `on_event(version, entry)` for each write announced, until cancelled or the
        connection fails (`RevocationStoreError`)."""
        ...

    async def close(self) -> None: ...


def encode_event(version: int, entry: Entry) -> str:
    return json.dumps({"version": version, "entry": encode_entry(entry)}, separators=(",", ":"))


def decode_event(data: str | bytes) -> tuple[int, Entry]:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEntryError(f"event not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("entry"), str):
        raise BadEntryError("event without an entry")
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadEntryError("event without a version")
    return version, decode_entry(body["entry"])


class RedisRevocationStore:
    """The list in one standalone Redis (redis:// or rediss://), through redis.asyncio."""

    def __init__(self, client: Redis, settings: RevocationSettings) -> None:
        self._client = client
        self._prefix = settings.key_prefix
        self._channel = settings.channel
        self._timeout = settings.call_timeout_seconds

    @classmethod
    def from_settings(cls, settings: RevocationSettings) -> RedisRevocationStore:
        """A client for `settings.redis_url`; nothing connects until the first call."""
        password = os.environ.get(settings.password_env) if settings.password_env else None
        client = Redis.from_url(
            settings.redis_url,
            username=settings.username,
            password=password,
            socket_timeout=settings.call_timeout_seconds,
            socket_connect_timeout=settings.call_timeout_seconds,
            retry_on_timeout=False,
            **_tls_options(settings),
        )
        return cls(client, settings)

    async def version(self) -> int:
        return _as_int(await self._call(self._client.get(version_key(self._prefix))))

    async def load(self, *, now: float) -> Loaded:
        async def read() -> Loaded:
            version = _as_int(await self._client.get(version_key(self._prefix)))
            index = index_key(self._prefix)
            keys: list[Any] = list(await self._client.zrangebyscore(index, f"({now}", "+inf"))
            entries: list[Entry] = []
            skipped = 0
            for start in range(0, len(keys), _MGET_CHUNK):
                for value in await self._client.mget(keys[start : start + _MGET_CHUNK]):
                    if value is None:
                        continue  # expired since the index was read
                    try:
                        entries.append(decode_entry(value))
                    except BadEntryError:
                        skipped += 1
            return Loaded(version, entries, skipped)

        loaded: Loaded = await self._call(read())
        return loaded

    async def write(self, entry: Entry, *, now: float) -> tuple[Entry, int]:
        key = entry_key(self._prefix, entry)
        stored, version = await self._call(self._write(key, entry, now))
        await self._call(self._client.publish(self._channel, encode_event(version, stored)))
        return stored, version

    async def _write(self, key: str, entry: Entry, now: float) -> tuple[Entry, int]:
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    stored = merged_entry(_decoded_or_none(await pipe.get(key)), entry)
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pipe.set(
                        key, encode_entry(stored), ex=max(1, math.ceil(stored.expires_at - now))
                    )
                    pipe.zadd(index_key(self._prefix), {key: stored.expires_at})
                    pipe.zremrangebyscore(index_key(self._prefix), "-inf", now)
                    pipe.incr(version_key(self._prefix))
                    results = await pipe.execute()
                    return stored, int(results[-1])
                except WatchError:
                    continue  # another writer changed the key: merge with theirs and retry

    async def listen(self, on_event: EventHandler) -> None:
        pubsub = self._client.pubsub()
        try:
            await self._call(pubsub.subscribe(self._channel))
            while True:
                message = await _translated(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                )
                if message is None or message.get("type") != "message":
                    continue
                try:
                    on_event(*decode_event(message["data"]))
                except BadEntryError:
                    continue  # not ours; the version poll still sees the real writes
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        """One bounded call; redis-py's errors and timeouts become RevocationStoreError."""
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise RevocationStoreError(f"{type(exc).__name__}: {exc}") from exc


async def _translated(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise RevocationStoreError(f"{type(exc).__name__}: {exc}") from exc


def _tls_options(settings: RevocationSettings) -> dict[str, Any]:
    """redis-py's TLS options for the files given (a rediss:// url only: a plain
    connection refuses them)."""
    files = {
        "ssl_ca_certs": settings.tls_ca_file,
        "ssl_certfile": settings.tls_cert_file,
        "ssl_keyfile": settings.tls_key_file,
    }
    return {name: str(path) for name, path in files.items() if path is not None}


def _as_int(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise RevocationStoreError(f"version is not an integer: {value!r}") from None


def _decoded_or_none(value: Any) -> Entry | None:
    if value is None:
        return None
    try:
        return decode_entry(value)
    except BadEntryError:
        return None  # overwritten by the new entry


@dataclass
class MemoryRevocationStore:
    """The in-memory double: one process's list, with events delivered on write and a
    switch that makes every call fail as a down Redis would."""

    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)
    current_version: int = 0
    down: bool = False
    _listeners: list[EventHandler] = field(default_factory=list)

    async def version(self) -> int:
        self._check()
        return self.current_version

    async def load(self, *, now: float) -> Loaded:
        self._check()
        live = [e for e in self.entries.values() if e.expires_at > now]
        return Loaded(self.current_version, live)

    async def write(self, entry: Entry, *, now: float) -> tuple[Entry, int]:
        self._check()
        key = (type(entry).__name__, *entry.identity)
        stored = merged_entry(self.entries.get(key), entry)
        self.entries[key] = stored
        self.current_version += 1
        for listener in list(self._listeners):
            listener(self.current_version, stored)
        return stored, self.current_version

    async def listen(self, on_event: EventHandler) -> None:
        self._check()
        self._listeners.append(on_event)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._listeners.remove(on_event)

    async def close(self) -> None:
        return None

    def wipe(self) -> None:
        """Lose everything, as a restarted Redis without persistence does."""
        self.entries.clear()
        self.current_version = 0

    def _check(self) -> None:
        if self.down:
            raise RevocationStoreError("memory store is down")
