from __future__ import annotations

import pytest

from authz_service.apikeys.format import (
    BASE62,
    CHECKSUM_CHARS,
    MalformedKey,
    check_prefix,
    checksum,
    format_key,
    new_key_id,
    new_secret,
    parse_key,
)

KEY_ID = "abcdefgh234567zz"
SECRET = "A" * 21 + "z" * 21 + "0"


def _key(prefix: str = "eg_live", key_id: str = KEY_ID, secret: str = SECRET) -> str:
    return format_key(prefix, key_id, secret)


def test_a_made_key_parses_back() -> None:
    key_id, secret = new_key_id(), new_secret()
    parsed = parse_key(format_key("eg_live", key_id, secret), prefix="eg_live")
    assert (parsed.prefix, parsed.key_id, parsed.secret) == ("eg_live", key_id, secret)


def test_fresh_parts_have_the_documented_sizes() -> None:
    assert len(new_key_id()) == 16
    assert len(new_secret()) == 43
    assert len(_key()) == len("eg_live_") + 16 + 1 + 43 + CHECKSUM_CHARS
    assert new_secret() != new_secret()


def test_repr_hides_the_secret() -> None:
    assert SECRET not in repr(parse_key(_key(), prefix="eg_live"))


def test_checksum_is_six_base62_characters() -> None:
    for text in ("", "eg_live_x", "\x00" * 10):
        value = checksum(text)
        assert len(value) == 6
        assert set(value) <= set(BASE62)


def _with(key: str, index: int, char: str) -> str:
    return key[:index] + char + key[index + 1 :]


MALFORMED = {
    "empty": "",
    "only the prefix": "eg_live_",
    "one character short": _key()[:-1],
    "one character more": _key() + "a",
    "key id too short": format_key("eg_live", KEY_ID[:-1], SECRET),
    "key id too long": format_key("eg_live", KEY_ID + "a", SECRET),
    "key id uppercase": format_key("eg_live", KEY_ID.upper(), SECRET),
    "key id with 1 (not base32)": format_key("eg_live", "1" + KEY_ID[1:], SECRET),
    "secret too short": format_key("eg_live", KEY_ID, SECRET[:-1]),
    "secret with -": format_key("eg_live", KEY_ID, "-" + SECRET[1:]),
    "secret with _": format_key("eg_live", KEY_ID, "_" + SECRET[1:]),
    "a typo in the secret": _with(_key(), 30, "B"),
    "a typo in the key id": _with(_key(), 8, "b"),
    "a typo in the checksum": _with(_key(), len(_key()) - 1, "!"),
    "no separator after the id": _key().replace(f"{KEY_ID}_", f"{KEY_ID}a", 1),
    "non-ASCII": _key()[:-1] + "é",
    "surrounding space": f" {_key()}",
    "trailing newline": f"{_key()}\n",
    "a JWT": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    "huge": "eg_live_" + "a" * 10_000,
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_shapes_are_refused_before_any_lookup(text: str) -> None:
    with pytest.raises(MalformedKey) as refused:
        parse_key(text, prefix="eg_live")
    assert refused.value.reason == "malformed"


@pytest.mark.parametrize("prefix", ["eg_test", "eg_live2", "other_live"])
def test_a_well_formed_key_of_another_environment_is_wrong_prefix(prefix: str) -> None:
    with pytest.raises(MalformedKey) as refused:
        parse_key(_key(prefix=prefix), prefix="eg_live")
    assert refused.value.reason == "wrong_prefix"


@pytest.mark.parametrize("prefix", ["eg_live", "acme_test", "a_b", "x" * 16 + "_" + "y" * 16])
def test_prefixes_are_product_and_environment(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["", "eg", "eg_", "_live", "EG_live", "eg_live_x", "1g_live"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="product_environment"):
        check_prefix(prefix)
