"""Fixtures for the API-key suite: peppers, a lifecycle on the in-memory store with a
manual clock, an `api_keys:` config file, and a real redis-server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from authz_service.apikeys.hashing import Pepper, PepperRing
from authz_service.apikeys.lifecycle import KeyLifecycle
from authz_service.apikeys.settings import CeilingSettings
from authz_service.apikeys.store import KeyStore, MemoryKeyStore
from sidecar_runtime.clock import Clock, ManualClock
from tests.ratelimit_service.conftest import own_redis as own_redis

# The rate-limit suite's real redis-server fixtures (tests.support.redis_servers), reused.
from tests.ratelimit_service.conftest import redis_server as redis_server
from tests.ratelimit_service.conftest import shared_redis as shared_redis

PEPPER_1 = Pepper("p1", b"pepper-one-" + b"1" * 32)
PEPPER_2 = Pepper("p2", b"pepper-two-" + b"2" * 32)
CEILING = CeilingSettings(
    max_scopes=frozenset({"users:read", "users:write"}), max_roles=frozenset({"service"})
)


@pytest.fixture
def peppers() -> PepperRing:
    return PepperRing([PEPPER_1])


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def lifecycle(store: MemoryKeyStore, clock: ManualClock, peppers: PepperRing) -> KeyLifecycle:
    return make_lifecycle(store, clock, peppers)


def make_lifecycle(
    store: KeyStore, clock: Clock, peppers: PepperRing, *, prefix: str = "eg_live"
) -> KeyLifecycle:
    return KeyLifecycle(
        store=store,
        peppers=peppers,
        key_prefix=prefix,
        ceiling=CEILING,
        default_ttl_days=90,
        clock=clock,
    )


def write_config(directory: Path, redis_url: str, *, extra: str = "") -> Path:
    """An authz config file whose `api_keys:` section uses `redis_url` and a pepper file."""
    pepper = directory / "pepper"
    pepper.write_bytes(PEPPER_1.secret + b"\n")
    path = directory / "authz.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            routes: [{{name: ignored, methods: [GET], path: /x, public: true}}]
            api_keys:
              redis_url: {redis_url}
              peppers: [{{id: p1, file: pepper}}]
              ceiling: {{max_scopes: [users:read, users:write], max_roles: [service]}}
            """
        )
        + textwrap.indent(extra, "  ")
    )
    return path
