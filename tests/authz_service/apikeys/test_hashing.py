from __future__ import annotations

import pytest

from authz_service.apikeys.hashing import Pepper, PepperRing
from tests.authz_service.apikeys.conftest import PEPPER_1, PEPPER_2

KEY_ID = "abcdefgh234567zz"
SECRET = "s" * 43


def test_the_digest_is_hex_hmac_sha256_bound_to_the_key_id() -> None:
    digest = PEPPER_1.digest(KEY_ID, SECRET)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert SECRET not in digest
    assert digest != PEPPER_1.digest("bbbbbbbbbbbbbbbb", SECRET)
    assert digest != PEPPER_2.digest(KEY_ID, SECRET)


def test_new_keys_use_the_first_pepper_and_any_listed_one_verifies() -> None:
    old_ring = PepperRing([PEPPER_1])
    pepper_id, stored = old_ring.hash_new(KEY_ID, SECRET)
    assert pepper_id == "p1"
    rotated = PepperRing([PEPPER_2, PEPPER_1])
    assert rotated.hash_new(KEY_ID, SECRET)[0] == "p2"
    assert rotated.matches(key_id=KEY_ID, secret=SECRET, pepper_id="p1", stored=stored)
    assert not rotated.matches(key_id=KEY_ID, secret="t" * 43, pepper_id="p1", stored=stored)


def test_a_retired_pepper_no_longer_verifies() -> None:
    _, stored = PepperRing([PEPPER_1]).hash_new(KEY_ID, SECRET)
    retired = PepperRing([PEPPER_2])
    assert not retired.matches(key_id=KEY_ID, secret=SECRET, pepper_id="p1", stored=stored)


def test_a_hash_under_another_pepper_id_does_not_verify() -> None:
    _, stored = PepperRing([PEPPER_1]).hash_new(KEY_ID, SECRET)
    ring = PepperRing([PEPPER_2, PEPPER_1])
    assert not ring.matches(key_id=KEY_ID, secret=SECRET, pepper_id="p2", stored=stored)
    assert not ring.matches(key_id=KEY_ID, secret=SECRET, pepper_id="p1", stored="é" * 64)


def test_peppers_are_long_distinct_and_never_shown() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Pepper("short", b"x" * 31)
    with pytest.raises(ValueError, match="differ"):
        PepperRing([PEPPER_1, Pepper("p1", b"y" * 32)])
    with pytest.raises(ValueError, match="at least one"):
        PepperRing([])
    assert PEPPER_1.secret.decode() not in repr(PEPPER_1) + repr(PepperRing([PEPPER_1]))
