from __future__ import annotations

import math
from typing import Any

import pytest

from authz_service.tokens.claims import (
    ClaimRules,
    build_principal,
    check_identity,
    check_times,
    check_typ,
    client_id_of,
    freeze,
    roles_of,
    scopes_of,
)
from authz_service.tokens.errors import InvalidToken
from tests.authz_service.tokens.conftest import issuer
from tests.authz_service.tokens.factory import AUDIENCE, ISSUER, NOW, claims

RULES = ClaimRules.from_settings(issuer())  # leeway 30
EXP = NOW + 300


def times_reason(payload: dict[str, Any], now: float = NOW, rules: ClaimRules = RULES) -> str:
    with pytest.raises(InvalidToken) as err:
        check_times(payload, rules, now)
    return err.value.reason


# -- exp / nbf / iat boundaries ---------------------------------------------------------


def test_exp_boundary_is_exclusive_with_leeway() -> None:
    payload = claims(exp=EXP, iat=None)
    assert check_times(payload, RULES, EXP + 29.999).not_after == EXP + 30
    assert times_reason(payload, now=EXP + 30) == "expired"  # exactly exp + leeway: refused
    assert times_reason(payload, now=EXP + 31) == "expired"


def test_zero_leeway_makes_exp_itself_expired() -> None:
    rules = ClaimRules.from_settings(issuer(leeway_seconds=0))
    assert check_times(claims(exp=EXP), rules, EXP - 0.001)
    assert times_reason(claims(exp=EXP), now=EXP, rules=rules) == "expired"


def test_nbf_boundary_is_inclusive_with_leeway() -> None:
    payload = claims(nbf=NOW + 100, iat=None)
    assert check_times(payload, RULES, NOW + 70).not_before == NOW + 70  # exactly nbf - leeway
    assert times_reason(payload, now=NOW + 69.999) == "not_yet_valid"


def test_iat_in_the_future_beyond_leeway() -> None:
    payload = claims(iat=NOW + 100)
    assert check_times(payload, RULES, NOW + 70)  # exactly iat - leeway: accepted
    assert times_reason(payload, now=NOW + 69.5) == "iat_in_future"


def test_exp_is_required() -> None:
    assert times_reason(claims(exp=None)) == "missing_exp"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1700000300", True, False, [1], {"t": 1}, 10**400])
def test_time_claims_must_be_json_numbers(claim: str, value: Any) -> None:
    assert times_reason(claims(**{claim: value})) == "bad_claim_type"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [None, "", "0", True])
def test_present_time_claim_of_the_wrong_type_is_not_treated_as_absent(
    claim: str, value: Any
) -> None:
    # `"nbf": null` must not switch the not-before check off (claims() drops None values,
    # so the null is set after building the claims set).
    payload = {**claims(), claim: value}
    assert times_reason(payload) == "bad_claim_type"


def test_absent_nbf_and_iat_are_fine() -> None:
    assert check_times(claims(nbf=None, iat=None), RULES, NOW).not_after == EXP + 30


def test_float_time_claims_accepted() -> None:
    validity = check_times(claims(exp=EXP + 0.5, nbf=NOW - 0.5, iat=None), RULES, NOW)
    assert validity.not_after == EXP + 30.5
    assert validity.not_before == NOW - 30.5


def test_window_without_nbf_or_iat_has_no_lower_bound() -> None:
    assert check_times(claims(iat=None), RULES, NOW).not_before == -math.inf


def test_max_age_requires_iat_and_bounds_the_window() -> None:
    rules = ClaimRules.from_settings(issuer(max_token_age_seconds=60, leeway_seconds=0))
    assert times_reason(claims(iat=None), rules=rules) == "missing_iat"
    payload = claims(iat=NOW, exp=NOW + 3600)
    assert check_times(payload, rules, NOW + 59.9).not_after == NOW + 60
    assert times_reason(payload, now=NOW + 60, rules=rules) == "too_old"


def test_max_age_includes_leeway() -> None:
    rules = ClaimRules.from_settings(issuer(max_token_age_seconds=60))
    payload = claims(iat=NOW, exp=NOW + 3600)
    assert check_times(payload, rules, NOW + 89.9)
    assert times_reason(payload, now=NOW + 90, rules=rules) == "too_old"


# -- iss / aud / sub --------------------------------------------------------------------


def identity_reason(payload: dict[str, Any]) -> str:
    with pytest.raises(InvalidToken) as err:
        check_identity(payload, RULES)
    return err.value.reason


def test_identity_ok() -> None:
    assert check_identity(claims(), RULES) == ("user-123", (AUDIENCE,))
    assert check_identity(claims(aud=["x", AUDIENCE]), RULES) == ("user-123", ("x", AUDIENCE))


@pytest.mark.parametrize("iss", [ISSUER + "/", ISSUER.upper(), ISSUER[:-1], None, 1])
def test_iss_exact_equality(iss: Any) -> None:
    assert identity_reason(claims(iss=iss)) == "wrong_issuer"


@pytest.mark.parametrize("aud", [None, "api://other", [], ["api://other"], "API://DEMO"])
def test_audience_must_match(aud: Any) -> None:
    assert identity_reason(claims(aud=aud)) == "wrong_audience"


@pytest.mark.parametrize("aud", [1, {"aud": AUDIENCE}, [AUDIENCE, 1], [[AUDIENCE]], True])
def test_audience_shape(aud: Any) -> None:
    assert identity_reason(claims(aud=aud)) == "bad_claim_type"


def test_sub() -> None:
    assert identity_reason(claims(sub=None)) == "missing_sub"
    assert identity_reason(claims(sub="")) == "missing_sub"
    assert identity_reason(claims(sub=123)) == "bad_claim_type"
    assert identity_reason(claims(sub=["a"])) == "bad_claim_type"
    assert identity_reason({**claims(), "sub": None}) == "bad_claim_type"
    assert identity_reason(claims(sub=True)) == "bad_claim_type"


@pytest.mark.parametrize(
    "sub", [" ", "   ", "\t", "\n", "\u00a0", " alice", "alice ", "alice\n", "\u2003alice"]
)
def test_sub_blank_or_padded_with_whitespace(sub: str) -> None:
    assert identity_reason(claims(sub=sub)) == "bad_sub"


@pytest.mark.parametrize("sub", ["alice", "a b", "248289761001", "auth0|5f7c8ec7", "ü"])
def test_sub_accepted_forms(sub: str) -> None:
    assert check_identity(claims(sub=sub), RULES)[0] == sub


# -- typ --------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"])
def test_required_typ_accepted_forms(typ: str) -> None:
    check_typ({"typ": typ}, ClaimRules.from_settings(issuer(required_typ="at+jwt")))


@pytest.mark.parametrize(
    "header", [{}, {"typ": "JWT"}, {"typ": "at+jwt2"}, {"typ": "application/jwt"}]
)
def test_required_typ_mismatch(header: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken) as err:
        check_typ(header, ClaimRules.from_settings(issuer(required_typ="application/at+jwt")))
    assert err.value.reason == "typ_mismatch"


def test_typ_not_checked_unless_required() -> None:
    check_typ({"typ": "anything"}, RULES)


# -- scopes / roles / client id ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"scope": "a b  c"}, {"a", "b", "c"}),
        ({"scp": "a b"}, {"a", "b"}),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
        ({"scope": "Users:Read"}, {"Users:Read"}),  # case kept: matching is case-sensitive
        ({"scope": ""}, set()),
        ({}, set()),
    ],
)
def test_scopes_accepted_shapes(payload: dict[str, Any], expected: set[str]) -> None:
    assert scopes_of(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        {"scope": ["a", "b"]},  # scope is a string by definition (RFC 8693 §4.2)
        {"scope": 1},
        {"scp": ["a", 1]},  # one non-string poisons the whole array
        {"scp": {"a": True}},
        {"scp": [["a"]]},
    ],
)
def test_scopes_rejected_shapes_give_no_scopes(payload: dict[str, Any]) -> None:
    assert scopes_of(payload) == frozenset()


def test_rejected_scp_does_not_drop_a_valid_scope() -> None:
    assert scopes_of({"scope": "a", "scp": ["b", None]}) == {"a"}


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        ({"roles": ["admin", "dev"]}, "roles", {"admin", "dev"}),
        ({"realm_access": {"roles": ["admin"]}}, "realm_access.roles", {"admin"}),
        ({"roles": []}, "roles", set()),
        ({"roles": "admin"}, "roles", set()),  # a string is not an array
        ({"roles": ["admin", 1]}, "roles", set()),
        ({"roles": {"admin": True}}, "roles", set()),
        ({"realm_access": ["roles"]}, "realm_access.roles", set()),
        ({"realm_access": {"roles": "admin"}}, "realm_access.roles", set()),
        ({}, "realm_access.roles", set()),
        ({"realm_access.roles": ["admin"]}, "realm_access.roles", set()),  # a path, not a name
    ],
)
def test_roles(payload: dict[str, Any], path: str, expected: set[str]) -> None:
    assert roles_of(payload, tuple(path.split("."))) == expected


def test_client_id_first_non_empty_string() -> None:
    names = ("client_id", "azp")
    assert client_id_of({"client_id": "c", "azp": "a"}, names) == "c"
    assert client_id_of({"client_id": "", "azp": "a"}, names) == "a"
    assert client_id_of({"client_id": 5, "azp": ["a"]}, names) is None


def test_freeze_is_deep_and_read_only() -> None:
    frozen = freeze({"a": [1, {"b": [2]}], "c": "d"})
    assert frozen["a"][1]["b"] == (2,)
    with pytest.raises(TypeError):
        frozen["c"] = "x"
    with pytest.raises(TypeError):
        frozen["a"][1]["b"] = 1


def test_freeze_refuses_absurd_depth() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(InvalidToken):
        freeze(deep)


def test_build_principal() -> None:
    payload = claims(azp="azp-client", client_id=None, realm_access={"roles": ["r1"]}, scp=["x"])
    rules = ClaimRules.from_settings(issuer(roles_claim="realm_access.roles"))
    principal, validity = build_principal(payload, rules, key_id="k", algorithm="RS256", now=NOW)
    assert principal.subject == "user-123"
    assert principal.issuer == ISSUER
    assert principal.audiences == (AUDIENCE,)
    assert principal.scopes == {"users:read", "users:write", "x"}
    assert principal.roles == {"r1"}
    assert principal.client_id == "azp-client"
    assert principal.expires_at == EXP
    assert (principal.key_id, principal.algorithm) == ("k", "RS256")
    assert principal.claims["realm_access"]["roles"] == ("r1",)
    assert validity.not_after == EXP + 30
