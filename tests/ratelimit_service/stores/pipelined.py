"""Which client a store got: the pipelined one (a standalone URL) or redis-py."""

from __future__ import annotations

from ratelimit_service.store import BucketStore
from ratelimit_service.stores.redis_pipe import RedisPipe
from ratelimit_service.stores.redis_store import RedisStore
from ratelimit_service.stores.redis_transports import PipeTransport


def is_pipelined(store: BucketStore) -> bool:
    return isinstance(store, RedisStore) and isinstance(store.transport, PipeTransport)


def is_redis_py(store: BucketStore) -> bool:
    return isinstance(store, RedisStore) and not is_pipelined(store)


def pipe_of(store: RedisStore) -> RedisPipe:
    transport = store.transport
    assert isinstance(transport, PipeTransport)
    return transport.pipe
