"""The identity headers' values: one exact encoding (ARCHITECTURE.md 5, docs/identity-headers.md).

Every identity header is an RFC 9651 Structured Field, so no claim value can read as two
roles, two scopes or another subject:

    x-auth-subject, x-auth-issuer, x-auth-client-id   an Item
    x-auth-scopes, x-auth-roles                        a List, sorted, without duplicates;
                                                       no header is the empty list (§3.1)

Each value is a String (§3.3.3, `"..."` with `\\` before `"` and `\\`) when every character
is printable ASCII, and a Display String (§3.3.8, `%"..."`: UTF-8 with `%`, `"`, controls
and non-ASCII bytes as lowercase `%xx`) otherwise. Both decode to exactly the value, CR,
LF, NUL, `,`, `;`, `%` and surrounding spaces included, and decoding is the same
`str(item)` for both. A value that is not Unicode text (a lone surrogate, which the token
parser already refuses) cannot be encoded: `UnencodableIdentityError`, never a lossy header.

Pure: strings in, header values out; the `http_sf` library does the syntax.
"""

from __future__ import annotations

from collections.abc import Iterable

import http_sf


class UnencodableIdentityError(ValueError):
    """A claim value that has no exact header encoding."""


def encode_item(value: str) -> str:
    """One value as a Structured Field Item (String or Display String)."""
    try:
        return http_sf.ser((_bare(value), {}))
    except (UnicodeError, ValueError) as exc:
        raise UnencodableIdentityError("a claim value is not Unicode text") from exc


def encode_list(values: Iterable[str]) -> str | None:
    """Values as a Structured Field List in the order given; None for no values (the
    header is then removed, which RFC 9651 §3.1 defines as the empty list)."""
    members: http_sf.ListType = [(_bare(value), {}) for value in values]
    if not members:
        return None
    try:
        return http_sf.ser(members)
    except (UnicodeError, ValueError) as exc:
        raise UnencodableIdentityError("a claim value is not Unicode text") from exc


def decode_item(field: str) -> str:
    """The value of an identity Item header (the upstream's side; also for tests)."""
    return _member_value(http_sf.parse(field.encode("ascii"), tltype="item"))


def decode_list(field: str | None) -> list[str]:
    """The values of an identity List header; no header (None) is the empty list."""
    if field is None:
        return []
    parsed = http_sf.parse(field.encode("ascii"), tltype="list")
    if not isinstance(parsed, list):
        raise ValueError("not a list")
    return [_member_value(member) for member in parsed]


def _bare(value: str) -> str | http_sf.DisplayString:
    # sf-string is %x20-7E only (RFC 9651 §3.3.3); anything else needs the Display String.
    if value.isascii() and value.isprintable():
        return value
    return http_sf.DisplayString(value)


def _member_value(member: object) -> str:
    # Only what encode_* produces: a String or Display String without parameters.
    if not isinstance(member, tuple) or member[1]:
        raise ValueError("not an identity value (an inner list or parameters)")
    value = member[0]
    if isinstance(value, http_sf.DisplayString):
        return str(value)
    if type(value) is not str:
        raise ValueError("not an identity value (a token, number or byte sequence)")
    return value
