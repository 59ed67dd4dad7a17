from __future__ import annotations

import pytest

from authz_service.apikeys.cache import CacheLimits, KeyCache
from authz_service.apikeys.errors import InvalidApiKey
from authz_service.apikeys.format import format_key, parse_key
from authz_service.apikeys.hashing import PepperRing
from authz_service.apikeys.lifecycle import DAY, KeyLifecycle
from authz_service.apikeys.store import MemoryKeyStore
from authz_service.apikeys.verifier import ApiKeyVerifier, NeedKey
from authz_service.principal import Principal
from sidecar_runtime.clock import ManualClock
from tests.authz_service.apikeys.conftest import PEPPER_1, PEPPER_2, make_lifecycle


class Replica:
    """The pure verifier plus what the Redis adapter does on NeedKey, over a MemoryKeyStore."""

    def __init__(self, store: MemoryKeyStore, clock: ManualClock, peppers: PepperRing) -> None:
        self.store = store
        cache = KeyCache(CacheLimits(), clock=clock)
        cache.channel_up()
        self.verifier = ApiKeyVerifier(
            prefix="eg_live", issuer="apikey", peppers=peppers, cache=cache, clock=clock
        )

    async def verify(self, key: str, address: str = "192.0.2.1") -> Principal:
        found = self.verifier.verify_now(key, client_address=address)
        if isinstance(found, NeedKey):
            record = await self.store.get(found.key_id)
            self.verifier.cache.put(found.key_id, record, generation=found.generation)
            return self.verifier.verify_fetched(key, record, client_address=address)
        return found

    async def reason(self, key: str, address: str = "192.0.2.1") -> str:
        with pytest.raises(InvalidApiKey) as refused:
            await self.verify(key, address)
        return refused.value.reason


@pytest.fixture
def replica(store: MemoryKeyStore, clock: ManualClock, peppers: PepperRing) -> Replica:
    return Replica(store, clock, peppers)


async def test_a_valid_key_yields_a_principal_like_a_token(
    lifecycle: KeyLifecycle, replica: Replica
) -> None:
    new = await lifecycle.create(
        subject="svc-a", scopes=["users:read"], roles=["service"], tenant="t1", plan="gold"
    )
    principal = await replica.verify(new.key)
    assert principal.subject == "svc-a"
    assert principal.issuer == "apikey"
    assert principal.key_id == new.record.key_id
    assert principal.scopes == {"users:read"}
    assert principal.roles == {"service"}
    assert principal.expires_at == new.record.expires
    assert dict(principal.claims) == {
        "iss": "apikey",
        "sub": "svc-a",
        "key_id": new.record.key_id,
        "scope": "users:read",
        "roles": ["service"],
        "tenant": "t1",
        "plan": "gold",
        "iat": new.record.created,
        "exp": new.record.expires,
    }
    with pytest.raises(TypeError):
        principal.claims["sub"] = "other"  # type: ignore[index]


async def test_the_second_request_is_answered_from_the_cache(
    lifecycle: KeyLifecycle, replica: Replica
) -> None:
    new = await lifecycle.create(subject="s")
    assert isinstance(replica.verifier.verify_now(new.key), NeedKey)
    await replica.verify(new.key)
    assert isinstance(replica.verifier.verify_now(new.key), Principal)
    assert replica.verifier.stats.cache_hits == 1


async def test_refusal_reasons(lifecycle: KeyLifecycle, replica: Replica) -> None:
    new = await lifecycle.create(subject="s")
    key_id = new.record.key_id
    assert await replica.reason(new.key[:-1]) == "malformed"
    assert await replica.reason(format_key("eg_test", key_id, "x" * 43)) == "wrong_prefix"
    assert await replica.reason(format_key("eg_live", "a" * 16, "x" * 43)) == "unknown_key"
    assert await replica.reason(format_key("eg_live", key_id, "x" * 43)) == "bad_secret"


async def test_expiry_is_refused_as_expired(
    lifecycle: KeyLifecycle, replica: Replica, clock: ManualClock
) -> None:
    new = await lifecycle.create(subject="s", ttl_days=1)
    clock.advance(DAY - 1)
    await replica.verify(new.key)
    clock.advance(1)
    assert await replica.reason(new.key) == "expired"


async def test_rotation_overlap_then_expired(
    lifecycle: KeyLifecycle, replica: Replica, clock: ManualClock
) -> None:
    old = await lifecycle.create(subject="s")
    new = await lifecycle.rotate(old.record.key_id, overlap_seconds=600)
    replica.verifier.cache.evict(old.record.key_id)  # the rotate event
    assert (await replica.verify(old.key)).expires_at == clock.now() + 600
    assert (await replica.verify(new.key)).subject == "s"
    clock.advance(600)
    assert await replica.reason(old.key) == "expired"
    await replica.verify(new.key)


async def test_revoked_after_the_event(lifecycle: KeyLifecycle, replica: Replica) -> None:
    new = await lifecycle.create(subject="s")
    await replica.verify(new.key)
    await lifecycle.revoke(new.record.key_id)
    replica.verifier.cache.evict(new.record.key_id)  # the revoke event
    assert await replica.reason(new.key) == "revoked"


async def test_a_guess_at_a_revoked_key_is_a_bad_secret(
    lifecycle: KeyLifecycle, replica: Replica
) -> None:
    new = await lifecycle.create(subject="s")
    await lifecycle.revoke(new.record.key_id)
    guess = format_key("eg_live", new.record.key_id, "y" * 43)
    assert await replica.reason(guess) == "bad_secret"


async def test_keys_under_a_listed_old_pepper_keep_working(
    store: MemoryKeyStore, clock: ManualClock
) -> None:
    old_key = await make_lifecycle(store, clock, PepperRing([PEPPER_1])).create(subject="s")
    rotated = PepperRing([PEPPER_2, PEPPER_1])
    new_key = await make_lifecycle(store, clock, rotated).create(subject="t")
    assert new_key.record.pepper_id == "p2"
    replica = Replica(store, clock, rotated)
    assert (await replica.verify(old_key.key)).subject == "s"
    retired = Replica(store, clock, PepperRing([PEPPER_2]))
    assert await retired.reason(old_key.key) == "bad_secret"


async def test_guesses_are_counted_per_address_in_a_bounded_map(
    lifecycle: KeyLifecycle, replica: Replica
) -> None:
    stats = replica.verifier.stats
    stats.max_addresses = 3
    new = await lifecycle.create(subject="s")
    wrong = format_key("eg_live", new.record.key_id, "z" * 43)
    for _ in range(5):
        await replica.reason(wrong, "198.51.100.7")
    for n in range(4):
        await replica.reason(format_key("eg_live", f"{'b' * 15}{n + 2}", "z" * 43), f"10.0.0.{n}")
    await replica.reason("garbage", "10.9.9.9")  # malformed: refused, not a guess
    await replica.verify(new.key, "10.9.9.9")
    assert stats.refused == {"bad_secret": 5, "unknown_key": 4, "malformed": 1}
    assert len(stats.guesses_by_address) == 3
    assert stats.addresses_dropped == 2
    assert "198.51.100.7" not in stats.guesses_by_address  # the oldest address went first
    assert stats.top_guessers(1) == [("10.0.0.1", 1)]
    assert stats.accepted == 1


async def test_a_record_for_another_key_id_is_never_used(
    lifecycle: KeyLifecycle, replica: Replica
) -> None:
    first = await lifecycle.create(subject="a")
    second = await lifecycle.create(subject="b")
    with pytest.raises(InvalidApiKey) as refused:
        replica.verifier.verify_fetched(first.key, second.record)
    assert refused.value.reason == "unknown_key"
    assert parse_key(first.key, prefix="eg_live").key_id == first.record.key_id
