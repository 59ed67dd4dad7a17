"""The pure list: the check, merging, expiry and the stored JSON (fake clock, no I/O)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from authz_service.principal import Principal
from authz_service.revocation.snapshot import (
    EMPTY,
    BadEntryError,
    RevokedJti,
    RevokedSubject,
    decode_entry,
    encode_entry,
    is_principal_revoked,
    is_revoked,
    jti_entry,
    merge,
    subject_entry,
)
from sidecar_runtime.clock import ManualClock

ISS = "https://idp.test"
DAY = 86_400.0


def test_a_revoked_jti_is_refused_only_for_its_issuer() -> None:
    clock = ManualClock()
    snap = merge(
        EMPTY, [jti_entry(issuer=ISS, jti="t1", now=clock.now(), ttl_seconds=DAY)], version=1,
        now=clock.now(),
    )  # fmt: skip
    assert is_revoked(snap, issuer=ISS, jti="t1", sub="alice", iat=clock.now())
    assert not is_revoked(snap, issuer="https://other.test", jti="t1", sub="alice", iat=None)
    assert not is_revoked(snap, issuer=ISS, jti="t2", sub="alice", iat=clock.now())
    assert not is_revoked(snap, issuer=ISS, jti=None, sub="alice", iat=clock.now())


def test_a_revoked_subject_covers_tokens_issued_before_the_moment() -> None:
    clock = ManualClock()
    before = clock.now()
    entry = subject_entry(
        issuer=ISS, subject="alice", before=before, now=before, max_token_lifetime=DAY
    )
    snap = merge(EMPTY, [entry], version=1, now=clock.now())
    assert is_revoked(snap, issuer=ISS, jti=None, sub="alice", iat=before - 1)
    assert is_revoked(snap, issuer=ISS, jti="any", sub="alice", iat=before - 0.001)
    assert not is_revoked(snap, issuer=ISS, jti=None, sub="alice", iat=before)  # re-login
    assert not is_revoked(snap, issuer=ISS, jti=None, sub="bob", iat=before - 1)
    # No iat: it cannot show it was issued after the revocation.
    assert is_revoked(snap, issuer=ISS, jti=None, sub="alice", iat=None)


def test_merge_drops_entries_once_every_token_they_cover_has_expired() -> None:
    clock = ManualClock()
    entry = jti_entry(issuer=ISS, jti="t1", now=clock.now(), ttl_seconds=60)
    snap = merge(EMPTY, [entry], version=1, now=clock.now())
    clock.advance(59)
    assert len(merge(snap, [], version=1, now=clock.now())) == 1
    clock.advance(1)
    assert len(merge(snap, [], version=1, now=clock.now())) == 0
    assert len(merge(EMPTY, [entry], version=1, now=clock.now())) == 0


def test_merging_a_subject_twice_keeps_the_stricter_entry_in_any_order() -> None:
    clock = ManualClock()
    early = subject_entry(
        issuer=ISS, subject="alice", before=clock.now() - 100, now=clock.now(),
        max_token_lifetime=DAY,
    )  # fmt: skip
    late = subject_entry(
        issuer=ISS, subject="alice", before=clock.now(), now=clock.now(), max_token_lifetime=DAY
    )
    for order in ([early, late], [late, early]):
        snap = merge(EMPTY, order, version=2, now=clock.now())
        assert snap.subjects[(ISS, "alice")].revoked_before == clock.now()
        assert snap.subjects[(ISS, "alice")].expires_at == clock.now() + DAY


def test_a_snapshot_is_never_changed_in_place() -> None:
    clock = ManualClock()
    snap = merge(EMPTY, [], version=1, now=clock.now())
    grown = merge(snap, [jti_entry(issuer=ISS, jti="t", now=clock.now(), ttl_seconds=9)],
                  version=2, now=clock.now())  # fmt: skip
    assert len(snap) == 0
    assert len(grown) == 1
    assert isinstance(grown.jtis, MappingProxyType)
    with pytest.raises(TypeError):
        grown.jtis[(ISS, "x")] = grown.jtis[(ISS, "t")]  # type: ignore[index]


def _principal(**claims: object) -> Principal:
    return Principal(
        subject="alice", issuer=ISS, audiences=("api://demo",), scopes=frozenset(),
        roles=frozenset(), claims={"sub": "alice", **claims}, expires_at=0.0,
    )  # fmt: skip


def test_principal_check_reads_jti_and_iat_from_the_claims() -> None:
    clock = ManualClock()
    snap = merge(
        EMPTY,
        [
            jti_entry(issuer=ISS, jti="t1", now=clock.now(), ttl_seconds=DAY),
            subject_entry(issuer=ISS, subject="alice", before=clock.now() - 10,
                          now=clock.now(), max_token_lifetime=DAY),
        ],
        version=1,
        now=clock.now(),
    )  # fmt: skip
    assert is_principal_revoked(snap, _principal(jti="t1", iat=clock.now()))
    assert not is_principal_revoked(snap, _principal(jti="t2", iat=clock.now()))
    assert is_principal_revoked(snap, _principal(jti="t2", iat=clock.now() - 11))
    # A jti that is not a string or an iat that is not a number counts as absent.
    assert not is_principal_revoked(snap, _principal(jti=["t1"], iat=int(clock.now())))
    assert is_principal_revoked(snap, _principal(iat=True))


def test_entries_round_trip_through_their_json() -> None:
    jti = RevokedJti(ISS, "t1", revoked_at=1.5, expires_at=2.5)
    sub = RevokedSubject(ISS, "alice", revoked_before=1.0, revoked_at=1.5, expires_at=3.0)
    assert decode_entry(encode_entry(jti)) == jti
    assert decode_entry(encode_entry(sub).encode()) == sub


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"kind": "jwt", "issuer": "i", "jti": "j", "revoked_at": 1, "expires_at": 2}',
        '{"kind": "jti", "issuer": "", "jti": "j", "revoked_at": 1, "expires_at": 2}',
        '{"kind": "jti", "issuer": "i", "jti": 5, "revoked_at": 1, "expires_at": 2}',
        '{"kind": "jti", "issuer": "i", "jti": "j", "revoked_at": "1", "expires_at": 2}',
        '{"kind": "jti", "issuer": "i", "jti": "j", "revoked_at": 1, "expires_at": Infinity}',
        '{"kind": "sub", "issuer": "i", "sub": "s", "revoked_at": 1, "expires_at": 2}',
        '{"kind": "sub", "issuer": "i", "sub": "s", "revoked_before": true, '
        '"revoked_at": 1, "expires_at": 2}',
    ],
)
def test_entries_this_package_did_not_write_are_refused(text: str) -> None:
    with pytest.raises(BadEntryError):
        decode_entry(text)
