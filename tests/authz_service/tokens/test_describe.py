from __future__ import annotations

from authz_service.tokens.describe import describe_token
from authz_service.tokens.encoding import b64url_encode
from tests.authz_service.tokens.conftest import Keys
from tests.authz_service.tokens.factory import claims, encode_json, mint


def test_shows_the_members_that_explain_a_refusal_and_no_others(keys: Keys) -> None:
    token = mint(keys.rsa, claims(secret="do-not-show", nbf=1, aud=["a", "b"]))
    described = describe_token(token)
    assert described == {
        "alg": "RS256",
        "kid": "rsa-1",
        "typ": "JWT",
        "iss": "https://idp.example.test",
        "aud": ["a", "b"],
        "sub": "user-123",
        "exp": 1_700_000_300,
        "nbf": 1,
        "iat": 1_699_999_990,
    }
    assert token.split(".")[2] not in str(described)


def test_long_and_odd_values_are_cut_short() -> None:
    header = encode_json({"alg": "RS256", "kid": "k" * 1000, "crit": [{"x": 1}]})
    payload = encode_json({"iss": ["i"] * 100, "aud": {"nested": True}})
    described = describe_token(f"{header}.{payload}.sig")
    assert described["kid"] == "k" * 200 + "..."
    assert described["crit"] == ["<dict>"]
    assert described["iss"] == ["i"] * 20
    assert described["aud"] == "<dict>"


def test_what_cannot_be_read_is_said() -> None:
    assert describe_token("a.b") == {"shape": "2 dot-separated parts, a compact JWS has 3"}
    not_object = b64url_encode(b"[1]")
    described = describe_token(f"{encode_json({'alg': 'RS256'})}.{not_object}.x")
    assert described == {"alg": "RS256", "unreadable": ["a segment is not a JSON object"]}
    huge = "A" * 70_000
    assert (
        describe_token(f"{huge}.{huge}.x")["unreadable"]
        == ["a segment of 70000 characters is not decoded"] * 2
    )
