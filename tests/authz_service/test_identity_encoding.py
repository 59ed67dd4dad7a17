"""The identity headers' encoding: exact round trips through a real Structured Field parser.

Property-style with seeded random strings (no extra test dependency): every value comes
back exactly, through both this module's decoder and plain `http_sf` as an upstream would
use it, and distinct values or lists never share an encoding.
"""

from __future__ import annotations

import random

import http_sf
import pytest

from authz_service.identity_encoding import (
    UnencodableIdentityError,
    decode_item,
    decode_list,
    encode_item,
    encode_list,
)

# The characters that broke the old encoding, and their friends.
TRICKY = [",", " ", ";", '"', "\\", "%", "\r", "\n", "\0", "\t", "=", "'", "\x7f", "\x85"]
TRICKY += ["å", "é", "\u2028", "\ufeff", "😀", "%C3%A5", "%25", '%"', "+"]
EXAMPLES = [
    "",
    " ",
    "alice",
    " alice",
    "alice ",
    "ålice",
    "%C3%A5lice",
    "user,admin",
    "users:read users:write",
    "a;b",
    'say "hi"',
    "back\\slash",
    "line\r\nx-auth-subject: root",
    "nul\0byte",
    "%",
    '%"',
    "https://idp.example.test/",
]


def random_value(rng: random.Random) -> str:
    """Up to 11 characters: mostly tricky or plain ASCII, else any Unicode scalar value."""
    pool = [*TRICKY, *"abcxyzABC019:/-._~!#$&()*"]
    return "".join(
        rng.choice(pool) if rng.random() < 0.6 else _any_scalar(rng)
        for _ in range(rng.randrange(0, 12))
    )


def _any_scalar(rng: random.Random) -> str:
    # Lone surrogates are not Unicode text (the token parser refuses them; see the test
    # below for what the encoder does with them).
    while 0xD800 <= (code := rng.randrange(0, 0x110000)) <= 0xDFFF:
        pass
    return chr(code)


def upstream_item(field: str) -> str:
    """What the docs tell an upstream to do with an Item header."""
    return _value_of(http_sf.parse(field.encode("ascii"), tltype="item"))


def upstream_list(field: str | None) -> list[str]:
    if field is None:
        return []
    members = http_sf.parse(field.encode("ascii"), tltype="list")
    assert isinstance(members, list)
    return [_value_of(member) for member in members]


def _value_of(member: object) -> str:
    assert isinstance(member, tuple)
    value, params = member
    assert params == {}
    assert isinstance(value, str | http_sf.DisplayString)
    return str(value)


@pytest.mark.parametrize("value", EXAMPLES)
def test_examples_round_trip_exactly(value: str) -> None:
    field = encode_item(value)
    assert decode_item(field) == value
    assert upstream_item(field) == value


def test_random_values_round_trip_and_stay_distinct() -> None:
    rng = random.Random(20261205)
    seen: dict[str, str] = {}
    for _ in range(3000):
        value = random_value(rng)
        field = encode_item(value)
        assert field.isascii()
        assert field.isprintable()  # no CR, LF, NUL or other control reaches a header
        assert decode_item(field) == value
        assert upstream_item(field) == value
        assert seen.setdefault(field, value) == value  # injective


def test_random_lists_round_trip_and_distinct_lists_encode_differently() -> None:
    rng = random.Random(9651)
    seen: dict[str | None, tuple[str, ...]] = {}
    for _ in range(2000):
        values = tuple(random_value(rng) for _ in range(rng.randrange(0, 5)))
        field = encode_list(values)
        assert field is None or (field.isascii() and field.isprintable())
        assert decode_list(field) == list(values)
        assert upstream_list(field) == list(values)
        assert seen.setdefault(field, values) == values


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["user,admin"], ["user", "admin"]),
        (["users:read users:write"], ["users:read", "users:write"]),
        (["a; b"], ["a", "b"]),
        ([""], []),
        (["", ""], [""]),
        (['a", "b'], ["a", "b"]),
    ],
)
def test_lists_that_used_to_collide_do_not(a: list[str], b: list[str]) -> None:
    assert encode_list(a) != encode_list(b)
    assert decode_list(encode_list(a)) == a
    assert decode_list(encode_list(b)) == b


@pytest.mark.parametrize(
    ("a", "b"),
    [("ålice", "%C3%A5lice"), (" alice", "alice"), ("alice\n", "alice"), ("%25", "%")],
)
def test_values_that_used_to_collide_do_not(a: str, b: str) -> None:
    assert encode_item(a) != encode_item(b)


def test_printable_ascii_is_a_plain_string_and_the_rest_a_display_string() -> None:
    assert encode_item("alice") == '"alice"'
    assert encode_item('a"b\\c') == '"a\\"b\\\\c"'
    assert encode_item("ålice") == '%"%c3%a5lice"'
    assert encode_item("a\r\nb") == '%"a%0d%0ab"'
    assert encode_list(["admin", "user,admin"]) == '"admin", "user,admin"'
    assert encode_list([]) is None


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb"])
def test_text_that_is_not_unicode_is_refused_not_mangled(value: str) -> None:
    with pytest.raises(UnencodableIdentityError):
        encode_item(value)
    with pytest.raises(UnencodableIdentityError):
        encode_list(["ok", value])


@pytest.mark.parametrize("field", ["alice", '"a";p=1', '("a" "b")', ":YQ==:", "1", "?1"])
def test_the_decoder_takes_only_what_the_encoder_writes(field: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_item(field)
    with pytest.raises(ValueError, match=r"."):
        decode_list(field)
