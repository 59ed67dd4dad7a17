"""The pure core with a fake clock: cache lifetimes, negative cache, bounds, malformed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz_service.introspection import (
    IntrospectionIssuerSettings,
    IntrospectionRefused,
    IntrospectionVerifier,
    NeedIntrospection,
)
from authz_service.introspection.breaker import BreakerState, EndpointBreaker
from authz_service.introspection.cache import token_digest
from authz_service.principal import Principal
from sidecar_runtime.clock import ManualClock

ISSUER = "https://idp.example"


def _settings(**changes: Any) -> IntrospectionIssuerSettings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "introspection_endpoint": "https://idp.example/introspect",
        "client_id": "authz",
        "client_secret_env": "UNUSED",
        "audiences": ["api"],
        "max_cache_seconds": 60,
        "negative_cache_seconds": 5,
        "leeway_seconds": 0,
    }
    values.update(changes)
    return IntrospectionIssuerSettings.model_validate(values)


def _body(clock: ManualClock, **changes: Any) -> bytes:
    answer = {"active": True, "sub": "alice", "aud": "api", "exp": clock.now() + 300}
    answer.update(changes)
    return json.dumps(answer).encode()


def _verifier(clock: ManualClock, **changes: Any) -> IntrospectionVerifier:
    return IntrospectionVerifier.from_settings(_settings(**changes), clock=clock)


def _need(verifier: IntrospectionVerifier, token: str) -> NeedIntrospection:
    found = verifier.verify_now(token)
    assert isinstance(found, NeedIntrospection)
    return found


def _reason(verifier: IntrospectionVerifier, token: str) -> str:
    with pytest.raises(IntrospectionRefused) as caught:
        verifier.verify_now(token)
    return caught.value.reason


def test_a_miss_asks_keyed_by_the_hash_and_never_shows_the_token() -> None:
    verifier = _verifier(ManualClock())
    need = _need(verifier, "opaque-token-1")
    assert need.digest == token_digest("opaque-token-1")
    assert "opaque-token-1" not in repr(need)


def test_an_active_answer_is_cached_for_max_cache_seconds() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    assert verifier.record(_need(verifier, "tok"), _body(clock)) is None
    principal = verifier.verify_fetched("tok")
    assert principal.subject == "alice"
    clock.advance(59)
    assert isinstance(verifier.verify_now("tok"), Principal)
    clock.advance(1)
    assert isinstance(verifier.verify_now("tok"), NeedIntrospection)


def test_an_answer_expiring_sooner_is_cached_until_exp() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    verifier.record(_need(verifier, "tok"), _body(clock, exp=clock.now() + 10))
    clock.advance(9.5)
    assert isinstance(verifier.verify_now("tok"), Principal)
    clock.advance(0.5)
    assert isinstance(verifier.verify_now("tok"), NeedIntrospection)


def test_the_wall_clock_passing_exp_refuses_a_cached_principal() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    verifier.record(_need(verifier, "tok"), _body(clock, exp=clock.now() + 10))
    clock.set_wall(clock.now() + 11)  # the monotonic deadline has not passed
    assert _reason(verifier, "tok") == "expired"


def test_inactive_is_cached_briefly() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    assert verifier.record(_need(verifier, "tok"), b'{"active": false}') == "inactive"
    assert _reason(verifier, "tok") == "inactive"
    clock.advance(5)
    assert isinstance(verifier.verify_now("tok"), NeedIntrospection)


def test_a_zero_negative_ttl_still_serves_the_decision_right_after_the_fetch() -> None:
    clock = ManualClock()
    verifier = _verifier(clock, negative_cache_seconds=0)
    verifier.record(_need(verifier, "tok"), b'{"active": false}')
    with pytest.raises(IntrospectionRefused, match="inactive"):
        verifier.verify_fetched("tok")


def test_nothing_recorded_is_unavailable_and_garbage_is_not_cached() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    need = _need(verifier, "tok")
    assert verifier.record(need, b'{"active": true, "active": true}') == "unavailable"
    with pytest.raises(IntrospectionRefused) as caught:
        verifier.verify_fetched("tok")
    assert (caught.value.reason, caught.value.status_hint) == ("unavailable", 503)
    assert isinstance(verifier.verify_now("tok"), NeedIntrospection)


def test_wrong_audience_is_a_cached_refusal() -> None:
    clock = ManualClock()
    verifier = _verifier(clock)
    verifier.record(_need(verifier, "tok"), _body(clock, aud="other"))
    assert _reason(verifier, "tok") == "wrong_audience"
    assert verifier.stats.refused["wrong_audience"] == 1


@pytest.mark.parametrize("token", ["", "has space", "ünïcode", "a" * 4097, "tok=en"])
def test_implausible_tokens_are_malformed_without_a_lookup(token: str) -> None:
    verifier = _verifier(ManualClock())
    assert _reason(verifier, token) == "malformed"
    assert verifier.stats.cache_misses == 0


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    clock = ManualClock()
    verifier = _verifier(clock, cache_entries=3)
    for n in range(5):
        verifier.record(_need(verifier, f"tok{n}"), _body(clock, sub=f"user{n}"))
    assert len(verifier.cache) == 3
    assert verifier.cache.evictions == 2
    assert isinstance(verifier.verify_now("tok0"), NeedIntrospection)
    assert isinstance(verifier.verify_now("tok4"), Principal)


def test_the_breaker_opens_after_consecutive_failures_and_tries_again_later() -> None:
    clock = ManualClock()
    breaker = EndpointBreaker(failures=2, open_seconds=5, clock=clock)
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one trial at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.rejected == 2
