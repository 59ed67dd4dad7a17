from __future__ import annotations

import json
from typing import Any

import pytest

from authz_service.introspection.answer import (
    AnswerRules,
    parse_answer,
    principal_from_answer,
)
from authz_service.introspection.errors import IntrospectionRefused

NOW = 1_700_000_000.0
RULES = AnswerRules(
    issuer="https://idp.example",
    audiences=frozenset({"https://api.example"}),
    allow_missing_audience=False,
    leeway_seconds=30,
    roles_path=("realm", "roles"),
    client_id_as_subject=False,
    accepted_token_types=frozenset({"bearer"}),
)


def _answer(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "active": True,
        "sub": "alice",
        "iss": "https://idp.example",
        "aud": ["https://api.example", "other"],
        "scope": "orders:read orders:write",
        "realm": {"roles": ["reader"]},
        "client_id": "app",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "token_type": "Bearer",
    }
    answer.update(changes)
    return {k: v for k, v in answer.items() if v is not ...}


def _refusal(answer: dict[str, Any], rules: AnswerRules = RULES) -> str:
    with pytest.raises(IntrospectionRefused) as caught:
        principal_from_answer(answer, rules, now=NOW, expires_if_absent=NOW + 60)
    return caught.value.reason


def test_an_active_answer_is_a_principal() -> None:
    p = principal_from_answer(_answer(), RULES, now=NOW, expires_if_absent=NOW + 60)
    assert (p.subject, p.issuer, p.client_id) == ("alice", "https://idp.example", "app")
    assert p.scopes == {"orders:read", "orders:write"}
    assert p.roles == {"reader"}
    assert p.audiences == ("https://api.example", "other")
    assert p.expires_at == NOW + 300
    assert p.algorithm == "introspection"
    with pytest.raises(TypeError):
        p.claims["sub"] = "mallory"  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"iss": "https://idp.example/"}, "wrong_issuer"),
        ({"aud": "https://other.example"}, "wrong_audience"),
        ({"aud": ...}, "wrong_audience"),
        ({"aud": [1]}, "bad_claim_type"),
        ({"exp": NOW - 31}, "expired"),
        ({"exp": "9999999999"}, "bad_claim_type"),
        ({"exp": True}, "bad_claim_type"),
        ({"nbf": NOW + 31}, "not_yet_valid"),
        ({"iat": None}, "bad_claim_type"),
        ({"sub": ...}, "missing_subject"),
        ({"sub": ""}, "bad_claim_type"),
        ({"token_type": "refresh_token"}, "wrong_token_type"),
        ({"cnf": {"jkt": "abc"}}, "sender_constrained"),
    ],
)
def test_refusals(changes: dict[str, Any], reason: str) -> None:
    assert _refusal(_answer(**changes)) == reason


def test_within_the_leeway_is_still_valid() -> None:
    p = principal_from_answer(
        _answer(exp=NOW - 29, nbf=NOW + 29), RULES, now=NOW, expires_if_absent=NOW + 60
    )
    assert p.expires_at == NOW - 29


def test_the_client_id_stands_for_the_subject_only_when_configured() -> None:
    from dataclasses import replace

    answer = _answer(sub=...)
    p = principal_from_answer(
        answer, replace(RULES, client_id_as_subject=True), now=NOW, expires_if_absent=0
    )
    assert p.subject == "app"


def test_missing_audience_and_exp_when_allowed() -> None:
    from dataclasses import replace

    rules = replace(RULES, allow_missing_audience=True)
    answer = _answer(aud=..., exp=...)
    p = principal_from_answer(answer, rules, now=NOW, expires_if_absent=NOW + 60)
    assert p.audiences == ()
    assert p.expires_at == NOW + 60


@pytest.mark.parametrize(
    "body",
    [
        b'{"active": true, "active": false}',  # duplicate member
        b"[]",
        b"not json",
        b'{"active": "true"}',  # active must be exactly true or false
        b'{"sub": "alice"}',
        b'{"active": true, "exp": NaN}',
        b"\xff",
    ],
)
def test_garbage_answers_are_unavailable(body: bytes) -> None:
    with pytest.raises(IntrospectionRefused) as caught:
        parse_answer(body)
    assert caught.value.reason == "unavailable"
    assert caught.value.status_hint == 503


def test_parse_answer_keeps_the_object() -> None:
    assert parse_answer(json.dumps({"active": False}).encode()) == {"active": False}
