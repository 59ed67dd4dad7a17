"""What a token says about itself, for `authz-service explain`: never the token itself.

Decoded without any check (it may be the very token being refused), leniently, so that
even a malformed or oversized token shows what can be read from it. Only the members that
explain a refusal are shown, each cut to a printable length: `iss`, `aud`, `sub`, the time
claims, and the header's `alg`, `kid`, `typ`. The signature, and the token string, never.
"""

from __future__ import annotations

import json
from typing import Any

from authz_service.tokens.encoding import b64url_decode

_HEADER_MEMBERS = ("alg", "kid", "typ", "cty", "crit")
_CLAIMS = ("iss", "aud", "sub", "exp", "nbf", "iat")
_MAX_TEXT = 200
_MAX_ITEMS = 20
_MAX_SEGMENT = 64 * 1024  # decode no more than this of a hostile token


def describe_token(token: str) -> dict[str, Any]:
    """The header and claims members that explain a decision, or why they cannot be read."""
    parts = token.split(".")
    if len(parts) != 3:
        return {"shape": f"{len(parts)} dot-separated parts, a compact JWS has 3"}
    header, header_problem = _segment(parts[0])
    claims, claims_problem = _segment(parts[1])
    out: dict[str, Any] = {}
    for name in _HEADER_MEMBERS:
        if name in header:
            out[name] = _shown(header[name])
    for name in _CLAIMS:
        if name in claims:
            out[name] = _shown(claims[name])
    problems = [p for p in (header_problem, claims_problem) if p]
    if problems:
        out["unreadable"] = problems
    return out


def _segment(text: str) -> tuple[dict[str, Any], str | None]:
    if len(text) > _MAX_SEGMENT:
        return {}, f"a segment of {len(text)} characters is not decoded"
    try:
        value = json.loads(b64url_decode(text))
    except (ValueError, UnicodeDecodeError):
        return {}, "a segment is not base64url-encoded JSON"
    if not isinstance(value, dict):
        return {}, "a segment is not a JSON object"
    return value, None


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "..."
    if isinstance(value, list):
        return [_shown(v) for v in value[:_MAX_ITEMS]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return f"<{type(value).__name__}>"
