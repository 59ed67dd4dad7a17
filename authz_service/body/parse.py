"""Read a request body as JSON within limits, before any schema sees it.

Pure: bytes and the Content-Type header in, a `BodyVerdict` out. The checks run cheapest
first: size (413), media type (415), then well-formedness (400): UTF-8 without a BOM
(RFC 8259 §8.1), nesting depth, unique member names (§4 leaves duplicates to the parser;
two parsers that keep different copies are a smuggling vector), finite numbers (§6 has no
NaN or Infinity, and 1e999 would become inf) and no lone surrogates (§8.2).

Depth is measured on the raw bytes before `json.loads`, which recurses per level: a
100 000-deep `[[[[` is refused by counting, never by a RecursionError.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from itertools import accumulate
from typing import Any

from authz_service.body.verdict import (
    BODY_TOO_LARGE,
    MALFORMED_BODY,
    UNSUPPORTED_MEDIA_TYPE,
    BodyVerdict,
    accepted,
    refused,
)

_BOM = b"\xef\xbb\xbf"
# A JSON string, written as an unrolled loop so long strings match in linear time.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1
# A \uD800-\uDFFF escape: the only way a lone surrogate reaches a decoded str.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _MalformedError(ValueError):
    """Raised from the json hooks; its message is one of our fixed sentences."""


def parse_body(
    body: bytes,
    content_type: str | None,
    *,
    content_types: Collection[str],
    max_bytes: int,
    max_depth: int,
) -> BodyVerdict:
    """Parse `body` as JSON if it fits the limits; `content_types` are lowercase."""
    if len(body) > max_bytes:
        return refused(BODY_TOO_LARGE, f"The limit is {max_bytes} bytes.")
    if not media_type_accepted(content_type, content_types):
        return refused(UNSUPPORTED_MEDIA_TYPE, "Send JSON encoded as UTF-8.")
    try:
        return accepted(_decode(body, max_depth))
    except _MalformedError as exc:
        return refused(MALFORMED_BODY, str(exc))
    except ValueError:
        # JSONDecodeError, or an integer past int_max_str_digits: the message quotes the
        # body, so only a fixed sentence goes out.
        return refused(MALFORMED_BODY, "The body is not valid JSON.")


def media_type_accepted(header: str | None, content_types: Collection[str]) -> bool:
    """RFC 9110 §8.3.1: the type/subtype compares case-insensitively and parameters are
    ignored, except `charset`, which JSON only allows as UTF-8 (RFC 8259 §8.1)."""
    if header is None:
        return False
    media_type, _, parameters = header.partition(";")
    if media_type.strip(" \t").lower() not in content_types:
        return False
    charsets = []
    for parameter in parameters.split(";") if parameters else ():
        name, equals, value = parameter.partition("=")
        name = name.strip(" \t").lower()
        if not name and not equals:
            continue  # RFC 9110 allows empty parameters ("a/b;;c=d")
        if not name or not equals:
            return False
        if name == "charset":
            charsets.append(value.strip(" \t").strip('"').lower())
    # Two charsets are ambiguous; a quoted ";" splits a value and fails closed above.
    return charsets in ([], ["utf-8"])


def _decode(body: bytes, max_depth: int) -> Any:
    if body.startswith(_BOM):
        raise _MalformedError("A byte order mark is not allowed.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _MalformedError("The body is not valid UTF-8.") from None
    if nesting_depth_exceeds(body, max_depth):
        raise _MalformedError(f"Nesting is limited to {max_depth} levels.")
    value = loads_strict(text)
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
        raise _MalformedError("Strings must not hold lone surrogates.")
    return value


def loads_strict(text: str) -> Any:
    """`json.loads` refusing duplicate member names and non-finite numbers (ValueError).

    Recurses per nesting level: check `nesting_depth_exceeds` first on untrusted input."""
    return json.loads(
        text,
        object_pairs_hook=_unique_members,
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
    )


def nesting_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than `max_depth` (`{}` is depth 1).

    Brackets inside strings do not count. On malformed input the count can only be too
    high, which is a 400 either way."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # the common case: too few brackets to nest that deep
    structure = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, structure)), default=0) > max_depth


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _MalformedError("Member names must be unique.")
    return members


def _refuse_constant(_name: str) -> Any:
    raise _MalformedError("Numbers must be finite.")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise _MalformedError("Numbers must be finite.")
    return number


def _has_lone_surrogate(value: Any) -> bool:
    # Iterative: the depth is already bounded, but a walk needs no stack either way.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
