from __future__ import annotations

import pytest

from authz_service.credentials import extract_bearer

COOKIES = frozenset({"access_token"})


def _extract(*auth: str, query: str = "", cookie: str = "") -> tuple[str | None, str | None]:
    c = extract_bearer(auth, raw_query=query, cookie_header=cookie, cookie_names=COOKIES)
    return c.token, c.problem


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert _extract(f"{scheme} abc.def.ghi") == ("abc.def.ghi", None)


def test_no_header_is_no_credentials() -> None:
    assert _extract() == (None, None)


def test_two_headers_are_ambiguous() -> None:
    assert _extract("Bearer a.b.c", "Bearer d.e.f") == (None, "duplicate_authorization")


def test_envoy_merged_duplicate_is_detected_by_the_comma() -> None:
    assert _extract("Bearer a.b.c,Bearer d.e.f") == (None, "duplicate_authorization")


def test_query_token_alone_counts_as_no_credentials() -> None:
    assert _extract(query="access_token=a.b.c") == (None, None)


@pytest.mark.parametrize(
    "query", ["access_token=x", "a=1&access_token=x", "access_token", "access_token="]
)
def test_header_plus_query_token_is_ambiguous(query: str) -> None:
    assert _extract("Bearer a.b.c", query=query) == (None, "ambiguous_credentials")


def test_query_mentioning_access_token_in_a_value_is_fine() -> None:
    assert _extract("Bearer a.b.c", query="q=access_token") == ("a.b.c", None)


def test_header_plus_token_cookie_is_ambiguous() -> None:
    got = _extract("Bearer a.b.c", cookie="theme=dark; access_token=zzz")
    assert got == (None, "ambiguous_credentials")


def test_other_cookies_are_fine() -> None:
    assert _extract("Bearer a.b.c", cookie="theme=dark; session_hint=1") == ("a.b.c", None)


def test_other_scheme_is_not_a_bearer_credential() -> None:
    assert _extract("Basic dXNlcjpwYXNz") == (None, None)


def test_empty_bearer_gives_empty_token() -> None:
    # An empty token is "no credentials"; the pipeline answers 401 with a plain challenge.
    assert _extract("Bearer ") == ("", None)
