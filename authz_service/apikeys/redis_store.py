"""RedisKeyStore: key records in Redis hashes, and the invalidation channel.

The only module of the package that imports redis. Layout (prefix `apikey:` by default):

    apikey:<key id>   HASH  the record (authz_service.apikeys.records), EXPIREAT its end
                            plus RETENTION_SECONDS
    apikey:index      SET   every key id, for `apikey list` (ids whose hash has expired
                            are dropped when listed)
    apikey:events     pub/sub channel: a key id per message, on create, rotate and revoke

Writes to one record go through small Lua scripts so that an update never recreates a
record Redis has already expired. Every redis-py error becomes StoreUnavailable here.

`InvalidationListener` keeps one subscription per process: each message evicts that key
from the KeyCache, each PING reply (sent every PING_SECONDS) tells the cache the channel
is alive, and a lost connection is retried with backoff while the cache uses its
one-second fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from authz_service.apikeys.cache import FALLBACK_SECONDS, KeyCache
from authz_service.apikeys.records import KeyRecord, record_from_fields
from authz_service.apikeys.settings import ApiKeySettings
from authz_service.apikeys.store import RETENTION_SECONDS, StoreUnavailable

log = logging.getLogger(__name__)

PING_SECONDS = 0.15  # well under cache.LIVENESS_SECONDS
RETRY_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return 1
"""


def redis_client(settings: ApiKeySettings) -> aioredis.Redis:
    """A redis.asyncio client for the settings' url and password. TLS: a rediss:// url
    verifies Redis's certificate against the system CAs, or against `?ssl_ca_certs=FILE`
    (and presents `ssl_certfile`/`ssl_keyfile`), options redis-py reads from the url."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.timeout_seconds,
        "socket_connect_timeout": max(settings.timeout_seconds, 1.0),
    }
    if settings.password_env is not None:
        options["password"] = os.environ.get(settings.password_env)
    return aioredis.Redis.from_url(settings.redis_url, **options)


class RedisKeyStore:
    """KeyStore on one Redis (standalone or Sentinel-free url)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, channel: str) -> None:
        self.client = client
        self._prefix = prefix
        self._channel = channel
        self._index = f"{prefix}index"
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)

    async def get(self, key_id: str) -> KeyRecord | None:
        fields = await self._call(self.client.hgetall(self._key(key_id)))
        return record_from_fields(key_id, fields) if fields else None

    async def create(self, record: KeyRecord) -> bool:
        created = await self._call(
            self._create(keys=[self._key(record.key_id)], args=_write_args(record))
        )
        if created:
            await self._call(self.client.sadd(self._index, record.key_id))
        return bool(created)

    async def update(self, record: KeyRecord) -> bool:
        args = _write_args(record)
        return bool(await self._call(self._update(keys=[self._key(record.key_id)], args=args)))

    async def touch(self, key_id: str, when: float) -> None:
        args = ["", "last_used", repr(round(when, 3))]
        await self._call(self._update(keys=[self._key(key_id)], args=args))

    async def ids(self) -> list[str]:
        members = await self._call(self.client.smembers(self._index))
        present = []
        for key_id in sorted(members):
            if await self._call(self.client.exists(self._key(key_id))):
                present.append(key_id)
            else:
                await self._call(self.client.srem(self._index, key_id))
        return present

    async def publish(self, key_id: str) -> None:
        await self._call(self.client.publish(self._channel, key_id))

    async def close(self) -> None:
        await self.client.aclose()

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}{key_id}"

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


def _write_args(record: KeyRecord) -> list[str]:
    expire_at = int(record.ends_at() + RETENTION_SECONDS)
    args = [str(expire_at)]
    for name, value in record.to_fields().items():
        args += [name, value]
    return args


class InvalidationListener:
    """Subscribes to the channel in a background task and evicts what it names."""

    def __init__(self, client: aioredis.Redis, *, channel: str, cache: KeyCache) -> None:
        self._client = client
        self._channel = channel
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self.connects = 0  # successful subscriptions so far (for tests and metrics)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="apikey-invalidation")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._cache.channel_down()

    async def _run(self) -> None:
        failures = 0
        while True:
            connects = self.connects
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._cache.channel_down()
                if self.connects != connects:
                    failures = 0  # it had subscribed: a new outage
                if failures == 0:
                    log.warning(
                        "API key invalidation channel lost; cached keys now live %ss",
                        FALLBACK_SECONDS,
                        extra={"fields": {"error": type(exc).__name__}},
                    )
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            loop = asyncio.get_running_loop()
            next_ping = 0.0
            while True:
                if loop.time() >= next_ping:
                    await pubsub.ping()
                    next_ping = loop.time() + PING_SECONDS
                message = await pubsub.get_message(timeout=PING_SECONDS)
                if message is not None:
                    self._handle(message)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            self.connects += 1
            self._cache.channel_up()  # events may have been missed before this
        elif kind == "message":
            self._cache.channel_heard()
            self._cache.evict(str(message.get("data")))
        elif kind == "pong":
            self._cache.channel_heard()
