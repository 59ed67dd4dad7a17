"""RFC 9457 problem documents and RFC 6901 pointers: locations, never values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_service.body.problem import (
    MAX_POINTER_CHARS,
    escape_token,
    json_pointer,
    problem_json,
    verdict_problem,
)
from authz_service.body.schema import compile_body
from authz_service.body.settings import BodySettings
from authz_service.body.verdict import BodyVerdict, Violation

SECRETS = ("hunter2-SECRET-7f3a", "sk_live_51HxSECRETz", "4111111111111111")


@pytest.mark.parametrize(
    ("token", "escaped"), [("a", "a"), ("a/b", "a~1b"), ("~1", "~01"), ("/~", "~1~0"), (3, "3")]
)
def test_escape_token(token: str | int, escaped: str) -> None:
    assert escape_token(token) == escaped


def test_pointer_of_the_root_is_empty_and_long_pointers_are_cut_at_tokens() -> None:
    assert json_pointer([]) == ""
    assert json_pointer(["a", 0, "b/c"]) == "/a/0/b~1c"
    cut = json_pointer(["short", "x" * 1000])
    assert cut == "/short"
    assert len(json_pointer(["y" * 100] * 10)) <= MAX_POINTER_CHARS


def test_problem_document_shape() -> None:
    document = json.loads(
        problem_json(
            status=422,
            reason="schema_violation",
            violations=[Violation("/email", "not a valid email")],
            request_id="req-1",
        )
    )
    assert document == {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "The request body does not match the route's schema.",
        "reason": "schema_violation",
        "request_id": "req-1",
        "errors": [{"pointer": "/email", "reason": "not a valid email"}],
    }


@pytest.mark.parametrize(
    ("verdict", "title"),
    [
        (BodyVerdict("body_too_large", "The limit is 10 bytes."), "Content Too Large"),
        (BodyVerdict("unsupported_media_type"), "Unsupported Media Type"),
        (BodyVerdict("malformed_body", "Member names must be unique."), "Bad Request"),
    ],
)
def test_every_refusal_renders(verdict: BodyVerdict, title: str) -> None:
    document = json.loads(verdict_problem(verdict, "req-2"))
    assert (document["status"], document["title"]) == (verdict.status, title)
    assert "errors" not in document
    assert document["detail"].endswith(verdict.detail)


def test_an_accepted_verdict_has_no_problem() -> None:
    with pytest.raises(ValueError, match="accepted"):
        verdict_problem(BodyVerdict("ok"), "req")


def test_no_value_from_the_body_ever_reaches_the_problem_document() -> None:
    schema = {
        "type": "object",
        "required": ["password", "card"],
        "properties": {
            "password": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
            "email": {"type": "string", "format": "email"},
            "card": {"type": "string", "pattern": "^[0-9]{4}$"},
            "plan": {"enum": ["free", "pro"]},
            "pin": {"const": "0000"},
            "n": {"type": "integer", "maximum": 3},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "alt": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
        },
    }
    settings = BodySettings.model_validate({"schema": schema})
    compiled = compile_body(settings, file="a.yaml", key="routes[0].body", base_dir=Path("."))
    body = {
        "password": SECRETS[0],
        "email": SECRETS[1],
        "card": SECRETS[2],
        "plan": SECRETS[0],
        "pin": SECRETS[1],
        "n": 4111111111111111,
        "tags": [SECRETS[0], SECRETS[0]],
        "alt": SECRETS[2],
        "extra": SECRETS[1],
    }
    verdict = compiled.check(json.dumps(body).encode(), "application/json")
    assert verdict.status == 422
    assert len(verdict.violations) >= 9
    rendered = verdict_problem(verdict, "req-3").decode()
    for secret in (*SECRETS, "4111111111111111"):
        assert secret not in rendered
    assert "/extra" in rendered
