"""FetchingApiKeyVerifier: the pure ApiKeyVerifier wired to Redis.

The I/O half, like authz_service.jwks.verification for tokens: it answers the core's
`NeedKey` by reading the record from Redis (within `timeout_seconds`), keeps the
invalidation listener running, and writes `last_used` at most once a minute per key in
this process, in the background (a failed write is only logged).

    verifier = FetchingApiKeyVerifier.from_settings(settings, peppers=ring, clock=clock)
    await verifier.start()
    principal = await verifier.verify(key, client_address="203.0.113.9")  # or InvalidApiKey
    await verifier.close()

Redis unreachable when a record must be read is `InvalidApiKey("store_unavailable")`:
fail closed, and the caller may answer 503 rather than 401.
"""

from __future__ import annotations

import asyncio
import logging

from authz_service.apikeys.cache import KeyCache, LastUsedThrottle
from authz_service.apikeys.hashing import PepperRing
from authz_service.apikeys.redis_store import InvalidationListener, RedisKeyStore, redis_client
from authz_service.apikeys.settings import ApiKeySettings
from authz_service.apikeys.store import StoreUnavailable
from authz_service.apikeys.verifier import ApiKeyStats, ApiKeyVerifier, NeedKey
from authz_service.principal import Principal
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)

MAX_PENDING_TOUCHES = 256  # last_used writes in flight; more are skipped, not queued


class FetchingApiKeyVerifier:
    """Verifies API keys against Redis, through the cache."""

    def __init__(
        self,
        *,
        verifier: ApiKeyVerifier,
        store: RedisKeyStore,
        listener: InvalidationListener,
        clock: Clock,
    ) -> None:
        self.verifier = verifier
        self.store = store
        self.listener = listener
        self._clock = clock
        self._throttle = LastUsedThrottle(clock=clock)
        self._touches: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: ApiKeySettings,
        *,
        peppers: PepperRing,
        clock: Clock,
        stats: ApiKeyStats | None = None,
    ) -> FetchingApiKeyVerifier:
        cache = KeyCache(settings.cache_limits(), clock=clock)
        client = redis_client(settings)
        verifier = ApiKeyVerifier(
            prefix=settings.key_prefix,
            issuer=settings.issuer,
            peppers=peppers,
            cache=cache,
            clock=clock,
            stats=stats,
        )
        store = RedisKeyStore(client, prefix=settings.redis_prefix, channel=settings.channel)
        listener = InvalidationListener(client, channel=settings.channel, cache=cache)
        return cls(verifier=verifier, store=store, listener=listener, clock=clock)

    async def start(self) -> None:
        self.listener.start()

    async def close(self) -> None:
        await self.listener.close()
        for task in list(self._touches):
            task.cancel()
        await asyncio.gather(*self._touches, return_exceptions=True)
        await self.store.close()

    async def fetch(self, need: NeedKey) -> None:
        """Read the record `need` names into the cache (None too: a known unknown). A store
        that cannot be read leaves the cache as it was: the caller then refuses (503)."""
        try:
            record = await self.store.get(need.key_id)
        except StoreUnavailable:
            return
        self.verifier.cache.put(need.key_id, record, generation=need.generation)

    def note_use(self, principal: Principal) -> None:
        """Record a key's use (`last_used`, at most once a minute per key), in the
        background; call on the event loop after a decision that used the key."""
        self._touch(principal)

    async def verify(self, presented: str, *, client_address: str = "") -> Principal:
        """The key's Principal; InvalidApiKey (and nothing else) if refused."""
        found = self.verifier.verify_now(presented, client_address=client_address)
        if isinstance(found, NeedKey):
            found = await self._fetch_and_verify(presented, found, client_address)
        self._touch(found)
        return found

    async def _fetch_and_verify(
        self, presented: str, need: NeedKey, client_address: str
    ) -> Principal:
        try:
            record = await self.store.get(need.key_id)
        except StoreUnavailable:
            raise self.verifier.refuse("store_unavailable", client_address) from None
        self.verifier.cache.put(need.key_id, record, generation=need.generation)
        return self.verifier.verify_fetched(presented, record, client_address=client_address)

    def _touch(self, principal: Principal) -> None:
        key_id = principal.key_id
        if key_id is None or len(self._touches) >= MAX_PENDING_TOUCHES:
            return
        if self._throttle.due(key_id):
            task = asyncio.create_task(self._write_last_used(key_id, self._clock.now()))
            self._touches.add(task)
            task.add_done_callback(self._touches.discard)

    async def _write_last_used(self, key_id: str, when: float) -> None:
        try:
            await self.store.touch(key_id, when)
        except StoreUnavailable as exc:
            log.warning(
                "could not record an API key's last use",
                extra={"fields": {"key_id": key_id, "error": str(exc)}},
            )
