"""Where the credential comes from (ARCHITECTURE.md 5a, RFC 6750).

Only the `Authorization` header carries credentials: `Bearer <JWT>`, or `ApiKey <key>`
when API keys are on (or their own header, when one is configured). A second
`Authorization` header, two credentials at once (a bearer token and an API key, a header
token plus another token in the query string or a cookie) is ambiguous: 400. A token only
in the query string (RFC 6750 section 2.3) counts as no credentials.

"Another token" is judged the way the most lenient parser behind the edge could read the
request, not the way this module would: the upstream decides which token it believes, so
anything some framework could take for `access_token` counts. Concretely:

* Query pairs are split on `&`, `;` (the W3C's old recommendation, still honoured by
  Tomcat and by Python before 3.9.2), `?` (a second "?" a naive split keeps) and `#`.
* Cookie pairs are split on `;` and `,`. What Envoy 1.40 hands ext_authz was measured: two
  `Cookie` lines over HTTP/1.1 arrive joined as `a=1,access_token=x`; HTTP/2 cookie fields
  arrive joined as `a=1; access_token=x` (RFC 9113 section 8.2.3). A cookie-value cannot
  hold `,` or `;` (RFC 6265 section 4.1.1), so splitting on both loses no legal cookie.
* A name is compared after what frameworks do to names: `+` as a space, percent-decoding
  (again while it changes something: `%2561` is `%61` to one layer, `a` to the next), cut
  at a NUL (C strings), NFKC and case folding, surrounding whitespace trimmed, and PHP's
  rewrites (`access.token`, `access token` and `access[token` are `access_token`, and so
  is the array `access_token[]`).
* More than `MAX_DISTINCT_NAMES` distinct names is refused as ambiguous, which bounds the
  work one request can cost.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

QUERY_TOKEN_PARAMS = frozenset({"access_token"})  # RFC 6750 section 2.3

# The name of every pair: what precedes the first "=" after the start or a separator.
_QUERY_NAMES = re.compile(r"(?:^|[&;?#])([^&;?#=]*)")
_COOKIE_NAMES = re.compile(r"(?:^|[;,])([^;,=]*)")
# More distinct names than this next to an Authorization header is refused (400) rather
# than read one by one: it bounds the work a ~32 KiB header can cost (under 1 ms here), and
# browsers keep at most ~180 cookies per site.
MAX_DISTINCT_NAMES = 256
_MAX_DECODES = 4  # a name still changing after this many rounds is hostile anyway
_PHP_UNDERSCORED = str.maketrans({" ": "_", ".": "_", "[": "_"})


BEARER, API_KEY = "bearer", "api_key"
API_KEY_SCHEME = "apikey"  # `Authorization: ApiKey <key>` (scheme names are case-insensitive)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The outcome of extraction: a token, nothing, or an ambiguous request."""

    token: str | None
    # "duplicate_authorization", "ambiguous_credentials" or "malformed_authorization"
    problem: str | None = None
    kind: str = BEARER  # BEARER or API_KEY: which verifier the token is for

    @property
    def ambiguous(self) -> bool:
        return self.problem is not None


NO_CREDENTIALS = Credentials(token=None)
_DUPLICATE = Credentials(None, "duplicate_authorization")
_AMBIGUOUS = Credentials(None, "ambiguous_credentials")
_MALFORMED = Credentials(None, "malformed_authorization")


def extract_bearer(
    authorization: Sequence[str],
    *,
    raw_query: str,
    cookie_header: str,
    cookie_names: frozenset[str],
    api_keys: bool = False,
    api_key_header: Sequence[str] = (),
) -> Credentials:
    """Pick the credential out of the request's `Authorization` header values.

    `authorization` holds every value received. Envoy joins repeated headers into one
    comma-joined value (HTTP/1.1 and HTTP/2 alike, measured on 1.40); neither a bearer
    token (RFC 6750 b64token) nor an API key contains a comma, so a comma means a second
    credential. With `api_keys`, `Authorization: ApiKey <key>` is a credential too, and
    `api_key_header` holds the values of the API keys' own header when one is configured.
    """
    if api_key_header:
        if authorization:
            return _AMBIGUOUS  # an API key in its header next to an Authorization header
        if len(api_key_header) > 1 or "," in api_key_header[0]:
            return _DUPLICATE
        if query_has_token(raw_query) or cookie_has_token(cookie_header, cookie_names):
            return _AMBIGUOUS
        return Credentials(api_key_header[0].strip(), kind=API_KEY)
    if not authorization:
        return NO_CREDENTIALS  # a token only in the query or a cookie is no credential
    value = authorization[0]
    if len(authorization) > 1 or "," in value:
        return _DUPLICATE
    if query_has_token(raw_query) or cookie_has_token(cookie_header, cookie_names):
        return _AMBIGUOUS
    parts = value.split()
    scheme = parts[0].lower() if parts else ""
    if scheme == "bearer":
        kind = BEARER
    elif scheme == API_KEY_SCHEME and api_keys:
        kind = API_KEY
    else:
        return NO_CREDENTIALS  # another scheme (Basic, Digest, ...) is not ours
    if len(parts) > 2:
        # RFC 6750 section 2.1: `Bearer 1*SP b64token`; more words is a second credential
        # (`Bearer a Basic b`) or no token at all. The same holds for `ApiKey`.
        return _MALFORMED
    return Credentials(parts[1] if len(parts) == 2 else "", kind=kind)


def query_has_token(raw_query: str) -> bool:
    """Whether any reading of the query string names a token parameter."""
    if not raw_query:
        return False
    return _any_named(_QUERY_NAMES.findall(raw_query), QUERY_TOKEN_PARAMS)


def cookie_has_token(cookie_header: str, names: frozenset[str]) -> bool:
    """Whether any reading of the (Envoy-joined) Cookie header names a token cookie."""
    if not cookie_header or not names:
        return False
    return _any_named(_COOKIE_NAMES.findall(cookie_header), names)


def _any_named(raw_names: list[str], wanted: frozenset[str]) -> bool:
    distinct = set(raw_names)
    if len(distinct) > MAX_DISTINCT_NAMES:
        return True  # too many to read each: ambiguous, fail closed
    canonical = _canonical_set(wanted)
    return any(_reads_as(raw, canonical) for raw in distinct if raw)


@lru_cache(maxsize=16)
def _canonical_set(names: frozenset[str]) -> frozenset[str]:
    return frozenset(_canonical(name) for name in names)


def _reads_as(raw: str, wanted: frozenset[str]) -> bool:
    """Whether a lenient framework could read `raw` (a query or cookie name) as one of
    `wanted`: as it is, as a PHP array (`name[...]`), or with PHP's rewrites."""
    name = _canonical(raw)
    return (
        name in wanted
        or name.partition("[")[0].strip() in wanted
        or name.translate(_PHP_UNDERSCORED) in wanted
    )


def _canonical(raw: str) -> str:
    if raw.isascii() and "%" not in raw and "+" not in raw:
        # Nothing to decode, and NFKC and case folding are lower() on ASCII.
        return raw.partition("\0")[0].lower().strip()
    name = raw.replace("+", " ")
    for _ in range(_MAX_DECODES):
        decoded = unquote(name, errors="replace")
        if decoded == name:
            break
        name = decoded
    name = name.partition("\0")[0]
    return unicodedata.normalize("NFKC", name).casefold().strip()
