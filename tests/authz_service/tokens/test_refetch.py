"""Unknown-kid refetches: the pure gate, and a minute of random-kid flood on a real source.

The flood tests drive a RemoteKeySource through the verifier with a ManualClock and an
in-memory IdP (a Fetcher that counts), so "a minute" takes milliseconds and every count
is exact.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from authz_service.jwks import FetchResult
from authz_service.jwks.verification import FetchingVerifier
from authz_service.tokens import InvalidToken, JwksSettings, RefetchPolicy, UnknownKidGate
from sidecar_runtime.clock import ManualClock
from tests.authz_service.tokens.conftest import Keys, issuer
from tests.authz_service.tokens.factory import SigningKey, claims, jwks, mint

# -- the gate alone ------------------------------------------------------------------------


def test_a_quiet_gate_allows_at_once_then_keeps_the_minimum_interval(
    clock: ManualClock,
) -> None:
    gate = UnknownKidGate(clock, RefetchPolicy(min_interval=2, per_minute=12, burst=4))
    assert gate.allow("a")
    assert not gate.allow("b")  # 0 s later
    clock.advance(1.99)
    assert not gate.allow("b")
    clock.advance(0.01)
    assert gate.allow("b")


def test_the_budget_limits_a_sustained_flood_to_per_minute(clock: ManualClock) -> None:
    gate = UnknownKidGate(clock, RefetchPolicy(min_interval=2, per_minute=12, burst=4))
    grants: list[float] = []
    for step in range(10 * 60 * 3):  # three minutes, a new kid every 0.1 s
        if gate.allow(f"kid-{step}"):
            grants.append(step / 10)
        clock.advance(0.1)
    first_minute = [t for t in grants if t < 60]
    assert len(first_minute) <= 4 + 12  # the burst, then the refill
    for minute in (1, 2):
        assert len([t for t in grants if minute * 60 <= t < (minute + 1) * 60]) <= 12 + 1
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 2 - 1e-9  # never closer than the minimum interval
    assert max(gaps) <= 5 + 0.1 + 1e-9  # and never further apart than 60 / per_minute


def test_a_kid_shown_absent_is_not_refetched_while_remembered(clock: ManualClock) -> None:
    gate = UnknownKidGate(clock, RefetchPolicy(min_interval=2, absent_for=30))
    assert gate.allow("bogus")
    gate.remember_absent("bogus")
    clock.advance(29.9)
    assert not gate.allow("bogus")
    assert gate.allow("new-kid")  # another kid still may
    clock.advance(0.1)
    assert gate.allow("bogus") is False  # the minimum interval since new-kid's refetch
    clock.advance(2)
    assert gate.allow("bogus")


def test_remembered_kids_are_bounded(clock: ManualClock) -> None:
    gate = UnknownKidGate(clock, RefetchPolicy(max_remembered=3))
    for kid in ("a", "b", "c", "d"):
        gate.remember_absent(kid)
    assert not gate.known_absent("a")  # the oldest made room
    assert all(gate.known_absent(kid) for kid in ("b", "c", "d"))


def test_remembered_kids_expire(clock: ManualClock) -> None:
    gate = UnknownKidGate(clock, RefetchPolicy(absent_for=30))
    gate.remember_absent("a")
    clock.advance(30)
    assert not gate.known_absent("a")
    gate.remember_absent("b")  # expired entries are dropped on the way
    assert "a" not in gate._absent


def test_the_policy_comes_from_the_settings() -> None:
    settings = JwksSettings(
        unknown_kid_cooldown_seconds=1,
        unknown_kid_refetches_per_minute=6,
        unknown_kid_refetch_burst=2,
        unknown_kid_absent_seconds=10,
    )
    assert RefetchPolicy.from_settings(settings) == RefetchPolicy(
        min_interval=1, per_minute=6, burst=2, absent_for=10
    )
    assert RefetchPolicy.from_settings(JwksSettings()) == RefetchPolicy()


@pytest.mark.parametrize(
    "bad", [{"min_interval": -1}, {"per_minute": 0}, {"burst": 0}, {"absent_for": -1}]
)
def test_policy_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RefetchPolicy(**bad)


# -- a minute of flood through the verifier and a RemoteKeySource ---------------------------


class MemoryIdp:
    """An in-memory Fetcher that serves the current JWKS and counts every fetch."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document = jwks(*keys)
        self.fetches = 0

    def publish(self, *keys: SigningKey) -> None:
        self.document = jwks(*keys)

    async def fetch(self, url: str, *, timeout_seconds: float, max_bytes: int) -> FetchResult:
        self.fetches += 1
        return FetchResult(200, json.dumps(self.document).encode(), {})


@pytest.fixture
def idp(keys: Keys) -> MemoryIdp:
    return MemoryIdp(keys.rsa)


@pytest.fixture
async def verifier(clock: ManualClock, idp: MemoryIdp) -> AsyncIterator[FetchingVerifier]:
    """A started verifier on `idp`, with the shipped defaults: what the design's numbers
    are about."""
    v = FetchingVerifier([issuer(jwks=JwksSettings())], clock=clock, fetcher=idp)
    await v.start()
    yield v
    await v.close()


async def accepted(v: FetchingVerifier, token: str) -> bool:
    try:
        await v.verify(token)
    except InvalidToken as exc:
        reason = exc.reason
    else:
        return True
    assert reason == "unknown_key"
    return False


def forged(keys: Keys) -> str:
    return mint(keys.ed, claims(), header={"kid": secrets.token_hex(8)})


STEP = 0.1  # seconds between flood rounds
PER_STEP = 3  # forged tokens per round: 30 a second, each with a fresh random kid


@pytest.mark.parametrize("signed_before_published", [False, True])
async def test_rotated_key_verifies_within_seconds_during_a_flood(
    clock: ManualClock,
    keys: Keys,
    idp: MemoryIdp,
    verifier: FetchingVerifier,
    signed_before_published: bool,
) -> None:
    legit = mint(keys.rsa_b, claims())  # signed with the key the IdP rotates in at t=20
    published_at, first_accept = 20.0, None
    for step in range(int(60 / STEP)):
        now = step * STEP
        for _ in range(PER_STEP):
            assert not await accepted(verifier, forged(keys))
        if now >= published_at and len(idp.document["keys"]) == 1:
            idp.publish(keys.rsa, keys.rsa_b)
        # An IdP that signs before it publishes makes the new kid "known absent" first.
        tried = now >= published_at or (signed_before_published and now >= 10)
        if tried and first_accept is None and await accepted(verifier, legit):
            first_accept = now
        clock.advance(STEP)
    assert first_accept is not None
    assert first_accept - published_at <= 5.0 + STEP  # 60 / per_minute, plus one round


async def test_a_minute_of_random_kids_costs_a_bounded_number_of_fetches(
    clock: ManualClock, keys: Keys, idp: MemoryIdp, verifier: FetchingVerifier
) -> None:
    per_minute = []
    for _minute in range(3):
        before = idp.fetches
        for _step in range(int(60 / STEP)):
            for _ in range(PER_STEP):
                assert not await accepted(verifier, forged(keys))
            clock.advance(STEP)
        per_minute.append(idp.fetches - before)
    # 5,400 forged tokens a minute; burst 4 + 12 a minute in the first, 12 after that.
    assert per_minute[0] <= 16
    assert all(count <= 13 for count in per_minute[1:])  # 12, +1 for where a minute cuts
    assert all(count >= 10 for count in per_minute)  # it does keep looking for new keys
    # Genuine tokens were served throughout.
    assert await accepted(verifier, mint(keys.rsa, claims()))


async def test_a_repeated_unknown_kid_costs_one_fetch_per_absent_period(
    clock: ManualClock, keys: Keys, idp: MemoryIdp, verifier: FetchingVerifier
) -> None:
    stale = mint(keys.rsa_b, claims())  # e.g. a client holding a token of a retired key
    for _step in range(int(60 / STEP)):
        assert not await accepted(verifier, stale)
        clock.advance(STEP)
    assert idp.fetches == 1 + 2  # start, then once per 30 s of absent_for
    # A new kid is not held back by the remembered one.
    idp.publish(keys.rsa, keys.ed)
    assert await accepted(verifier, mint(keys.ed, claims()))
    assert idp.fetches == 4


async def test_without_a_flood_a_rotated_key_verifies_on_its_first_use(
    keys: Keys, idp: MemoryIdp, verifier: FetchingVerifier
) -> None:
    idp.publish(keys.rsa, keys.rsa_b)
    assert await accepted(verifier, mint(keys.rsa_b, claims()))
    assert idp.fetches == 2


async def test_a_failed_refetch_does_not_mark_the_kid_absent(
    clock: ManualClock, keys: Keys, idp: MemoryIdp, verifier: FetchingVerifier
) -> None:
    idp.document = {"keys": []}  # the IdP answers garbage for a while
    token = mint(keys.rsa_b, claims())
    assert not await accepted(verifier, token)
    idp.publish(keys.rsa, keys.rsa_b)
    clock.advance(2)  # only the minimum interval, not absent_for
    assert await accepted(verifier, token)
