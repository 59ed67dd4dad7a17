"""Strict base64url and strict JSON, the two encodings every JOSE object is made of.

Both refuse anything a lenient decoder would quietly accept, because two parsers that
disagree about one token are how signature checks get bypassed (RFC 8725 §2.8, §3.2).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

# RFC 7515 §2: "Base64url Encoding ... with all trailing '=' characters omitted ... and
# without the inclusion of any line breaks, whitespace, or other additional characters."
# The url-safe alphabet is mapped onto the standard one and decoded in strict mode, which
# refuses every other character; '+', '/' and '=' are refused before the mapping.
_URL_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = {0: b"", 2: b"==", 3: b"="}

# With 2 or 3 leftover characters the last one carries 4 or 2 unused bits, which must be
# zero; otherwise several encodings decode to the same bytes (a malleable signature).
_LAST_CHAR_IF_TWO_LEFT = frozenset("AQgw")
_LAST_CHAR_IF_THREE_LEFT = frozenset("AEIMQUYcgkosw048")


class DuplicateMemberError(ValueError):
    """A JSON object names the same member twice."""


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded, canonical base64url; raise ValueError for anything else."""
    if "+" in segment or "/" in segment or "=" in segment:  # standard alphabet or padding
        raise ValueError("not base64url")
    leftover = len(segment) % 4
    if leftover == 1:
        raise ValueError("impossible base64url length")
    if leftover == 2 and segment[-1] not in _LAST_CHAR_IF_TWO_LEFT:
        raise ValueError("non-canonical base64url")
    if leftover == 3 and segment[-1] not in _LAST_CHAR_IF_THREE_LEFT:
        raise ValueError("non-canonical base64url")
    try:
        standard = segment.encode("ascii").translate(_URL_TO_STANDARD) + _PADDING[leftover]
        return binascii.a2b_base64(standard, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not base64url") from None


def b64url_encode(data: bytes) -> str:
    """Encode bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 / RFC 7519 §7.2: "MUST either reject JWTs with duplicate Header
    # Parameter names or ... use only the lexically last". Rejecting is the safe half:
    # a proxy that keeps the first value must never see a different token than we do.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateMemberError("duplicate member name")
    return obj


def _finite_float(text: str) -> float:
    # RFC 8259 §6 has no NaN or Infinity; "1e999" would parse to inf.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_float=_finite_float,
    parse_constant=_no_constants,
)


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON text with no duplicate members and only finite numbers.

    Raises DuplicateMemberError for repeated names and ValueError for anything else wrong.
    """
    # RFC 8259 §8.1: JSON exchanged between systems "MUST be encoded using UTF-8"; json.loads
    # on bytes would also guess UTF-16/32, so decode explicitly and strictly.
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if "\\u" in text:
        _refuse_lone_surrogates(value)
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    # "\ud800" is valid JSON syntax but not a Unicode string (RFC 8259 §8.2); such a `sub`
    # would break whoever encodes it to UTF-8 later, so refuse it here once.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("unpaired surrogate in a JSON string") from exc


def decode_json_object(segment: str) -> dict[str, Any]:
    """Decode one base64url segment holding a JSON object (a JOSE header or JWT claims set)."""
    value = loads_strict(b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
