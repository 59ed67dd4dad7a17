from __future__ import annotations

import pytest

from authz_service.policy.paths import (
    MAX_PATH_BYTES,
    BadRequestPath,
    normalise_host,
    parse_query,
    parse_target,
)


def test_plain_path_splits_into_segments() -> None:
    target = parse_target("/api/v1/users/alice")
    assert target.segments == ("api", "v1", "users", "alice")
    assert target.path == "/api/v1/users/alice"
    assert not target.trailing_slash
    assert target.query == {}


def test_root_and_trailing_slash() -> None:
    assert parse_target("/").segments == ()
    target = parse_target("/a/b/")
    assert target.segments == ("a", "b")
    assert target.trailing_slash
    assert target.path == "/a/b/"


def test_segments_are_decoded_once_after_splitting() -> None:
    target = parse_target("/files/caf%C3%A9/a%20b/%2541/%3F")
    assert target.segments == ("files", "café", "a b", "%41", "?")
    assert target.path == "/files/café/a b/%41/?"


def test_query_is_split_off_and_parsed() -> None:
    target = parse_target("/search?q=a+b%2Bc&tag=x&tag=y&flag&&empty=")
    assert target.segments == ("search",)
    assert target.query == {
        "q": ("a b+c",),
        "tag": ("x", "y"),
        "flag": ("",),
        "empty": ("",),
    }


def test_question_mark_only_gives_empty_query() -> None:
    assert parse_target("/a?").query == {}


def test_parse_query_decodes_names_too() -> None:
    assert parse_query("na%6De=v%C3%A9") == {"name": ("vé",)}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/" + "a" * MAX_PATH_BYTES, "too_long"),
        ("/a?" + "q" * 20000, "too_long"),
        ("", "not_origin_form"),
        ("api/v1", "not_origin_form"),
        ("http://evil/a", "not_origin_form"),
        ("*", "not_origin_form"),
        ("/a/%zz", "invalid_percent_encoding"),
        ("/a/%2", "invalid_percent_encoding"),
        ("/a/%", "invalid_percent_encoding"),
        ("/a/b%2Fc", "encoded_separator"),
        ("/a/b%2fc", "encoded_separator"),
        ("/a/b%5Cc", "encoded_separator"),
        ("/a/b%5cc", "encoded_separator"),
        ("/admin;x/stats", "path_parameter"),
        ("/admin/stats;jsessionid=1", "path_parameter"),
        ("/admin%3Bx/stats", "path_parameter"),
        ("/admin%3bx/stats", "path_parameter"),
        ("/a/\\b", "invalid_char"),
        ("/a/b\x00", "invalid_char"),
        ("/a/b\nc", "invalid_char"),
        ("/a/b c", "invalid_char"),
        ("/a/b\x7f", "invalid_char"),
        ("/a/caf\u00e9", "invalid_char"),
        ("/a#frag", "invalid_char"),
        ("/a?q=\x01", "invalid_char"),
        ("/a/%00", "control_char"),
        ("/a/x%0Ay", "control_char"),
        ("/a/%7F", "control_char"),
        ("/a/%C2%85", "control_char"),
        ("/a/%C3%28", "invalid_utf8"),
        ("/a/%FF", "invalid_utf8"),
        ("/a/%C0%AF", "invalid_utf8"),
        ("/a/./b", "dot_segment"),
        ("/a/../b", "dot_segment"),
        ("/a/..", "dot_segment"),
        ("/a/%2e%2e/admin", "dot_segment"),
        ("/a/%2E%2E/admin", "dot_segment"),
        ("/a/.%2e/admin", "dot_segment"),
        ("/a/%2e/admin", "dot_segment"),
        ("/a//b", "empty_segment"),
        ("//a", "empty_segment"),
        ("/a?q=%zz", "invalid_percent_encoding"),
        ("/a?q=%00", "control_char"),
        ("/a?q=%FF", "invalid_utf8"),
    ],
)
def test_ambiguous_or_undecodable_targets_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(BadRequestPath) as err:
        parse_target(raw)
    assert err.value.reason == reason
    assert err.value.status == 400


def test_path_of_exactly_the_limit_is_accepted() -> None:
    assert len(parse_target("/" + "a" * (MAX_PATH_BYTES - 1)).segments) == 1


def test_dots_inside_a_segment_are_fine() -> None:
    assert parse_target("/a/..b/c.d/...").segments == ("a", "..b", "c.d", "...")


def test_backslash_is_allowed_in_the_query() -> None:
    assert parse_target("/a?re=a\\b").query == {"re": ("a\\b",)}


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com:8443", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("[::1]:8443", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("", ""),
    ],
)
def test_normalise_host(authority: str, host: str) -> None:
    assert normalise_host(authority) == host
