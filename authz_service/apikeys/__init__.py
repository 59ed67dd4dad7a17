"""API keys: `<prefix>_<key id>_<secret><checksum>`, stored as keyed hashes in Redis.

The pure core (no I/O; time from an injected Clock):

    format      make and strictly parse the key text (docs/api-keys.md)
    hashing     Pepper, PepperRing: HMAC-SHA-256 under rotatable peppers
    records     KeyRecord and its Redis hash fields
    cache       KeyCache (bounded, TTL, negative entries, channel liveness), LastUsedThrottle
    verifier    ApiKeyVerifier.verify_now(key) -> Principal | NeedKey, verify_fetched(key,
                record) -> Principal; InvalidApiKey(reason) otherwise; ApiKeyStats
    errors      InvalidApiKey and its reason codes, LifecycleError
    store       the KeyStore port and MemoryKeyStore

The edges:

    settings     ApiKeySettings (the `api_keys:` section), load_peppers
    redis_store  RedisKeyStore, InvalidationListener (the only module importing redis)
    fetching     FetchingApiKeyVerifier: the core wired to Redis, for the sidecar
    lifecycle    KeyLifecycle: create, list, show, rotate, revoke
    commands     the `authz-service apikey ...` CLI group
"""

from __future__ import annotations

from authz_service.apikeys.errors import REASONS, InvalidApiKey, LifecycleError, Reason
from authz_service.apikeys.verifier import ApiKeyStats, ApiKeyVerifier, NeedKey

__all__ = [
    "REASONS",
    "ApiKeyStats",
    "ApiKeyVerifier",
    "InvalidApiKey",
    "LifecycleError",
    "NeedKey",
    "Reason",
]
