from __future__ import annotations

import pytest

from authz_service.apikeys.errors import LifecycleError
from authz_service.apikeys.format import parse_key
from authz_service.apikeys.lifecycle import DAY, KeyLifecycle
from authz_service.apikeys.store import MemoryKeyStore
from sidecar_runtime.clock import ManualClock


async def test_create_stores_a_keyed_hash_and_never_the_secret(
    lifecycle: KeyLifecycle, store: MemoryKeyStore, clock: ManualClock
) -> None:
    new = await lifecycle.create(
        subject="svc-a", scopes=["users:read"], roles=["service"], tenant="t1", plan="gold"
    )
    parsed = parse_key(new.key, prefix="eg_live")
    fields = store.hashes[parsed.key_id]
    assert parsed.secret not in str(store.hashes)
    assert new.key not in repr(new)
    assert fields["pepper"] == "p1"
    assert len(fields["hash"]) == 64
    assert fields["scopes"] == "users:read"
    assert float(fields["expires"]) == clock.now() + 90 * DAY
    assert store.events == [parsed.key_id]


async def test_the_ceiling_refuses_more_scopes_roles_or_lifetime(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(LifecycleError, match=r"scopes over the ceiling.*admin:all"):
        await lifecycle.create(subject="s", scopes=["users:read", "admin:all"])
    with pytest.raises(LifecycleError, match=r"roles over the ceiling.*admin"):
        await lifecycle.create(subject="s", roles=["admin"])
    with pytest.raises(LifecycleError, match="ttl"):
        await lifecycle.create(subject="s", ttl_days=366)
    with pytest.raises(LifecycleError, match="subject"):
        await lifecycle.create(subject="two words")


async def test_revoke_marks_the_record_and_publishes(
    lifecycle: KeyLifecycle, store: MemoryKeyStore, clock: ManualClock
) -> None:
    new = await lifecycle.create(subject="s")
    clock.advance(10)
    revoked = await lifecycle.revoke(new.record.key_id)
    assert revoked.revoked == clock.now()
    assert store.events == [new.record.key_id] * 2
    with pytest.raises(LifecycleError, match="already revoked"):
        await lifecycle.revoke(new.record.key_id)
    with pytest.raises(LifecycleError, match="revoked"):
        await lifecycle.rotate(new.record.key_id, overlap_seconds=0)


async def test_rotate_keeps_the_metadata_and_bounds_the_old_key(
    lifecycle: KeyLifecycle, clock: ManualClock
) -> None:
    old = await lifecycle.create(subject="s", scopes=["users:read"], tenant="t1", plan="p")
    clock.advance(DAY)
    new = await lifecycle.rotate(old.record.key_id, overlap_seconds=3600)
    assert new.record.key_id != old.record.key_id
    assert (new.record.subject, new.record.scopes, new.record.tenant, new.record.plan) == (
        "s",
        frozenset({"users:read"}),
        "t1",
        "p",
    )
    assert new.record.rotated_from == old.record.key_id
    assert new.record.expires == clock.now() + 90 * DAY
    retired = await lifecycle.show(old.record.key_id)
    assert retired.replaced_by == new.record.key_id
    assert retired.ends_at() == clock.now() + 3600
    with pytest.raises(LifecycleError, match="already replaced"):
        await lifecycle.rotate(old.record.key_id, overlap_seconds=0)


async def test_an_expired_key_cannot_be_rotated(
    lifecycle: KeyLifecycle, clock: ManualClock
) -> None:
    new = await lifecycle.create(subject="s", ttl_days=1)
    clock.advance(DAY)
    with pytest.raises(LifecycleError, match="expired"):
        await lifecycle.rotate(new.record.key_id, overlap_seconds=60)


async def test_list_and_show(lifecycle: KeyLifecycle, clock: ManualClock) -> None:
    first = await lifecycle.create(subject="a")
    clock.advance(1)
    second = await lifecycle.create(subject="b")
    assert [r.key_id for r in await lifecycle.list()] == [
        first.record.key_id,
        second.record.key_id,
    ]
    assert (await lifecycle.show(second.record.key_id)).subject == "b"
    with pytest.raises(LifecycleError, match="no API key"):
        await lifecycle.show("a" * 16)
    with pytest.raises(LifecycleError, match="not a key id"):
        await lifecycle.show("../etc")
