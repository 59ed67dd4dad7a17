from __future__ import annotations

import pytest

from authz_service.credentials import (
    API_KEY,
    BEARER,
    MAX_DISTINCT_NAMES,
    NO_CREDENTIALS,
    Credentials,
    extract_bearer,
)

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


# --- what Envoy 1.40 hands ext_authz, measured (see the module docstring) -----------------


@pytest.mark.parametrize(
    "cookie",
    [
        "theme=dark,access_token=zzz",  # two Cookie lines over HTTP/1.1
        "theme=dark, access_token=zzz",  # a client that put the comma there itself
        "theme=dark; access_token=zzz",  # two cookie fields over HTTP/2
        "theme=dark;access_token=zzz",
        "access_token=zzz",
        "access_token",  # no "=": some parsers still see a cookie of that name
        " access_token =zzz",
        "ACCESS_TOKEN=zzz",
        "access%5Ftoken=zzz",
        "access.token=zzz",  # PHP's name rewrite
        "access_token[]=zzz",
    ],
)
def test_a_token_cookie_in_any_reading_of_the_header_is_ambiguous(cookie: str) -> None:
    assert _extract("Bearer a.b.c", cookie=cookie) == (None, "ambiguous_credentials")


@pytest.mark.parametrize(
    "cookie",
    ["theme=dark,lang=en", "theme=dark; lang=en", "x=access_token", "my_access_token=1", ""],
)
def test_other_cookies_in_either_joining_are_fine(cookie: str) -> None:
    assert _extract("Bearer a.b.c", cookie=cookie) == ("a.b.c", None)


def test_no_cookie_names_configured_means_no_cookie_credential() -> None:
    got = extract_bearer(
        ("Bearer a.b.c",), raw_query="", cookie_header="access_token=x", cookie_names=frozenset()
    )
    assert (got.token, got.problem) == ("a.b.c", None)


def test_configured_cookie_names_are_compared_canonically() -> None:
    got = extract_bearer(
        ("Bearer a.b.c",), raw_query="", cookie_header="jwt=x", cookie_names=frozenset({"JWT"})
    )
    assert got.problem == "ambiguous_credentials"


@pytest.mark.parametrize(
    "query",
    [
        "access%5Ftoken=x",
        "access%5ftoken=x",
        "%61ccess_token=x",
        "%61%63%63%65%73%73%5f%74%6f%6b%65%6e=x",
        "%2561ccess_token=x",  # decoded twice by some stacks
        "ACCESS_TOKEN=x",
        "Access_Token=x",
        "access_token+=x",  # "+" is a space, and frameworks trim
        "+access_token=x",
        "access_token%20=x",
        "access_token%00junk=x",  # C strings end at the NUL
        "access+token=x",  # PHP: spaces and dots in names become "_"
        "access.token=x",
        "access[token=x",
        "access_token[]=x",  # PHP array syntax
        "access_token[0]=x",
        "\uff41ccess_token=x",  # fullwidth a, NFKC
        "%EF%BD%81ccess_token=x",  # the same, percent-encoded
        "a=1;access_token=x",  # ";" separates pairs for Tomcat and old Python
        "a=1?access_token=x",  # a second "?"
        "a=1#access_token=x",  # a fragment Envoy would have refused; refuse it here too
        "a=1&&access_token",
        "access_token&a=1",
    ],
)
def test_a_token_parameter_in_any_reading_of_the_query_is_ambiguous(query: str) -> None:
    assert _extract("Bearer a.b.c", query=query) == (None, "ambiguous_credentials")


@pytest.mark.parametrize(
    "query",
    [
        "q=access_token",
        "q=access_token%3Dx",
        "access_token_hint=1",
        "my_access_token=1",
        "access=1&token=2",
        "%ZZaccess_token=1",  # a bad escape stays literal: not the name
        "",
    ],
)
def test_other_queries_are_fine(query: str) -> None:
    assert _extract("Bearer a.b.c", query=query) == ("a.b.c", None)


@pytest.mark.parametrize(
    "value",
    [
        "Bearer a.b.c, Basic dXNlcjpwYXNz",  # two schemes, as Envoy joins two headers
        "Basic dXNlcjpwYXNz,Bearer a.b.c",
        "Bearer a.b.c,Bearer a.b.c",  # the same token twice is still two headers
        "Bearer a.b.c,",
    ],
)
def test_a_comma_in_authorization_is_a_second_credential(value: str) -> None:
    assert _extract(value) == (None, "duplicate_authorization")


@pytest.mark.parametrize("value", ["Bearer a.b.c Basic dXNlcjpwYXNz", "Bearer a.b.c d.e.f"])
def test_more_than_one_word_after_bearer_is_malformed(value: str) -> None:
    assert _extract(value) == (None, "malformed_authorization")


@pytest.mark.parametrize("value", ["Bearer   a.b.c", "Bearer\ta.b.c", "  Bearer a.b.c  "])
def test_whitespace_around_the_token_is_not_part_of_it(value: str) -> None:
    assert _extract(value) == ("a.b.c", None)


def test_another_scheme_plus_a_query_token_is_still_ambiguous() -> None:
    assert _extract("Basic dXNlcjpwYXNz", query="access_token=x") == (
        None,
        "ambiguous_credentials",
    )


def test_empty_bearer_gives_empty_token() -> None:
    # An empty token is "no credentials"; the pipeline answers 401 with a plain challenge.
    assert _extract("Bearer ") == ("", None)


def test_too_many_distinct_names_is_ambiguous_but_many_repeats_are_fine() -> None:
    many = ";".join(f"c{i}=1" for i in range(MAX_DISTINCT_NAMES + 1))
    assert _extract("Bearer a.b.c", cookie=many) == (None, "ambiguous_credentials")
    enough = "&".join(f"p{i}=1" for i in range(MAX_DISTINCT_NAMES))
    assert _extract("Bearer a.b.c", query=enough) == ("a.b.c", None)
    repeated = "&".join(["id=1"] * 5000)  # ids=1&ids=2&...: one name
    assert _extract("Bearer a.b.c", query=repeated) == ("a.b.c", None)


def test_a_token_name_after_thousands_of_pairs_is_still_found() -> None:
    query = "&".join(["id=1"] * 5000) + "&%61ccess_token=x"
    assert _extract("Bearer a.b.c", query=query) == (None, "ambiguous_credentials")


# -- API keys: the `ApiKey` scheme and a header of their own ----------------------------


def _extract_with(authorization: tuple[str, ...], **kw: object) -> object:
    options = {"raw_query": "", "cookie_header": "", "cookie_names": frozenset({"access_token"})}
    return extract_bearer(authorization, **{**options, **kw})  # type: ignore[arg-type]


def test_the_api_key_scheme_is_a_credential_only_when_api_keys_are_on() -> None:
    assert _extract_with(("ApiKey eg_live_abc_def",)) == NO_CREDENTIALS
    found = _extract_with(("apikey eg_live_abc_def",), api_keys=True)
    assert found == Credentials("eg_live_abc_def", kind=API_KEY)
    assert _extract_with(("Bearer x.y.z",), api_keys=True) == Credentials("x.y.z", kind=BEARER)


@pytest.mark.parametrize(
    ("authorization", "kw", "problem"),
    [
        (("ApiKey a", "Bearer b"), {"api_keys": True}, "duplicate_authorization"),
        (("ApiKey a,Bearer b",), {"api_keys": True}, "duplicate_authorization"),
        (("ApiKey a Bearer b",), {"api_keys": True}, "malformed_authorization"),
        (("Bearer b",), {"api_key_header": ("eg_live_a_b",)}, "ambiguous_credentials"),
        ((), {"api_key_header": ("k1", "k2")}, "duplicate_authorization"),
        ((), {"api_key_header": ("k1,k2",)}, "duplicate_authorization"),
        ((), {"api_key_header": ("k1",), "raw_query": "access_token=t"}, "ambiguous_credentials"),
        (("ApiKey a",), {"api_keys": True, "raw_query": "access_token=t"}, "ambiguous_credentials"),
    ],
)
def test_two_credentials_at_once_are_refused(
    authorization: tuple[str, ...], kw: dict[str, object], problem: str
) -> None:
    found = _extract_with(authorization, **kw)
    assert isinstance(found, Credentials)
    assert found.problem == problem


def test_an_api_key_in_its_own_header() -> None:
    found = _extract_with((), api_key_header=("  eg_live_abc_def ",))
    assert found == Credentials("eg_live_abc_def", kind=API_KEY)
