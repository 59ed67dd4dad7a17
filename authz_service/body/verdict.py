"""The outcome of checking one request body: a plain value, never an exception.

A deny is a result (STYLE.md habit 5): the caller maps `status` to its answer, writes
`reason` and the violations' pointers to the audit line, and hands `value` to CEL as
`request.body` when the body passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"
BODY_TOO_LARGE = "body_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
MALFORMED_BODY = "malformed_body"
SCHEMA_VIOLATION = "schema_violation"
# The client declared a body that Envoy did not forward to the policy (Envoy's routes and
# the policy's rules disagree for this path): it cannot be checked, so it is refused.
BODY_NOT_FORWARDED = "body_not_forwarded"

# The status each reason maps to. A body that is not well-formed JSON within the limits is
# a 400 (the request cannot be read at all); 422 is kept for a well-formed body that breaks
# the schema, as the behaviour contract says (ARCHITECTURE.md §5, RFC 9110 §15.5.21).
STATUS = {
    OK: 200,
    BODY_TOO_LARGE: 413,
    UNSUPPORTED_MEDIA_TYPE: 415,
    MALFORMED_BODY: 400,
    SCHEMA_VIOLATION: 422,
    BODY_NOT_FORWARDED: 400,
}
# Every reason a body is refused with (a problem document, not the plain error body).
BODY_REASONS = frozenset(STATUS) - {OK}


@dataclass(frozen=True, slots=True)
class Violation:
    """One place where the body breaks the schema: an RFC 6901 pointer and a short reason.

    Neither ever holds a value from the body; the pointer may hold member names."""

    pointer: str
    reason: str


@dataclass(frozen=True, slots=True)
class BodyVerdict:
    """`reason` is one of the codes above; `detail` is a short generic explanation."""

    reason: str
    detail: str = ""
    violations: tuple[Violation, ...] = ()
    value: Any = field(default=None, compare=False)

    @property
    def status(self) -> int:
        return STATUS[self.reason]

    @property
    def ok(self) -> bool:
        return self.reason == OK


def accepted(value: Any) -> BodyVerdict:
    return BodyVerdict(OK, value=value)


def refused(reason: str, detail: str) -> BodyVerdict:
    return BodyVerdict(reason, detail)
