"""Turning Envoy's raw `:path` and `:authority` into the values the router matches on.

Envoy normalises paths before ext_authz (`normalize_path`, `merge_slashes`,
`path_with_escaped_slashes_action`), but the router is the allow-list, so it defends in
depth: anything that two parsers could read two ways is refused with `BadRequestPath`,
which the caller answers with 400. Refused:

    too_long                  path over 4096 bytes, or query over 16384 bytes
    not_origin_form           the path does not start with "/" (RFC 9112 §3.2.1)
    invalid_char              raw control, space, DEL, "#" or non-ASCII in the target,
                              or a raw "\\" in the path (some servers read it as "/")
    invalid_percent_encoding  "%" not followed by two hex digits
    encoded_separator         %2F or %5C in the path: "/" or "\\" hidden in a segment
    control_char              a control character after decoding (%00, %0A, %7F, C1 ...)
    invalid_utf8              decoded bytes that are not UTF-8
    path_parameter            ";" in the path, raw or %3B: servlet containers strip
                              "matrix" parameters (`/admin;x/stats` is `/admin/stats` to
                              them) while we would match the literal, a known bypass
    dot_segment               "." or ".." as a segment, raw or percent-encoded (RFC 3986
                              §5.2.4: an upstream may resolve them after we matched)
    empty_segment             "//" inside the path; Envoy's merge_slashes removes these,
                              so seeing one means a mis-configured proxy, not a client

Segments are split on "/" *before* percent-decoding, and each is decoded exactly once, so
`%25` is a literal "%" in a parameter, never a second escape. A trailing slash (`/a/b/`) is
kept as `trailing_slash=True`; the router lets it match no template (see router).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

MAX_PATH_BYTES = 4096
MAX_QUERY_BYTES = 16384

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# C0, DEL and C1 controls after decoding.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadRequestPath(Exception):  # noqa: N818 - the public name is part of the contract
    """A request path the policy refuses to interpret; the caller answers 400."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ParsedTarget(NamedTuple):
    """A checked request target: decoded segments, the decoded path and the query."""

    segments: tuple[str, ...]
    path: str
    trailing_slash: bool
    query: dict[str, tuple[str, ...]]


def parse_target(raw: str) -> ParsedTarget:
    """Split and check Envoy's `:path`; raise BadRequestPath for anything ambiguous."""
    path, sep, query = raw.partition("?")
    if len(path) > MAX_PATH_BYTES or len(query) > MAX_QUERY_BYTES:
        # Characters are bytes here: non-ASCII is refused just below.
        raise BadRequestPath("too_long")
    if not _clean_raw(raw) or "\\" in path:
        raise BadRequestPath("invalid_char")
    if ";" in path:
        raise BadRequestPath("path_parameter")
    if not path.startswith("/"):
        raise BadRequestPath("not_origin_form")
    query_values = parse_query(query) if sep else {}
    if path == "/":
        return ParsedTarget((), path, False, query_values)
    if "%" not in path and "/." not in path and "//" not in path:
        # The common case: nothing to decode, no dot or empty segment possible.
        trailing = path.endswith("/")
        segments = tuple((path[1:-1] if trailing else path[1:]).split("/"))
        return ParsedTarget(segments, path, trailing, query_values)
    segments, trailing = _split_path(path)
    decoded_path = "/" + "/".join(segments) + ("/" if trailing else "")
    return ParsedTarget(segments, decoded_path, trailing, query_values)


def _clean_raw(raw: str) -> bool:
    # Raw request-target characters we accept: printable ASCII but space, and no "#" (a
    # fragment is never sent to a server, RFC 9110 §7.1). Anything else is a smuggling
    # vector or a client that did not encode. (str methods: 2x faster than a regex.)
    return raw.isascii() and raw.isprintable() and " " not in raw and "#" not in raw


def _split_path(path: str) -> tuple[tuple[str, ...], bool]:
    parts = path[1:].split("/")
    trailing = parts[-1] == ""
    if trailing:
        parts.pop()
    decoded = []
    for part in parts:
        if not part:
            raise BadRequestPath("empty_segment")
        segment = _decode_segment(part) if "%" in part else part
        if segment in (".", ".."):
            raise BadRequestPath("dot_segment")
        decoded.append(segment)
    return tuple(decoded), trailing


def _decode_segment(part: str) -> str:
    text = percent_decode(part)
    # Raw "/" and "\\" were refused or split on already, so these came from %2F / %5C.
    if "/" in text or "\\" in text:
        raise BadRequestPath("encoded_separator")
    if ";" in text:
        raise BadRequestPath("path_parameter")
    return text


def percent_decode(text: str) -> str:
    """Strictly decode %XX escapes into UTF-8 text; refuse bad escapes and controls."""
    if _BAD_PERCENT.search(text):
        raise BadRequestPath("invalid_percent_encoding")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestPath("invalid_utf8") from None
    if _CONTROL.search(decoded):
        raise BadRequestPath("control_char")
    return decoded


def parse_query(query: str) -> dict[str, tuple[str, ...]]:
    """Parse `a=1&a=2&b` into {"a": ("1", "2"), "b": ("",)} (form encoding: "+" is a
    space, RFC 3986 escapes decoded strictly). Empty pairs are skipped."""
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        key = _decode_query_part(name)
        values.setdefault(key, []).append(_decode_query_part(value))
    return {k: tuple(v) for k, v in values.items()}


def _decode_query_part(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    return percent_decode(text) if "%" in text else text


_host_cache: dict[str, str] = {}
_HOST_CACHE_SIZE = 256


def normalise_host(authority: str) -> str:
    """`API.Example.com:8443` -> `api.example.com`; `[::1]:80` -> `[::1]`.

    Host names are case-insensitive (RFC 9110 §4.2.3) and the port is not part of the
    name the rules list; a trailing root dot (`example.com.`) names the same host."""
    host = _host_cache.get(authority)
    if host is None:
        host = _normalise_host(authority)
        # A service sees few distinct authorities; clearing when full bounds the memory a
        # client sending random Host headers can take.
        if len(_host_cache) >= _HOST_CACHE_SIZE:
            _host_cache.clear()
        _host_cache[authority] = host
    return host


def _normalise_host(authority: str) -> str:
    host = authority.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0:
        host = host[:colon]
    return host[:-1] if host.endswith(".") else host
