from __future__ import annotations

import pytest

from authz_service.policy.template import SegmentKind, TemplateError, parse_template


def test_root_template_has_no_segments() -> None:
    assert parse_template("/").segments == ()
    assert parse_template("/").shape == "/"


def test_literals_params_and_rest() -> None:
    template = parse_template("/api/v1/users/{user_id}/files/{path...}")
    kinds = [s.kind for s in template.segments]
    assert kinds == [SegmentKind.LITERAL] * 3 + [
        SegmentKind.PARAM,
        SegmentKind.LITERAL,
        SegmentKind.REST,
    ]
    assert template.param_names == ("user_id", "path")
    assert template.shape == "/api/v1/users/{}/files/{...}"


def test_shape_ignores_parameter_names() -> None:
    assert parse_template("/u/{a}").shape == parse_template("/u/{b}").shape


@pytest.mark.parametrize(
    "literal", ["v1.2", "a-b_c~d", "user@host", "a:b", "a;b=c", "it's", "(x)", "a+b", "*"]
)
def test_rfc3986_pchar_literals_are_accepted(literal: str) -> None:
    assert parse_template(f"/x/{literal}").segments[1].text == literal


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("api/v1", "must start with '/'"),
        ("", "must start with '/'"),
        ("/a/", "must not end with '/'"),
        ("/a//b", "segment 2 is empty ('//')"),
        ("/a/{}", "segment 2 has an empty parameter name"),
        ("/a/{...}", "segment 2 has an empty parameter name"),
        ("/a/{x}/{x}", "duplicate parameter name 'x'"),
        ("/a/{x}/{x...}", "duplicate parameter name 'x'"),
        ("/a/{rest...}/b", "rest parameter {rest...} must be the last segment"),
        ("/a/{1x}", "parameter name '1x' is not an identifier"),
        ("/a/{x-y}", "parameter name 'x-y' is not an identifier"),
        ("/a/{x}.json", "a parameter must be a whole segment"),
        ("/a/b{", "a parameter must be a whole segment"),
        ("/a/%2F", "has a character not allowed in a literal"),
        ("/a/b?c=1", "has a character not allowed in a literal"),
        ("/a/b#frag", "has a character not allowed in a literal"),
        ("/a/b c", "has a character not allowed in a literal"),
        ("/a/\\b", "has a character not allowed in a literal"),
        ("/a/caf\u00e9", "has a character not allowed in a literal"),
        ("/a/../b", "segment 2 is a dot segment '..'"),
        ("/./b", "segment 1 is a dot segment '.'"),
        ("/" + "/".join("s" * 65), "more than 64 segments"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=None) as err:
        parse_template(template)
    assert message in str(err.value)
