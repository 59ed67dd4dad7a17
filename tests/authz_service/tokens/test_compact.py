from __future__ import annotations

import json
from typing import Any

import pytest

from authz_service.tokens.compact import media_type, parse_compact
from authz_service.tokens.encoding import b64url_encode
from authz_service.tokens.errors import InvalidToken
from authz_service.tokens.settings import TokenLimits
from tests.authz_service.tokens.factory import claims, encode_json

LIMITS = TokenLimits()
SIG = b64url_encode(b"\x01" * 256)


def token(header: dict[str, Any] | None = None, payload: dict[str, Any] | None = None) -> str:
    head = {"alg": "RS256", "kid": "k1"} if header is None else header
    return f"{encode_json(head)}.{encode_json(payload or claims())}.{SIG}"


def reason(tok: str, limits: TokenLimits = LIMITS) -> str:
    with pytest.raises(InvalidToken) as err:
        parse_compact(tok, limits)
    return err.value.reason


def test_parses_a_compact_jws() -> None:
    tok = token()
    parsed = parse_compact(tok, LIMITS)
    assert parsed.alg == "RS256"
    assert parsed.kid == "k1"
    assert parsed.claims["sub"] == "user-123"
    assert parsed.signing_input == tok.rsplit(".", 1)[0].encode()
    assert parsed.signature == b"\x01" * 256


def test_part_counts() -> None:
    assert reason("a.b") == "malformed"
    assert reason("a.b.c.d") == "malformed"
    assert reason("a.b.c.d.e") == "jwe"
    assert reason("") == "malformed"
    assert reason(token() + ".") == "malformed"


def test_json_serialization_refused() -> None:
    general = json.dumps(
        {"payload": "e30", "signatures": [{"protected": "e30", "signature": "AA"}]}
    )
    assert reason(general) == "jws_json"
    assert (
        reason(json.dumps({"payload": "e30", "protected": "e30", "signature": "AA"})) == "jws_json"
    )


def test_size_caps_are_on_encoded_lengths() -> None:
    tok = token()
    head, body, sig = tok.split(".")
    assert reason(tok, TokenLimits(max_token_bytes=len(tok) - 1)) == "oversized"
    assert parse_compact(tok, TokenLimits(max_token_bytes=len(tok)))  # inclusive
    assert reason(tok, TokenLimits(max_header_bytes=len(head) - 1)) == "oversized"
    assert reason(tok, TokenLimits(max_payload_bytes=len(body) - 1)) == "oversized"
    assert reason(tok, TokenLimits(max_signature_bytes=len(sig) - 1)) == "oversized"


def test_oversized_is_decided_before_decoding() -> None:
    # Garbage that would be "malformed" if decoded is reported as oversized: nothing ran.
    assert reason("!" * 9000) == "oversized"
    assert reason(f"{'!' * 3000}.e30.AA") == "oversized"


@pytest.mark.parametrize(
    "tok",
    [
        "e30.e30.AA=",  # padded signature
        "e30=.e30.AA",
        "e30.e30.A+A",
        "e30.e30.",  # empty signature (what alg=none produces)
        "\u00e9.e30.AA",  # non-ASCII
        " e30.e30.AA",
    ],
)
def test_strict_base64url(tok: str) -> None:
    assert reason(tok) == "malformed"


def test_header_and_payload_must_be_json_objects() -> None:
    arr = b64url_encode(b"[1]")
    assert reason(f"{arr}.{encode_json(claims())}.{SIG}") == "malformed"
    assert reason(f"{encode_json({'alg': 'RS256'})}.{arr}.{SIG}") == "malformed"
    bad_utf8 = b64url_encode(b'{"alg":"RS256","x":"\xff"}')
    assert reason(f"{bad_utf8}.{encode_json(claims())}.{SIG}") == "malformed"


def test_duplicate_members_refused() -> None:
    head = b64url_encode(b'{"alg":"RS256","alg":"none"}')
    assert reason(f"{head}.{encode_json(claims())}.{SIG}") == "duplicate_member"
    body = b64url_encode(b'{"sub":"alice","sub":"admin","exp":1}')
    assert reason(f"{encode_json({'alg': 'RS256'})}.{body}.{SIG}") == "duplicate_member"


def test_non_finite_numbers_refused() -> None:
    body = b64url_encode(b'{"sub":"a","exp":Infinity}')
    assert reason(f"{encode_json({'alg': 'RS256'})}.{body}.{SIG}") == "malformed"


@pytest.mark.parametrize("alg", [None, 5, "", ["RS256"]])
def test_alg_must_be_a_string(alg: Any) -> None:
    assert reason(token({"alg": alg} if alg is not None else {"typ": "JWT"})) == "malformed"


@pytest.mark.parametrize("crit", [["exp"], [], ["b64"], "x"])
def test_any_crit_refused(crit: Any) -> None:
    assert reason(token({"alg": "RS256", "crit": crit})) == "crit_unsupported"


@pytest.mark.parametrize("cty", ["JWT", "jwt", "application/jwt", "Application/JWT"])
def test_nested_jwt_refused(cty: str) -> None:
    assert reason(token({"alg": "RS256", "cty": cty})) == "nested_jwt"


def test_other_cty_allowed_and_wrong_type_refused() -> None:
    assert parse_compact(token({"alg": "RS256", "cty": "json"}), LIMITS)
    assert reason(token({"alg": "RS256", "cty": 1})) == "malformed"


@pytest.mark.parametrize("b64", [False, 0, "false", None])
def test_unencoded_payload_refused(b64: Any) -> None:
    assert reason(token({"alg": "RS256", "b64": b64})) == "b64_unsupported"


def test_b64_true_is_the_default_and_accepted() -> None:
    assert parse_compact(token({"alg": "RS256", "b64": True}), LIMITS)


def test_kid_and_typ_types() -> None:
    assert reason(token({"alg": "RS256", "kid": 1})) == "malformed"
    assert reason(token({"alg": "RS256", "typ": ["JWT"]})) == "malformed"
    assert parse_compact(token({"alg": "RS256"}), LIMITS).kid is None


def test_key_bearing_headers_are_parsed_but_ignored() -> None:
    header = {
        "alg": "RS256",
        "jku": "https://evil.example/jwks",
        "x5u": "https://evil.example/cert",
        "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        "x5c": ["MIIB"],
    }
    parsed = parse_compact(token(header), LIMITS)
    assert parsed.kid is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("at+jwt", "at+jwt"), ("AT+JWT", "at+jwt"), ("application/at+jwt", "at+jwt"), ("JWT", "jwt")],
)
def test_media_type_normalisation(value: str, expected: str) -> None:
    assert media_type(value) == expected
