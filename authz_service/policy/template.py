"""Path templates: `/api/v1/users/{user_id}` and `/static/{path...}`.

Grammar (a template is config, so it is checked strictly and once):

    template  = "/" | ("/" segment)+
    segment   = literal | "{" name "}" | "{" name "...}"      ; the `...` form only last
    literal   = 1*( unreserved / sub-delims / ":" / "@" )     ; RFC 3986 pchar, no "%"
    name      = identifier ([A-Za-z_][A-Za-z0-9_]*), unique within the template

`{name}` captures exactly one segment; `{name...}` captures the rest of the path, one
segment or more. Literals are compared with the *decoded* request segment, so they may
not contain `%` (write the decoded character instead) nor `?`/`#` (not part of a path).
A template never ends with `/` except the root template `/`: a trailing slash is a
different resource (see `authz_service.policy.router`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

MAX_TEMPLATE_SEGMENTS = 64

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 3986 pchar without pct-encoded: unreserved / sub-delims / ":" / "@".
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")


class SegmentKind(Enum):
    """What a template segment matches; the order is the matching precedence."""

    LITERAL = 0
    PARAM = 1
    REST = 2


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    text: str  # the literal text, or the parameter name


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template; `shape` ignores parameter names (two templates with one shape
    match exactly the same paths)."""

    source: str
    segments: tuple[Segment, ...]

    @property
    def shape(self) -> str:
        parts = []
        for seg in self.segments:
            if seg.kind is SegmentKind.LITERAL:
                parts.append(seg.text)
            else:
                parts.append("{}" if seg.kind is SegmentKind.PARAM else "{...}")
        return "/" + "/".join(parts)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.segments if s.kind is not SegmentKind.LITERAL)


class TemplateError(ValueError):
    """A template that does not follow the grammar above."""


def parse_template(source: str) -> PathTemplate:
    """Parse and check one path template; raise TemplateError saying what is wrong."""
    if not source.startswith("/"):
        raise TemplateError("must start with '/'")
    if source == "/":
        return PathTemplate(source, ())
    if source.endswith("/"):
        raise TemplateError("must not end with '/' (a trailing slash is a different path)")
    raw_segments = source[1:].split("/")
    if len(raw_segments) > MAX_TEMPLATE_SEGMENTS:
        raise TemplateError(f"has more than {MAX_TEMPLATE_SEGMENTS} segments")
    segments = tuple(_parse_segment(raw, i + 1) for i, raw in enumerate(raw_segments))
    _check_params(segments)
    return PathTemplate(source, segments)


def _parse_segment(raw: str, position: int) -> Segment:
    if not raw:
        raise TemplateError(f"segment {position} is empty ('//')")
    if raw.startswith("{") and raw.endswith("}"):
        return _parse_param(raw[1:-1], position)
    if "{" in raw or "}" in raw:
        # `/files/{name}.json` would need sub-segment matching, which we do not offer.
        raise TemplateError(f"segment {position} {raw!r}: a parameter must be a whole segment")
    if raw in (".", ".."):
        raise TemplateError(f"segment {position} is a dot segment {raw!r}")
    if not _LITERAL.fullmatch(raw):
        raise TemplateError(
            f"segment {position} {raw!r} has a character not allowed in a literal "
            "(allowed: letters, digits and -._~!$&'()*+,;=:@; no '%', '?', '#')"
        )
    return Segment(SegmentKind.LITERAL, raw)


def _parse_param(inner: str, position: int) -> Segment:
    kind = SegmentKind.PARAM
    if inner.endswith("..."):
        kind, inner = SegmentKind.REST, inner[:-3]
    if not inner:
        raise TemplateError(f"segment {position} has an empty parameter name")
    if not _NAME.fullmatch(inner):
        raise TemplateError(
            f"segment {position}: parameter name {inner!r} is not an identifier "
            "([A-Za-z_][A-Za-z0-9_]*)"
        )
    return Segment(kind, inner)


def _check_params(segments: tuple[Segment, ...]) -> None:
    seen: set[str] = set()
    for i, seg in enumerate(segments):
        if seg.kind is SegmentKind.LITERAL:
            continue
        if seg.kind is SegmentKind.REST and i != len(segments) - 1:
            raise TemplateError(f"rest parameter {{{seg.text}...}} must be the last segment")
        if seg.text in seen:
            raise TemplateError(f"duplicate parameter name {seg.text!r}")
        seen.add(seg.text)
