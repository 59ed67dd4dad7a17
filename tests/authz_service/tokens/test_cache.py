from __future__ import annotations

import pytest

from authz_service.principal import Principal
from authz_service.tokens.cache import CachedToken, VerifiedTokenCache


def entry(subject: str) -> CachedToken:
    principal = Principal(
        subject=subject,
        issuer="i",
        audiences=("a",),
        scopes=frozenset(),
        roles=frozenset(),
        claims={},
        expires_at=1.0,
    )
    return CachedToken(principal, "i", ("kid", "thumb"), 0.0, 1.0)


def test_bounded_and_evicts_the_oldest_insertion() -> None:
    cache = VerifiedTokenCache(2)
    cache.put("a", entry("a"))
    cache.put("b", entry("b"))
    cache.put("c", entry("c"))
    assert len(cache) == 2
    assert cache.get("a") is None
    assert cache.get("b") is not None
    assert cache.get("c") is not None


def test_replacing_an_entry_evicts_nothing() -> None:
    cache = VerifiedTokenCache(2)
    cache.put("a", entry("a"))
    cache.put("b", entry("b"))
    cache.put("a", entry("a2"))
    assert len(cache) == 2
    hit = cache.get("a")
    assert hit is not None
    assert hit.principal.subject == "a2"


def test_discard_and_clear() -> None:
    cache = VerifiedTokenCache(4)
    cache.put("a", entry("a"))
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None
    cache.put("b", entry("b"))
    cache.clear()
    assert len(cache) == 0


def test_zero_capacity_disables_caching() -> None:
    cache = VerifiedTokenCache(0)
    cache.put("a", entry("a"))
    assert len(cache) == 0


def test_negative_capacity_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        VerifiedTokenCache(-1)
