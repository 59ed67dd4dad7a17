"""One replica's list over the in-memory store: loading, events, polling, lost state
(fake clock; `sync()` is called directly instead of waiting for the poller)."""

from __future__ import annotations

import logging

import pytest

from authz_service.revocation.settings import RevocationSettings
from authz_service.revocation.snapshot import jti_entry, subject_entry
from authz_service.revocation.store import MemoryRevocationStore
from authz_service.revocation.sync import REVOKED, UNAVAILABLE, RevocationList
from sidecar_runtime.clock import ManualClock
from tests.support.grpc_clients import until

ISS = "https://idp.test"
DAY = 86_400


def _settings(**overrides: object) -> RevocationSettings:
    return RevocationSettings.model_validate({"redis_url": "redis://127.0.0.1:1/0", **overrides})


def _list(store: MemoryRevocationStore, clock: ManualClock, **overrides: object) -> RevocationList:
    return RevocationList(store, _settings(**overrides), clock=clock)


def _refusal(revocations: RevocationList, jti: str | None, clock: ManualClock) -> str | None:
    return revocations.refusal_for(issuer=ISS, jti=jti, sub="alice", iat=clock.now() - 1)


async def _revoke(store: MemoryRevocationStore, clock: ManualClock, jti: str) -> None:
    await store.write(jti_entry(issuer=ISS, jti=jti, now=clock.now(), ttl_seconds=DAY), now=0)


async def test_the_first_read_makes_it_ready_and_loads_every_entry() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    await _revoke(store, clock, "t1")
    revocations = _list(store, clock)
    assert not revocations.ready()
    assert _refusal(revocations, "t2", clock) == UNAVAILABLE  # never fail open
    await revocations.sync()
    assert revocations.ready()
    assert _refusal(revocations, "t1", clock) == REVOKED
    assert _refusal(revocations, "t2", clock) is None
    assert revocations.status().entries == 1
    assert revocations.status().version == 1


async def test_an_unreadable_store_at_start_means_not_ready_until_it_is_read() -> None:
    clock, store = ManualClock(), MemoryRevocationStore(down=True)
    revocations = _list(store, clock)
    await revocations.sync()
    status = revocations.status()
    assert not status.ready
    assert status.stale
    assert status.sync_failures == 1
    assert status.seconds_since_sync is None
    store.down = False
    await revocations.sync()
    assert revocations.ready()
    assert not revocations.status().stale


async def test_an_event_applies_at_once_and_a_missed_one_is_caught_by_the_poll() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    revocations = _list(store, clock)
    await revocations.sync()
    revocations.apply_event(1, jti_entry(issuer=ISS, jti="t1", now=clock.now(), ttl_seconds=DAY))
    assert _refusal(revocations, "t1", clock) == REVOKED
    assert revocations.snapshot.version == 1
    # Two writes whose events never arrived (the store's version moves past ours) ...
    await _revoke(store, clock, "t1")
    await _revoke(store, clock, "t2")
    # ... then a third arrives out of order: applied, but the version stays put.
    revocations.apply_event(5, jti_entry(issuer=ISS, jti="t5", now=clock.now(), ttl_seconds=9))
    assert _refusal(revocations, "t5", clock) == REVOKED
    assert revocations.snapshot.version == 1
    await revocations.sync()
    assert _refusal(revocations, "t2", clock) == REVOKED
    assert revocations.snapshot.version == store.current_version


async def test_keep_last_serves_the_last_list_while_the_store_is_down() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    await _revoke(store, clock, "t1")
    revocations = _list(store, clock)
    await revocations.sync()
    store.down = True
    for _ in range(3):
        clock.advance(0.5)
        await revocations.sync()
    clock.advance(3_600)
    status = revocations.status()
    assert status.ready
    assert status.stale
    assert status.sync_failures == 3
    assert status.seconds_since_sync == pytest.approx(3_601.5)
    assert _refusal(revocations, "t1", clock) == REVOKED
    assert _refusal(revocations, "t2", clock) is None


async def test_fail_closed_refuses_every_token_once_the_list_is_too_stale() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    revocations = _list(store, clock, on_unavailable="fail_closed", fail_closed_after_seconds=5)
    await revocations.sync()
    store.down = True
    clock.advance(5)
    await revocations.sync()
    assert _refusal(revocations, "t2", clock) is None
    assert revocations.ready()
    clock.advance(0.1)
    assert _refusal(revocations, "t2", clock) == UNAVAILABLE
    assert not revocations.ready()
    store.down = False
    await revocations.sync()
    assert _refusal(revocations, "t2", clock) is None
    assert revocations.ready()


async def test_a_store_that_lost_its_data_does_not_unrevoke_what_was_known(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    await _revoke(store, clock, "t1")
    await _revoke(store, clock, "t2")
    revocations = _list(store, clock)
    await revocations.sync()
    store.wipe()
    await _revoke(store, clock, "t3")
    with caplog.at_level(logging.WARNING):
        await revocations.sync()
    assert [_refusal(revocations, j, clock) for j in ("t1", "t2", "t3")] == [REVOKED] * 3
    assert revocations.status().resets == 1
    assert "lost state" in caplog.text


async def test_a_full_reload_runs_even_when_the_version_did_not_move() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    await _revoke(store, clock, "t1")
    revocations = _list(store, clock, full_resync_seconds=30)
    await revocations.sync()
    # Redis restarted empty and was written to again up to the same version number, and
    # the event was missed: the version poll cannot tell, the periodic full reload can.
    store.wipe()
    await _revoke(store, clock, "t9")
    clock.advance(1)
    await revocations.sync()
    assert _refusal(revocations, "t9", clock) is None
    clock.advance(29)
    await revocations.sync()
    assert _refusal(revocations, "t9", clock) == REVOKED


async def test_entries_past_their_expiry_leave_the_list_on_reload() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    entry = subject_entry(
        issuer=ISS, subject="alice", before=clock.now(), now=clock.now(), max_token_lifetime=60
    )
    await store.write(entry, now=clock.now())
    revocations = _list(store, clock, full_resync_seconds=1)
    await revocations.sync()
    assert revocations.refusal_for(issuer=ISS, jti=None, sub="alice", iat=clock.now() - 1)
    clock.advance(60)
    await revocations.sync()
    assert revocations.status().entries == 0


async def test_start_follows_the_channel_and_stop_ends_every_task() -> None:
    clock, store = ManualClock(), MemoryRevocationStore()
    revocations = _list(store, clock)
    await revocations.start()
    try:
        await until(lambda: bool(store._listeners))  # subscribes after one interval
        await _revoke(store, clock, "t1")
        assert _refusal(revocations, "t1", clock) == REVOKED  # no poll needed
    finally:
        await revocations.stop()
    assert not store._listeners
