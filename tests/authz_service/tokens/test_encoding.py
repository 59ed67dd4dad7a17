from __future__ import annotations

import base64

import pytest

from authz_service.tokens.encoding import (
    DuplicateMemberError,
    b64url_decode,
    b64url_encode,
    decode_json_object,
    loads_strict,
)


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"\xff\xfe\x00", bytes(range(256))])
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


@pytest.mark.parametrize(
    "segment",
    [
        "Zm9v=",  # padding
        "Zg==",  # padding
        "Zm+v",  # standard alphabet
        "Zm/v",
        "Zm9 v",  # whitespace
        "Zm9v\n",
        "Z",  # impossible length
        "Zh",  # non-zero unused bits: "Zg" is the canonical form of b"f"
        "Zm9",  # non-canonical 3-char tail ("Zm8" is canonical)
        "Zm9v\u00e9",  # non-ASCII
    ],
)
def test_b64url_refuses_lenient_forms(segment: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(segment)


def test_b64url_canonical_tails_decode() -> None:
    assert b64url_decode("Zg") == b"f"
    assert b64url_decode("Zm8") == b"fo"
    assert base64.urlsafe_b64decode("Zh==") == b"f"  # what a lenient decoder would accept


def test_json_duplicate_member_refused_at_any_depth() -> None:
    with pytest.raises(DuplicateMemberError):
        loads_strict(b'{"a": 1, "a": 2}')
    with pytest.raises(DuplicateMemberError):
        loads_strict(b'{"x": {"b": 1, "b": 1}}')
    # Escapes that decode to the same name are the same name.
    with pytest.raises(DuplicateMemberError):
        loads_strict(b'{"alg": "RS256", "\\u0061lg": "none"}')


@pytest.mark.parametrize(
    "text",
    [
        b'{"exp": NaN}',
        b'{"exp": Infinity}',
        b'{"exp": -Infinity}',
        b'{"exp": 1e999}',
        b'{"exp": -1e400}',
    ],
)
def test_json_non_finite_numbers_refused(text: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|range"):
        loads_strict(text)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": "\xff"}',  # invalid UTF-8
        b'\xef\xbb\xbf{"a": 1}',  # UTF-8 BOM
        '{"a": 1}'.encode("utf-16"),  # another encoding json.loads would guess
        b'{"sub": "\\ud800"}',  # lone surrogate
        b'{"a": 1} x',  # trailing data
        b"[" * 100_000 + b"]" * 100_000,  # nested far too deep
    ],
)
def test_json_refuses_invalid_text(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        loads_strict(data)


def test_json_accepts_escaped_surrogate_pair() -> None:
    assert loads_strict(b'{"n": "\\ud83d\\ude00"}') == {"n": "\U0001f600"}


@pytest.mark.parametrize("value", [b"[]", b'"x"', b"1", b"null"])
def test_decode_json_object_requires_an_object(value: bytes) -> None:
    with pytest.raises(ValueError, match="object"):
        decode_json_object(b64url_encode(value))
