"""Where the bearer token comes from (ARCHITECTURE.md 5a, RFC 6750).

Only the `Authorization` header carries credentials. A second `Authorization` header, or a
header token plus another token in the query string or a cookie, is ambiguous: 400.
A token only in the query string (RFC 6750 section 2.3) counts as no credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

QUERY_TOKEN_PARAMS = ("access_token",)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The outcome of extraction: a token, nothing, or an ambiguous request."""

    token: str | None
    problem: str | None = None  # "duplicate_authorization", "ambiguous_credentials", ...

    @property
    def ambiguous(self) -> bool:
        return self.problem is not None


NO_CREDENTIALS = Credentials(token=None)


def extract_bearer(
    authorization: Sequence[str],
    *,
    raw_query: str,
    cookie_header: str,
    cookie_names: frozenset[str],
) -> Credentials:
    """Pick the bearer token out of the request's `Authorization` header values.

    `authorization` holds every value received. Envoy merges repeated headers into one
    comma-joined value in `CheckRequest.attributes.request.http.headers`; a bearer token
    never contains a comma (RFC 6750 b64token), so a comma means a second header.
    """
    if not authorization:
        return NO_CREDENTIALS  # a token only in the query or a cookie is no credential
    value = authorization[0]
    if len(authorization) > 1 or "," in value:
        return _DUPLICATE
    in_query = _has_query_token(raw_query)
    in_cookie = bool(cookie_names) and _has_cookie(cookie_header, cookie_names)
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        # Another scheme (Basic, Digest, ...) is not a credential we accept.
        return Credentials(None, None) if not (in_query or in_cookie) else _ambiguous()
    if in_query or in_cookie:
        return _ambiguous()
    return Credentials(rest.strip())


_DUPLICATE = Credentials(None, "duplicate_authorization")


def _ambiguous() -> Credentials:
    return Credentials(None, "ambiguous_credentials")


def _has_query_token(raw_query: str) -> bool:
    if not raw_query or "access_token" not in raw_query:
        return False
    names = {k for k, _ in parse_qsl(raw_query, keep_blank_values=True)}
    return any(p in names for p in QUERY_TOKEN_PARAMS)


def _has_cookie(cookie_header: str, names: frozenset[str]) -> bool:
    if not cookie_header:
        return False
    for part in cookie_header.split(";"):
        name, sep, _ = part.strip().partition("=")
        if sep and name in names:
            return True
    return False
