"""Parsing limits: each refusal class, each boundary, charset handling."""

from __future__ import annotations

import time

import pytest

from authz_service.body.parse import media_type_accepted, nesting_depth_exceeds, parse_body

JSON = "application/json"


def parse(body: bytes, content_type: str | None = JSON, **limits: int) -> tuple[int, str]:
    verdict = parse_body(
        body,
        content_type,
        content_types=frozenset({JSON, "application/merge-patch+json"}),
        max_bytes=limits.get("max_bytes", 1024),
        max_depth=limits.get("max_depth", 4),
    )
    return verdict.status, verdict.reason


def test_a_well_formed_body_is_accepted_with_its_value() -> None:
    verdict = parse_body(
        b'{"a": [1, 2.5, "x", null, true]}',
        JSON,
        content_types={JSON},
        max_bytes=100,
        max_depth=2,
    )
    assert verdict.ok
    assert verdict.status == 200
    assert verdict.value == {"a": [1, 2.5, "x", None, True]}


def test_exactly_max_bytes_passes_and_one_more_is_413() -> None:
    body = b'{"a":"' + b"x" * 10 + b'"}'
    assert parse(body, max_bytes=len(body)) == (200, "ok")
    assert parse(body + b" ", max_bytes=len(body)) == (413, "body_too_large")


def test_size_is_checked_before_the_content_type() -> None:
    assert parse(b"x" * 2000, "text/plain") == (413, "body_too_large")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json; profile=x; charset=utf-8",
        "application/json;;",
        "application/merge-patch+json",
    ],
)
def test_accepted_content_types(content_type: str) -> None:
    assert parse(b"{}", content_type) == (200, "ok")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/jsonx",
        "application/problem+json",  # a +json type not listed for the route
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "application/json; charset=utf-8; charset=utf-8",
        "application/json; charset",
        "application/json, text/plain",
    ],
)
def test_other_content_types_are_415(content_type: str | None) -> None:
    assert parse(b"{}", content_type) == (415, "unsupported_media_type")


def test_media_type_ignores_unrelated_parameters() -> None:
    assert media_type_accepted("application/json; q=1", {JSON})
    assert not media_type_accepted("application/json; =1", {JSON})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"{} {}",
        b"\xef\xbb\xbf{}",  # a BOM (RFC 8259 §8.1)
        b'{"a": "\xff"}',  # invalid UTF-8
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate is invalid UTF-8 too
        b'{"a": 1, "a": 1}',
        b'{"o": {"b": 1, "b": 2}}',  # duplicates at depth
        b'[{"b": 1, "b": 2}]',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": -1e999}',
        b'{"a": "\\ud800"}',  # a lone high surrogate
        b'{"a": "x\\udc00"}',  # a lone low surrogate
        b'{"\\ud800": 1}',  # in a member name
        b'{"a": 1' + b"0" * 5000 + b"}",  # past int_max_str_digits
        b"{'a': 1}",
    ],
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    assert parse(body, max_bytes=8192) == (400, "malformed_body")


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    verdict = parse_body(
        b'{"a": "\\ud83d\\ude00"}', JSON, content_types={JSON}, max_bytes=99, max_depth=2
    )
    assert verdict.value == {"a": "\U0001f600"}


def test_an_escaped_backslash_before_u_d800_is_not_a_surrogate() -> None:
    assert parse(b'{"a": "\\\\ud800"}') == (200, "ok")


def test_depth_exactly_max_passes_and_one_more_is_400() -> None:
    assert parse(b'[{"a": [[1]]}]', max_depth=4) == (200, "ok")
    assert parse(b'[{"a": [[[1]]]}]', max_depth=4) == (400, "malformed_body")


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert parse(b'{"a": "[[[[{{{{\\"[[[["}', max_depth=1) == (200, "ok")
    assert not nesting_depth_exceeds(b'["[[[[[", "]]]]]]]]", {}]', 2)
    assert nesting_depth_exceeds(b'["[", [[]]]', 2)


def test_very_deep_nesting_is_refused_quickly_without_recursion_error() -> None:
    started = time.perf_counter()
    for opener in (b"[", b'{"a":'):
        body = opener * 100_000
        status = parse(body, max_bytes=1024 * 1024, max_depth=32)
        assert status == (400, "malformed_body")
    assert time.perf_counter() - started < 1.0


def test_deep_nesting_beyond_the_interpreter_limit_inside_a_string_is_fine() -> None:
    body = b'{"a": "' + b"[" * 5000 + b'"}'
    assert parse(body, max_bytes=10_000, max_depth=1) == (200, "ok")


def test_malformed_details_are_fixed_sentences_without_the_body() -> None:
    verdict = parse_body(
        b'{"SECRET-9f8e": tru}', JSON, content_types={JSON}, max_bytes=99, max_depth=2
    )
    assert verdict.reason == "malformed_body"
    assert "SECRET" not in verdict.detail
    assert verdict.detail == "The body is not valid JSON."
