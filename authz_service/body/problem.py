"""RFC 9457 problem details for a refused body, and RFC 6901 JSON pointers.

Every problem uses `type: about:blank` with the HTTP status phrase as `title` (RFC 9457
§4.2.1): the status says what happened, and the `reason` extension member carries the
stable machine-readable code. The body names locations and keywords, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from authz_service.body.verdict import STATUS, BodyVerdict, Violation

CONTENT_TYPE = "application/problem+json"

# Status phrases of RFC 9110 §15 (413 was renamed "Content Too Large" there).
_TITLES = {
    400: "Bad Request",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
}
_DETAILS = {
    400: "The request body is not well-formed JSON within the route's limits.",
    413: "The request body is larger than the route allows.",
    415: "The request body's content type is not accepted by the route.",
    422: "The request body does not match the route's schema.",
}
# A member name is client-chosen: a pointer is cut at whole tokens past this length so a
# 64 KiB key cannot inflate the answer or the audit line.
MAX_POINTER_CHARS = 256


def escape_token(token: str | int) -> str:
    """One RFC 6901 reference token: `~` becomes `~0` first, then `/` becomes `~1`."""
    return str(token).replace("~", "~0").replace("/", "~1")


def json_pointer(tokens: Iterable[str | int]) -> str:
    """The pointer for a path of member names and array indexes ("" is the whole body)."""
    pointer = ""
    for token in tokens:
        step = "/" + escape_token(token)
        if len(pointer) + len(step) > MAX_POINTER_CHARS:
            break
        pointer += step
    return pointer


def problem_json(
    *,
    status: int,
    reason: str,
    violations: Sequence[Violation],
    request_id: str,
    detail: str | None = None,
) -> bytes:
    """The `application/problem+json` body for a refused request body."""
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Bad Request"),
        "status": status,
        "detail": detail or _DETAILS.get(status, _DETAILS[400]),
        "reason": reason,
        "request_id": request_id,
    }
    if violations:
        problem["errors"] = [{"pointer": v.pointer, "reason": v.reason} for v in violations]
    # ensure_ascii keeps any odd member name in a pointer as plain escaped ASCII.
    return json.dumps(problem, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def verdict_problem(verdict: BodyVerdict, request_id: str) -> bytes:
    """`problem_json` for a refused verdict; its detail is one of our fixed phrases."""
    if verdict.ok:
        raise ValueError("an accepted body has no problem document")
    status = STATUS[verdict.reason]
    # Parse details are fixed sentences of ours ("Member names must be unique."), never
    # text from the body or from a library.
    detail = f"{_DETAILS[status]} {verdict.detail}" if verdict.detail else None
    return problem_json(
        status=status,
        reason=verdict.reason,
        violations=verdict.violations,
        request_id=request_id,
        detail=detail,
    )
